"""Low-rank decompositions of weight tensors: pure tensor maths, no module surgery.

Every function returns its factors and the relative Frobenius error of their reconstruction
(``||W - W_hat|| / ||W||``), so reports can show what a rank cost before any fine-tuning.
Decompositions run in float64 on the weight's device; factors come back in the weight's dtype.

- ``svd_factors``: truncated SVD of a matrix, ``W ~ left @ right`` (Eckart-Young optimal).
- ``activation_svd_factors``: the rank-r ``W_hat`` minimizing the output error ``||(W - W_hat) X^T||``
  on calibration inputs ``X`` (the objective of ASVD, Yuan et al. 2023, and SVD-LLM, Wang et
  al. 2024), from their Gram matrix ``X^T X`` (or its diagonal).
- ``tucker2``: Tucker decomposition of a conv kernel along its output and input channel modes
  (Kim et al. 2016, "Compression of Deep Convolutional Neural Networks for Fast and Low Power
  Mobile Applications"), by TensorLy's HOOI.
- ``cp``: CP (canonical polyadic) decomposition of a conv kernel into four factors (Lebedev et al.
  2015, "Speeding-up Convolutional Neural Networks Using Fine-tuned CP-Decomposition"), by
  TensorLy's ALS.
- ``spatial_svd``: a kh x kw kernel as a kh x 1 then a 1 x kw convolution (Jaderberg et al. 2014,
  "Speeding up Convolutional Neural Networks with Low Rank Expansions", scheme 2).
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager
from typing import NamedTuple

import torch

WORK_DTYPE = torch.float64  # decompositions of float32 weights lose digits in float32


class LowRankFactors(NamedTuple):
    """``W ~ left @ right``: ``left`` (out, r), ``right`` (r, in)."""

    left: torch.Tensor
    right: torch.Tensor
    error: float


class TuckerFactors(NamedTuple):
    """``W[o,i,y,x] ~ sum_ab core[a,b,y,x] * out_factor[o,a] * in_factor[i,b]``."""

    core: torch.Tensor  # (r_out, r_in, kh, kw)
    out_factor: torch.Tensor  # (C_out, r_out)
    in_factor: torch.Tensor  # (C_in, r_in)
    error: float


class CPFactors(NamedTuple):
    """``W[o,i,y,x] ~ sum_r out_factor[o,r] * in_factor[i,r] * vertical[y,r] * horizontal[x,r]``."""

    out_factor: torch.Tensor  # (C_out, R)
    in_factor: torch.Tensor  # (C_in, R)
    vertical: torch.Tensor  # (kh, R)
    horizontal: torch.Tensor  # (kw, R)
    error: float


class SpatialFactors(NamedTuple):
    """``W[o,i,y,x] ~ sum_r horizontal[o,r,x] * vertical[r,i,y]``: a kh x 1 conv, then a 1 x kw conv."""

    vertical: torch.Tensor  # (r, C_in, kh): the first (kh x 1) convolution's kernel
    horizontal: torch.Tensor  # (C_out, r, kw): the second (1 x kw) convolution's kernel
    error: float


def relative_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """``||reference - approx||_F / ||reference||_F`` (0 for an all-zero reference matched exactly)."""
    ref = reference.to(WORK_DTYPE)
    norm = float(ref.norm())
    diff = float((ref - approx.to(WORK_DTYPE)).norm())
    return diff / norm if norm > 0 else diff


def check_rank(rank: object, full: int, what: str) -> int:
    """Raise ValueError unless ``rank`` is an integer in [1, full]."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(f"{what} rank must be an integer in [1, {full}] (its full rank), got {rank!r}")
    return rank


