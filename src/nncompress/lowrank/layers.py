"""Module surgery for low-rank factorization, and what a factorized layer costs.

A factorized layer is a :class:`~nncompress.base.factorized.Factorized` (an ``nn.Sequential``) of plain ``nn.Linear`` /
``nn.Conv1d`` / ``nn.Conv2d`` layers built from ``decompose.py``'s factors, so later steps (pruning,
quantization, fine-tuning) see ordinary layers. Its ``weight`` is the product of the factors
recomposed on access (not stored, not a parameter, not saved) and its ``bias`` the last layer's,
so model code that reads the original layer's ``weight`` still runs. Each ``Method`` is one way to factorize a layer
type: its full rank, the singular values that rank rules read, its cost at a rank, and the
replacement module:

- ``svd`` (Linear): ``Linear(in, r, bias=False)``, ``Linear(r, out)``.
- ``tucker`` (Conv2d, Conv1d): 1x1 conv C_in -> r_in, kh x kw conv r_in -> r_out (the layer's
  stride, padding, dilation, padding mode), 1x1 conv r_out -> C_out (the bias); a 1x1 conv
  becomes two 1x1 convs (its truncated SVD, Tucker-2 with the core merged).
- ``cp`` (Conv2d): 1x1 conv C_in -> R, depthwise kh x 1, depthwise 1 x kw, 1x1 conv R -> C_out.
- ``spatial-svd`` (Conv2d): kh x 1 conv C_in -> r, 1 x kw conv r -> C_out.

Stride, padding (ints, pairs, ``"same"``, ``"valid"``), dilation, bias and padding mode are kept
exactly: the spatial splits give each axis's settings to the conv acting along it (padding of
one axis commutes with a conv along the other, since it copies or zeroes whole rows/columns).
Grouped convolutions (groups > 1) are not factorized: ``skip_reason`` names them and steps log it.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from nncompress.base.factorized import Factorized
from nncompress.lowrank import decompose
from nncompress.lowrank.ranks import RULES, Rank, Spectrum


class LayerIO(NamedTuple):
    """Per-sample sizes one call of a layer saw: a Conv2d's input and output (H, W); a Linear's
    positions (tokens) as ``(positions, 1)`` both ways. ``calls`` counts calls per forward."""

    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    calls: int = 1

    @property
    def in_positions(self) -> int:
        return self.in_hw[0] * self.in_hw[1] * self.calls

    @property
    def out_positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1] * self.calls


class Cost(NamedTuple):
    """Weight parameters (biases left out: factorizing keeps them) and MACs per sample."""

    params: int
    macs: int

    def below(self, other: Cost) -> bool:
        """True when this is cheaper than ``other`` in both parameters and MACs."""
        return self.params < other.params and self.macs < other.macs


def layer_cost(module: nn.Module, io: LayerIO) -> Cost:
    """The unfactorized Linear / Conv2d layer's cost."""
    params = module.weight.numel()
    return Cost(params, params * io.out_positions)


def _weight_like(module: nn.Module, tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.to(device=module.weight.device, dtype=module.weight.dtype).contiguous())


def _conv(
    like: nn.Conv1d | nn.Conv2d,
    weight: torch.Tensor,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: str | tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    bias: torch.Tensor | None = None,
    padding_mode: str = "zeros",
) -> nn.Conv2d:
    """A Conv2d holding ``weight`` (C_out, C_in / groups, kh, kw), on ``like``'s device and dtype;
    a Conv1d for a 3-D ``weight`` (C_out, C_in / groups, k) with 1-element settings."""
    c_out, c_in_per_group, *kernel = weight.shape
    cls = nn.Conv1d if len(kernel) == 1 else nn.Conv2d
    if len(kernel) == 1 and not isinstance(padding, str):
        stride, padding, dilation = stride[:1], padding[:1], dilation[:1]
    conv = cls(
        c_in_per_group * groups,
        c_out,
        tuple(kernel),
        stride,
        padding,
        dilation,
        groups,
        bias=bias is not None,
        padding_mode=padding_mode,
        device="meta",
    )
    conv.weight = _weight_like(like, weight)
    if bias is not None:
        conv.bias = _weight_like(like, bias.detach())
    return conv


