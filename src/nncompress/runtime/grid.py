"""A packed layer's weight re-expressed as unsigned codes on an affine grid, exactly.

Every integer kernel here computes ``w[n, k] = (q[n, k] - zero[n, g]) * scale[n, g]`` with
unsigned codes ``q`` and one (scale, zero) per output row and group of consecutive inputs ``g``.
The stored formats map onto that form without changing a weight:

- ``uniform`` (int-symmetric / uint-affine, channel, tensor or group, a ragged last group
  included): symmetric codes are offset by ``2^(bits-1)``, which becomes their zero;
- ``binary``: the sign bit is the code, scale ``2 * alpha``, zero 0.5 (``alpha * (2b - 1)``);
- ``codebook``: only where the centroids lie on an evenly spaced grid (``a + k * d``, integer
  ``k``); k-means centroids in general do not, and such layers keep the reference path.

The layer is read through its public methods (``codes()``, ``zero_points()``, ``signs()``, the
``scale`` / ``alpha`` / ``centroids`` buffers), so this module does not import ``quantize``.

Example:
    >>> grid = affine_grid(layer)  # doctest: +SKIP
    >>> torch.equal(grid.weight(), layer.decode_weight())  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

GRID_RTOL = 1e-5  # a codebook lies on a grid when every centroid is that close to it (relative to the range)


class NotOnGrid(Exception):
    """The layer's weight has no exact affine-grid form (the reason is the message)."""