def _check_kernel(kernel: torch.Tensor) -> None:
    if kernel.dim() != 4:
        raise ValueError(f"expected a conv kernel (C_out, C_in, kh, kw), got shape {tuple(kernel.shape)}")


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D tensor, descending, in float64."""
    return torch.linalg.svdvals(matrix.detach().to(WORK_DTYPE))


def unfold(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: (shape[mode], product of the other dims)."""
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def balanced(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale each rank component so that its column of ``left`` and row of ``right`` have equal
    norms (the product is unchanged); for an SVD this is the ``sqrt(S)`` split of each side."""
    scale = (right.norm(dim=1) / left.norm(dim=0).clamp_min(1e-300)).sqrt()  # (r,)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return left * scale, right / scale[:, None]


def _projected(weight: torch.Tensor, basis: torch.Tensor, rank: int, error: float) -> LowRankFactors:
    """``W_hat = U_r U_r^T W`` as balanced factors: the rank-r approximation in the column space of
    ``basis[:, :rank]``, which both plain and activation-aware SVD reduce to."""
    w = weight.detach().to(WORK_DTYPE)
    u = basis[:, :rank]  # (out, r), orthonormal columns
    left, right = balanced(u, u.T @ w)
    return LowRankFactors(left.to(weight.dtype), right.to(weight.dtype), error)


def _tail_error(energies: torch.Tensor, rank: int) -> float:
    """sqrt(sum of the energies dropped past ``rank`` / their total): the relative error of a truncation."""
    total = float(energies.sum())
    return (float(energies[rank:].sum()) / total) ** 0.5 if total > 0 else 0.0


def svd_factors(weight: torch.Tensor, rank: int) -> LowRankFactors:
    """Best rank-``rank`` approximation of a matrix (out, in) as ``left @ right`` (truncated SVD).

    The error is ``sqrt(sum of dropped sigma^2) / ||W||`` (Eckart-Young).

    Example:
        >>> f = svd_factors(torch.eye(4), 4)
        >>> torch.allclose(f.left @ f.right, torch.eye(4), atol=1e-6)
        True
    """
    if weight.dim() != 2:
        raise ValueError(f"svd_factors expects a matrix (out, in), got shape {tuple(weight.shape)}")
    check_rank(rank, min(weight.shape), "SVD")
    u, s, _ = torch.linalg.svd(weight.detach().to(WORK_DTYPE), full_matrices=False)
    return _projected(weight, u, rank, _tail_error(s.square(), rank))


def _output_covariance(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``W G W^T`` (out, out): the uncentred covariance of the layer's outputs on the calibration inputs."""
    n_in = weight.shape[1]
    if tuple(gram.shape) not in ((n_in,), (n_in, n_in)):
        raise ValueError(
            f"gram must be (in, in) or (in,) with in={n_in} (the weight's inputs), got {tuple(gram.shape)}"
        )
    w = weight.detach().to(WORK_DTYPE)
    g = gram.detach().to(device=w.device, dtype=WORK_DTYPE)
    cov = (w * g) @ w.T if g.dim() == 1 else w @ g @ w.T
    return (cov + cov.T) / 2  # exactly symmetric for eigh


def _output_eigh(weight: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, >= 0) and eigenvectors of the output covariance ``W G W^T``."""
    values, vectors = torch.linalg.eigh(_output_covariance(weight, gram))
    return values.flip(0).clamp_min(0), vectors.flip(1)


def weighted_singular_values(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Singular values of ``W G^(1/2)`` (descending, float64): the spectrum activation-aware SVD
    truncates, for rank rules (energy, error budget, VBMF)."""
    values, _ = _output_eigh(weight, gram)
    return values[: min(weight.shape)].sqrt()


def activation_svd_factors(weight: torch.Tensor, gram: torch.Tensor, rank: int) -> LowRankFactors:
    """Rank-``rank`` ``W_hat = left @ right`` minimizing ``||(W - W_hat) X^T||_F`` on calibration inputs X.

    ``gram`` is ``X^T X`` (in, in), or its diagonal (in,) for the cheaper per-channel scaling of
    ASVD. With ``G = L L^T``, the objective is ``||(W - W_hat) L||_F``, so ``W_hat L`` is the
    truncated SVD of ``W L``; undoing ``L`` gives ``W_hat = U_r U_r^T W`` with ``U_r`` the top
    eigenvectors of ``W G W^T``, which needs no Cholesky factor nor its inverse (a singular G,
    e.g. from channels that are always zero, is fine). The error is relative in that
    activation-weighted norm: ``||(W - W_hat) X^T|| / ||W X^T||``, the relative output error on the
    calibration inputs.

    Example:
        >>> w = torch.randn(6, 5)
        >>> f = activation_svd_factors(w, torch.ones(5), 5)
        >>> torch.allclose(f.left @ f.right, w, atol=1e-5)
        True
    """
    if weight.dim() != 2:
        raise ValueError(f"activation_svd_factors expects a matrix (out, in), got shape {tuple(weight.shape)}")
    check_rank(rank, min(weight.shape), "SVD")
    values, vectors = _output_eigh(weight, gram)
    return _projected(weight, vectors, rank, _tail_error(values, rank))


def _pytorch_backend() -> AbstractContextManager:
    """A context selecting TensorLy's PyTorch backend; TensorLy is imported on use, so that loading a
    model never imports it."""
    try:
        import tensorly
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("Tucker and CP factorization need TensorLy: pip install 'tensorly>=0.8'") from e
    return tensorly.backend_context("pytorch")


def tucker2(kernel: torch.Tensor, ranks: tuple[int, int], *, n_iter: int = 25, seed: int = 0) -> TuckerFactors:
    """Tucker-2 decomposition of a conv kernel (C_out, C_in, kh, kw) along its channel modes.

    ``ranks`` is (r_out, r_in). Computed by TensorLy's ``partial_tucker`` (HOOI from an SVD start);
    at full ranks the factors are orthogonal and the reconstruction is exact.

    Example:
        >>> f = tucker2(torch.randn(8, 6, 3, 3), (4, 3))
        >>> tuple(f.core.shape), tuple(f.out_factor.shape), tuple(f.in_factor.shape)
        ((4, 3, 3, 3), (8, 4), (6, 3))
    """
    _check_kernel(kernel)
    r_out = check_rank(ranks[0], kernel.shape[0], "Tucker output-channel")
    r_in = check_rank(ranks[1], kernel.shape[1], "Tucker input-channel")
    backend = _pytorch_backend()
    from tensorly.decomposition import partial_tucker

    w = kernel.detach().to(WORK_DTYPE)
    with backend:
        out = partial_tucker(w, [r_out, r_in], modes=[0, 1], n_iter_max=n_iter, init="svd", tol=1e-7, random_state=seed)
    # tensorly >= 0.9 returns ((core, factors), errors); 0.8 returns (core, factors)
    core, (u_out, u_in) = out[0] if isinstance(out[0], (tuple, list)) else out
    approx = torch.einsum("abyx,oa,ib->oiyx", core, u_out, u_in)
    dtype = kernel.dtype
    return TuckerFactors(core.to(dtype), u_out.to(dtype), u_in.to(dtype), relative_error(w, approx))


def cp(kernel: torch.Tensor, rank: int, *, n_iter: int = 100, seed: int = 0) -> CPFactors:
    """CP decomposition of a conv kernel (C_out, C_in, kh, kw) into ``rank`` rank-one terms.

    Computed by TensorLy's ``parafac`` (ALS from an SVD start, seeded); the weight of each term
    is spread evenly over its four factor columns. ALS finds a local optimum: a kernel of CP rank
    R is recovered closely at rank R, but there is no exact full rank as for SVD or Tucker.

    Example:
        >>> f = cp(torch.randn(8, 6, 3, 3), 4)
        >>> tuple(f.out_factor.shape), tuple(f.vertical.shape)
        ((8, 4), (3, 4))
    """
    _check_kernel(kernel)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"CP rank must be an integer >= 1, got {rank!r}")
    backend = _pytorch_backend()
    from tensorly.decomposition import parafac

    w = kernel.detach().to(WORK_DTYPE)
    with backend, warnings.catch_warnings():
        # the SVD start asks for more singular vectors than a small mode has and pads them randomly
        warnings.filterwarnings("ignore", message=".*n_eigenvecs.*", category=UserWarning)
        weights, factors = parafac(w, rank, n_iter_max=n_iter, init="svd", tol=1e-7, random_state=seed)
    norms = torch.stack([f.norm(dim=0).clamp_min(1e-300) for f in factors])  # (4, R)
    per_factor = (weights.abs() * norms.prod(0)) ** 0.25  # (R,): the term's magnitude, split 4 ways
    sign = torch.sign(weights) + (weights == 0)
    units = [f / n * per_factor for f, n in zip(factors, norms)]
    units[0] = units[0] * sign
    approx = torch.einsum("or,ir,yr,xr->oiyx", *units)
    dtype = kernel.dtype
    return CPFactors(*(u.to(dtype) for u in units), relative_error(w, approx))