def _pointwise(like: nn.Module, matrix: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    """A 1x1 conv (1-wide for a Conv1d ``like``) computing ``matrix`` (C_out, C_in) at every position."""
    kernel = (1,) * (like.weight.dim() - 2)
    return _conv(like, matrix.reshape(*matrix.shape, *kernel), bias=bias)


def _axis(conv: nn.Conv2d, axis: int) -> dict:
    """The conv's stride, padding and dilation acting along one axis only (0: height, 1: width),
    for a kh x 1 (axis 0) or 1 x kw (axis 1) conv; string padding (same/valid) applies as is."""

    def only(value: tuple[int, int], rest: int) -> tuple[int, int]:
        return (value[0], rest) if axis == 0 else (rest, value[1])

    padding = conv.padding if isinstance(conv.padding, str) else only(conv.padding, 0)
    return {
        "stride": only(conv.stride, 1),
        "padding": padding,
        "dilation": only(conv.dilation, 1),
        "padding_mode": conv.padding_mode,
    }


def _spatial(conv: nn.Conv2d) -> dict:
    """The conv's own stride, padding, dilation and padding mode, for the conv that replaces its kernel."""
    return {
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "padding_mode": conv.padding_mode,
    }


class Method:
    """One way to factorize one layer type (see the module docstring). Subclasses fill in the maths."""

    kind: ClassVar[str] = ""
    layer_type: ClassVar[type[nn.Module]] = nn.Conv2d
    layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Conv2d,)  # every type it factorizes
    rules: ClassVar[tuple[str, ...]] = RULES  # the rank rules it can follow
    has_full_rank: ClassVar[bool] = True  # False: full_rank() is only a bound for rank searches

    def skip_reason(self, module: nn.Module) -> str | None:
        """Why this layer cannot be factorized this way, or None."""
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups > 1:
            return f"grouped convolution (groups={module.groups}) is not factorized"
        return None

    def full_rank(self, module: nn.Module) -> Rank:
        raise NotImplementedError

    def spectra(self, module: nn.Module, gram: torch.Tensor | None = None) -> list[Spectrum]:
        """Singular values of the matrix each rank mode truncates (for energy/error/vbmf rules)."""
        raise NotImplementedError

    def cost(self, module: nn.Module, rank: Rank, io: LayerIO) -> Cost:
        raise NotImplementedError

    def build(
        self, module: nn.Module, rank: Rank, *, gram: torch.Tensor | None = None, seed: int = 0
    ) -> tuple[nn.Module, float]:
        """The replacement module at ``rank`` and the relative error of its weight reconstruction."""
        raise NotImplementedError


def _spectrum(matrix: torch.Tensor) -> Spectrum:
    return Spectrum(decompose.singular_values(matrix), (matrix.shape[0], matrix.shape[1]))


def _is_pointwise(module: nn.Module) -> bool:
    """A 1x1 Conv2d: its kernel is a plain matrix."""
    return isinstance(module, nn.Conv2d) and all(k == 1 for k in module.kernel_size)


class LinearSVD(Method):
    """Linear -> Linear(in, r) then Linear(r, out); activation-aware when given the inputs' Gram.

    A 1x1 Conv2d (a matrix over channels; the step's ``convs`` setting) becomes two 1x1 convs the
    same way, the first with the layer's stride and padding; larger kernels are left to
    ``tucker`` / ``spatial-svd`` and grouped ones skipped, each named.
    """

    kind = "svd"
    layer_type = nn.Linear
    layer_types = (nn.Linear,)

    def skip_reason(self, module: nn.Module) -> str | None:
        if isinstance(module, nn.Conv2d) and not _is_pointwise(module):
            size = "x".join(str(k) for k in module.kernel_size)
            return f"a {size} convolution: svd splits 1x1 convolutions only (use tucker or spatial-svd)"
        return super().skip_reason(module)

    def full_rank(self, module: nn.Module) -> Rank:
        return (min(module.weight.shape[:2]),)

    def spectra(self, module: nn.Module, gram: torch.Tensor | None = None) -> list[Spectrum]:
        w = module.weight.flatten(1)
        if gram is None:
            return [_spectrum(w)]
        return [Spectrum(decompose.weighted_singular_values(w, gram), (w.shape[0], w.shape[1]))]

    def cost(self, module: nn.Module, rank: Rank, io: LayerIO) -> Cost:
        out_features, in_features = module.weight.shape[:2]
        return Cost(rank[0] * (in_features + out_features), rank[0] * (in_features + out_features) * io.out_positions)

    def build(
        self, module: nn.Module, rank: Rank, *, gram: torch.Tensor | None = None, seed: int = 0
    ) -> tuple[nn.Module, float]:
        if _is_pointwise(module):
            return _pointwise_split(module, rank[0])
        w = module.weight
        f = decompose.svd_factors(w, rank[0]) if gram is None else decompose.activation_svd_factors(w, gram, rank[0])
        return factorized_linear(module, f.left, f.right), f.error


