"""Weight sharing and entropy coding from Deep Compression (Han et al. 2016): 1-D k-means codebooks
with linear initialisation, and Huffman code lengths to price the codes (``io/huffman.py`` codes them).

A layer stored this way costs ``2**bits`` float centroids plus one ``bits``-wide code per weight
(or ``huffman_bits(codes)`` bits when Huffman-coded).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from nncompress.io.huffman import code_lengths

INITS = ("linear", "density")


def _code_dtype(bits: int) -> torch.dtype:
    return torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32


def _init_centroids(values: torch.Tensor, k: int, init: str) -> torch.Tensor:
    if init == "linear":  # evenly over [min, max]: keeps the rare large weights (Han et al. 2016, 3.1)
        return torch.linspace(float(values.min()), float(values.max()), k, dtype=values.dtype)
    q = torch.linspace(0, 1, k, dtype=values.dtype)  # "density": evenly over the CDF
    if values.numel() > 1_000_000:  # torch.quantile's size limit; a strided subsample is as good here
        values = values.sort().values[:: values.numel() // 1_000_000 + 1]
    return torch.quantile(values, q)


def _assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of each value (centroids sorted ascending; ties go down)."""
    mids = (centroids[1:] + centroids[:-1]) / 2  # (k - 1,) decision boundaries
    return torch.bucketize(values, mids)


def _lloyd(values: torch.Tensor, k: int, init: str, iters: int) -> torch.Tensor:
    """Sorted centroids (k,) of 1-D ``values`` (float64) after Lloyd iterations.

    In 1-D every cluster is an interval of the sorted values, so after one sort an iteration costs
    O(k log n): the cluster boundaries come from a binary search of the midpoints between centroids,
    and the cluster sums from prefix sums.
    """
    ordered = values.sort().values
    prefix = torch.cat([ordered.new_zeros(1), ordered.cumsum(0)])  # (n + 1,)
    centroids = _init_centroids(ordered, k, init)
    bounds = None
    for _ in range(iters):
        mids = (centroids[1:] + centroids[:-1]) / 2
        inner = torch.searchsorted(ordered, mids, right=True)  # values <= mid j fall in clusters <= j
        edges = torch.cat([inner.new_zeros(1), inner, inner.new_full((1,), ordered.numel())])  # (k + 1,)
        if bounds is not None and torch.equal(edges, bounds):
            break  # assignments settled
        bounds = edges
        counts = (edges[1:] - edges[:-1]).to(values.dtype)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        empty = (counts == 0).nonzero().reshape(-1)
        if empty.numel():  # re-seed empty clusters at the worst-served values, so no level is wasted
            codes = torch.repeat_interleave(torch.arange(k), (edges[1:] - edges[:-1]))
            order = (ordered - new[codes]).abs().argsort(descending=True)
            taken = set(new.tolist())
            candidates = ordered[order[: 4 * empty.numel() + 64]].tolist()
            distinct = [v for v in dict.fromkeys(candidates) if v not in taken]
            for slot, v in zip(empty.tolist(), distinct):
                new[slot] = v
            bounds = None  # the re-seeded centroids change the assignment
        centroids = new.sort().values
    return centroids


def kmeans_codebook(
    w: torch.Tensor, bits: int, *, init: str = "linear", iters: int = 30, keep_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Share weights: cluster the values of ``w`` into ``2**bits`` centroids with 1-D k-means.

    Deterministic Lloyd iterations (vectorised: nearest centroid by bucketing against the midpoints
    of the sorted centroids), stopping early when assignments settle; an empty cluster is re-seeded
    at the value currently worst served. ``init="linear"`` spreads the centroids evenly over
    [min, max] as Han et al. recommend; ``"density"`` over the quantiles. With ``keep_zero``, one
    centroid is fixed at exactly 0, every exact zero (a pruned weight) is coded to it, and the other
    ``2**bits - 1`` centroids cluster the nonzero weights only, so the sparsity pattern survives.

    Returns:
        centroids: (2**bits,) float32, ascending (fewer distinct values leave duplicate centroids).
        codes: like ``w``, uint8 / int16 / int32 indices into ``centroids``; ``centroids[codes.long()]``
            rebuilds the shared weights.

    Example:
        >>> centroids, codes = kmeans_codebook(torch.randn(300, 100), bits=4)
        >>> centroids.shape, codes.dtype
        (torch.Size([16]), torch.uint8)
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [1, 16], got {bits!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    if w.numel() == 0:
        raise ValueError(f"cannot build a codebook for an empty tensor of shape {tuple(w.shape)}")
    k = 2**bits
    values = w.detach().reshape(-1).double().cpu()
    codes = torch.zeros(values.shape, dtype=torch.long)
    if keep_zero:
        if bits < 2:
            raise ValueError(f"keep_zero needs bits >= 2 (one centroid is the fixed zero), got bits={bits}")
        nonzero = values != 0
        free = torch.zeros(k - 1, dtype=values.dtype)
        if nonzero.any():
            free = _lloyd(values[nonzero], k - 1, init, iters)
        centroids, order = torch.cat([torch.zeros(1, dtype=values.dtype), free]).sort(stable=True)
        position = order.argsort()  # where each (zero, free...) centroid went in the sorted codebook
        codes[~nonzero] = position[0]
        if nonzero.any():
            codes[nonzero] = position[1:][_assign(values[nonzero], free)]
    else:
        centroids = _lloyd(values, k, init, iters)
        codes = _assign(values, centroids)
    return centroids.float(), codes.reshape(w.shape).to(_code_dtype(bits))


def huffman_code_lengths(codes: torch.Tensor) -> dict[Hashable, int]:
    """Bits of the Huffman code of each symbol occurring in ``codes``, as the artifact's ``huffman``
    encoding assigns them (``io/huffman.py``: ties broken by symbol order, at most 15 bits). A
    single distinct symbol gets 1 bit.

    Example:
        >>> huffman_code_lengths(torch.tensor([0, 1, 2, 2, 3, 3, 3, 3]))
        {0: 3, 1: 3, 2: 2, 3: 1}
    """
    symbols, counts = torch.unique(codes.detach().reshape(-1).cpu(), return_counts=True)
    lengths = code_lengths(counts.numpy())
    return {s: int(n) for s, n in zip(symbols.tolist(), lengths.tolist())}


def huffman_bits(codes: torch.Tensor) -> int:
    """Total bits to Huffman-code every symbol of ``codes`` (the code table itself not counted).

    The artifact stores pruned codes more cheaply still (positions as coded gaps; see
    ``io/huffman.py``, ``encode_symbols``).

    Example:
        >>> huffman_bits(torch.tensor([0, 1, 2, 2, 3, 3, 3, 3]))  # vs 8 * 2 = 16 fixed-width
        14
    """
    _, counts = torch.unique(codes.detach().reshape(-1).cpu(), return_counts=True)
    lengths = code_lengths(counts.numpy())
    return int((lengths * counts.numpy()).sum())