@dataclass(frozen=True)
class AffineGrid:
    """``w = (codes - zero) * scale`` per output row and input group.

    Args:
        codes: (N, K) unsigned integer codes in ``[0, levels - 1]`` (uint8).
        scale: (N, G) float32 scale per row and group.
        zero: (N, G) float32 zero per row and group, in code units (may be fractional).
        group_size: inputs per group; the last group of a row may be shorter (ragged).
        levels: number of code values the codes may take (``2 ** bits``).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    group_size: int
    levels: int

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features)."""
        n, k = self.codes.shape
        return int(n), int(k)

    @property
    def groups(self) -> int:
        """Groups per row (the last one ragged when ``group_size`` does not divide ``in_features``)."""
        return int(self.scale.shape[1])

    def regroup(self, t: torch.Tensor, group_size: int) -> torch.Tensor:
        """(N, G) per-group values repeated for groups of ``group_size`` inputs (a divisor of
        ``self.group_size`` and of ``in_features``): (N, K / group_size), ragged last group honoured."""
        k, groups = self.shape[1], self.groups
        last = k - (groups - 1) * self.group_size
        if self.group_size % group_size or last % group_size:
            raise ValueError(f"group_size={group_size} does not divide groups of {self.group_size} over {k} inputs")
        repeats = torch.full((groups,), self.group_size // group_size)
        repeats[-1] = last // group_size
        return t.repeat_interleave(repeats, dim=1)

    def grouped(self, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes (N, K / g, g), scale (N, K / g, 1), zero (N, K / g, 1)) for kernel groups of ``g`` inputs."""
        n, k = self.shape
        codes = self.codes.reshape(n, k // group_size, group_size)
        return codes, self.regroup(self.scale, group_size)[..., None], self.regroup(self.zero, group_size)[..., None]

    def weight(self) -> torch.Tensor:
        """The float32 (N, K) weight the grid stands for."""
        g = self.group_size if self.groups == 1 else math.gcd(self.group_size, self.shape[1])
        codes, scale, zero = self.grouped(g)
        return ((codes.float() - zero) * scale).reshape(self.shape)


def _uniform(layer: Any) -> AffineGrid:
    spec = layer.spec
    n, k = layer.weight_shape[0], layer.weight_shape[1]
    if len(layer.weight_shape) != 2:
        raise NotOnGrid(f"weight of rank {len(layer.weight_shape)} (only Linear weights)")
    codes = layer.codes().reshape(n, k)
    zero = layer.zero_points().float()
    if spec.symmetric:  # signed codes (int8) offset into [1, 2^bits - 1]
        codes = (codes.to(torch.int16) + 2 ** (spec.bits - 1)).to(torch.uint8)
        zero = zero + 2 ** (spec.bits - 1)
    else:
        codes = codes.to(torch.uint8)
    scale = layer.scale.detach().float().cpu()
    if spec.granularity == "tensor":
        group_size, scale, zero = k, scale.reshape(1, 1).expand(n, 1), zero.reshape(1, 1).expand(n, 1)
    elif spec.axis != 0:
        raise NotOnGrid(f"scales along axis {spec.axis} (kernels take one scale per output row)")
    elif spec.granularity == "channel":
        group_size, scale, zero = k, scale.reshape(n, 1), zero.reshape(n, 1)
    else:
        group_size = int(spec.group_size)
        groups = -(-k // group_size)
        if scale.numel() != n * groups:
            raise NotOnGrid(f"{scale.numel()} scales for {n} rows of {groups} groups of {group_size}")
        scale, zero = scale.reshape(n, groups), zero.reshape(n, groups)
    return AffineGrid(codes, scale.contiguous(), zero.contiguous(), group_size, 2**spec.bits)


def _binary(layer: Any) -> AffineGrid:
    n, k = layer.weight_shape[0], layer.weight_shape[1]
    if len(layer.weight_shape) != 2:
        raise NotOnGrid(f"weight of rank {len(layer.weight_shape)} (only Linear weights)")
    codes = (layer.signs().reshape(n, k) > 0).to(torch.uint8)
    scale = 2 * layer.alpha.detach().float().cpu().reshape(n, 1)
    return AffineGrid(codes, scale, torch.full((n, 1), 0.5), k, 2)


def codebook_grid(centroids: torch.Tensor, levels: int) -> tuple[float, float, torch.Tensor] | None:
    """(offset a, step d, integer k per centroid) with ``centroids == a + k * d`` and ``k < levels``,
    the coarsest such grid; None when the centroids are not evenly spaced within ``levels`` steps."""
    c = centroids.detach().double().cpu().reshape(-1)
    lo, hi = float(c.min()), float(c.max())
    if hi == lo:
        return lo, 1.0, torch.zeros(c.numel(), dtype=torch.uint8)
    tol = GRID_RTOL * (hi - lo)
    offsets = c - lo
    positive = offsets[offsets > tol]
    smallest = float(positive.min())
    for m in range(1, levels):
        d = smallest / m
        k = torch.round(offsets / d)
        if float(k.max()) <= levels - 1 and float((offsets - k * d).abs().max()) <= tol:
            return lo, d, k.to(torch.uint8)
    return None


def _codebook(layer: Any, levels: int) -> AffineGrid:
    n, k = layer.weight_shape[0], layer.weight_shape[1]
    if len(layer.weight_shape) != 2:
        raise NotOnGrid(f"weight of rank {len(layer.weight_shape)} (only Linear weights)")
    found = codebook_grid(layer.centroids, levels)
    if found is None:
        raise NotOnGrid(f"the {layer.centroids.numel()} centroids are not evenly spaced within {levels} levels")
    lo, d, index = found
    codes = index[layer.codes().reshape(n, k).long()]
    return AffineGrid(codes, torch.full((n, 1), d), torch.full((n, 1), -lo / d), k, levels)


def affine_grid(layer: Any, levels: int) -> AffineGrid:
    """The layer's weight as an ``AffineGrid`` with at most ``levels`` code values.

    Raises ``NotOnGrid`` (naming why) for formats or layers with no exact form at that many levels.
    """
    kind = getattr(layer, "code_format", "")
    if kind == "uniform":
        if 2**layer.spec.bits > levels:
            raise NotOnGrid(f"{layer.spec.bits}-bit codes need more than {levels} levels")
        return _uniform(layer)
    if kind == "binary":
        return _binary(layer)
    if kind == "codebook":
        return _codebook(layer, levels)
    raise NotOnGrid(f"format {kind or type(layer).__name__!r} has no integer grid")