def _pointwise_split(module: nn.Conv2d, rank: int) -> tuple[Factorized, float]:
    """A 1x1 Conv2d as two 1x1 convs from its truncated SVD: the first (C_in -> rank) with the
    layer's stride and padding, the second (rank -> C_out) with its bias; they recompose as a 1x1
    spatial SVD does."""
    c_out, c_in, *kernel = module.weight.shape
    f = decompose.svd_factors(module.weight.reshape(c_out, c_in), rank)
    first = _conv(module, f.right.reshape(-1, c_in, *kernel), **_spatial(module))  # (r, C_in, 1, 1)
    second = _pointwise(module, f.left, module.bias)  # (C_out, r, 1, 1)
    return Factorized(first, second, method="spatial-svd", like=module), f.error


def factorized_linear(linear: nn.Linear, left: torch.Tensor, right: torch.Tensor) -> Factorized:
    """``Sequential(Linear(in, r, bias=False), Linear(r, out))`` computing ``x @ (left @ right)^T + bias``."""
    rank = right.shape[0]
    first = nn.Linear(linear.in_features, rank, bias=False, device="meta")
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None, device="meta")
    first.weight, second.weight = _weight_like(linear, right), _weight_like(linear, left)
    if linear.bias is not None:
        second.bias = _weight_like(linear, linear.bias.detach())
    return Factorized(first, second, method="svd", like=linear)