def spatial_matrix(kernel: torch.Tensor) -> torch.Tensor:
    """The kernel as the matrix (C_in*kh, C_out*kw) whose rank-r SVD gives a kh x 1 then 1 x kw conv:
    ``M[(i,y), (o,x)] = W[o,i,y,x]``."""
    _check_kernel(kernel)
    c_out, c_in, kh, kw = kernel.shape
    return kernel.permute(1, 2, 0, 3).reshape(c_in * kh, c_out * kw)


def spatial_svd(kernel: torch.Tensor, rank: int) -> SpatialFactors:
    """A kh x kw conv kernel as a kh x 1 conv to ``rank`` channels then a 1 x kw conv (Jaderberg scheme 2).

    ``W[o,i,y,x] ~ sum_r horizontal[o,r,x] * vertical[r,i,y]``, the truncated SVD of
    ``spatial_matrix(W)``; the full rank is ``min(C_in*kh, C_out*kw)``.

    Example:
        >>> f = spatial_svd(torch.randn(8, 6, 3, 3), 5)
        >>> tuple(f.vertical.shape), tuple(f.horizontal.shape)
        ((5, 6, 3), (8, 5, 3))
    """
    matrix = spatial_matrix(kernel)  # (C_in*kh, C_out*kw)
    c_out, c_in, kh, kw = kernel.shape
    check_rank(rank, min(matrix.shape), "spatial SVD")
    left, right, error = svd_factors(matrix, rank)  # (C_in*kh, r), (r, C_out*kw)
    vertical = left.T.reshape(rank, c_in, kh)
    horizontal = right.reshape(rank, c_out, kw).permute(1, 0, 2)
    return SpatialFactors(vertical.contiguous(), horizontal.contiguous(), error)