def _pointwise_reason(module: nn.Module, kind: str) -> str | None:
    """Why ``kind`` skips a 1x1 convolution: its kernel is a plain matrix, which two 1x1 convs from a
    truncated SVD (``spatial-svd``) factorize with fewer parameters than ``kind``'s extra layers."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and all(k == 1 for k in module.kernel_size):
        return f"a 1x1 convolution: {kind} only adds layers to a low-rank matrix split; use spatial-svd"
    return None


class Tucker2(Method):
    """Conv2d -> 1x1 (C_in -> r_in), kh x kw core (r_in -> r_out), 1x1 (r_out -> C_out); rank (r_out, r_in).

    A Conv1d is factorized the same way (its kernel taken as k x 1), into three Conv1d layers. A
    1x1 convolution's kernel is a plain matrix, where Tucker-2's core only adds a layer: it becomes
    two 1x1 convolutions, the truncated SVD at rank min(r_out, r_in) (the core merged into the
    factors; the first carries the layer's stride and padding, the second its bias), which
    recompose as a 1x1 spatial SVD does. A 1x1 Conv1d is skipped (``base.factorized`` recomposes
    no two-factor Conv1d yet).
    """

    kind = "tucker"
    layer_types = (nn.Conv2d, nn.Conv1d)

    def skip_reason(self, module: nn.Module) -> str | None:
        if isinstance(module, nn.Conv1d) and module.kernel_size == (1,):
            return super().skip_reason(module) or _pointwise_reason(module, self.kind)
        return super().skip_reason(module)

    def full_rank(self, module: nn.Module) -> Rank:
        return (module.out_channels, module.in_channels)

    def spectra(self, module: nn.Module, gram: torch.Tensor | None = None) -> list[Spectrum]:
        return [_spectrum(decompose.unfold(module.weight, mode)) for mode in (0, 1)]

    def cost(self, module: nn.Module, rank: Rank, io: LayerIO) -> Cost:
        c_out, c_in, *kernel = module.weight.shape
        r_out, r_in = rank
        if _is_pointwise(module):
            params = min(r_out, r_in) * (c_in + c_out)
            return Cost(params, params * io.out_positions)
        core = r_in * r_out * math.prod(kernel)
        params = c_in * r_in + core + r_out * c_out
        return Cost(params, c_in * r_in * io.in_positions + (core + r_out * c_out) * io.out_positions)

    def build(
        self, module: nn.Module, rank: Rank, *, gram: torch.Tensor | None = None, seed: int = 0
    ) -> tuple[nn.Module, float]:
        if _is_pointwise(module):
            return _pointwise_split(module, min(rank[0], rank[1]))
        one_d = module.weight.dim() == 3
        kernel = module.weight[..., None] if one_d else module.weight  # a Conv1d kernel as k x 1
        f = decompose.tucker2(kernel, (rank[0], rank[1]), seed=seed)
        layers = Factorized(
            _pointwise(module, f.in_factor.T),  # (r_in, C_in)
            _conv(module, f.core[..., 0] if one_d else f.core, **_spatial(module)),  # (r_out, r_in, kh, kw)
            _pointwise(module, f.out_factor, module.bias),  # (C_out, r_out)
            method=self.kind,
            like=module,
        )
        return layers, f.error


class CP(Method):
    """Conv2d -> 1x1 (C_in -> R), depthwise kh x 1, depthwise 1 x kw, 1x1 (R -> C_out).

    CP has no finite full rank; rank searches (``params:P``) stop at the rank whose factors have
    as many parameters as the layer, and only fixed and ``params:P`` ranks are accepted.
    """

    kind = "cp"
    rules = ("fixed", "params")
    has_full_rank = False

    def skip_reason(self, module: nn.Module) -> str | None:
        return super().skip_reason(module) or _pointwise_reason(module, self.kind)

    def full_rank(self, module: nn.Module) -> Rank:
        c_out, c_in, kh, kw = module.weight.shape
        return (-(-module.weight.numel() // (c_out + c_in + kh + kw)),)

    def spectra(self, module: nn.Module, gram: torch.Tensor | None = None) -> list[Spectrum]:
        raise ValueError("CP ranks are fixed or 'params:P'; singular values do not choose them")

    def cost(self, module: nn.Module, rank: Rank, io: LayerIO) -> Cost:
        c_out, c_in, kh, kw = module.weight.shape
        r = rank[0]
        mid_positions = io.out_hw[0] * io.in_hw[1] * io.calls  # after the vertical conv: H_out x W_in
        macs = r * (c_in * io.in_positions + kh * mid_positions + (kw + c_out) * io.out_positions)
        return Cost(r * (c_in + kh + kw + c_out), macs)

    def build(
        self, module: nn.Module, rank: Rank, *, gram: torch.Tensor | None = None, seed: int = 0
    ) -> tuple[nn.Module, float]:
        f = decompose.cp(module.weight, rank[0], seed=seed)
        r = rank[0]
        layers = Factorized(
            _pointwise(module, f.in_factor.T),  # (R, C_in)
            _conv(module, f.vertical.T[:, None, :, None], groups=r, **_axis(module, 0)),  # (R, 1, kh, 1)
            _conv(module, f.horizontal.T[:, None, None, :], groups=r, **_axis(module, 1)),  # (R, 1, 1, kw)
            _pointwise(module, f.out_factor, module.bias),  # (C_out, R)
            method=self.kind,
            like=module,
        )
        return layers, f.error


class SpatialSVD(Method):
    """Conv2d -> kh x 1 conv (C_in -> r) then 1 x kw conv (r -> C_out); full rank min(C_in*kh, C_out*kw)."""

    kind = "spatial-svd"

    def full_rank(self, module: nn.Module) -> Rank:
        return (min(decompose.spatial_matrix(module.weight).shape),)

    def spectra(self, module: nn.Module, gram: torch.Tensor | None = None) -> list[Spectrum]:
        return [_spectrum(decompose.spatial_matrix(module.weight))]

    def cost(self, module: nn.Module, rank: Rank, io: LayerIO) -> Cost:
        c_out, c_in, kh, kw = module.weight.shape
        r = rank[0]
        mid_positions = io.out_hw[0] * io.in_hw[1] * io.calls
        return Cost(r * (c_in * kh + c_out * kw), r * (c_in * kh * mid_positions + c_out * kw * io.out_positions))

    def build(
        self, module: nn.Module, rank: Rank, *, gram: torch.Tensor | None = None, seed: int = 0
    ) -> tuple[nn.Module, float]:
        f = decompose.spatial_svd(module.weight, rank[0])
        layers = Factorized(
            _conv(module, f.vertical[..., None], **_axis(module, 0)),  # (r, C_in, kh, 1)
            _conv(module, f.horizontal[:, :, None, :], bias=module.bias, **_axis(module, 1)),  # (C_out, r, 1, kw)
            method=self.kind,
            like=module,
        )
        return layers, f.error


METHODS: dict[str, Method] = {m.kind: m for m in (LinearSVD(), Tucker2(), CP(), SpatialSVD())}
