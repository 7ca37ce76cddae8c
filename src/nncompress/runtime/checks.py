"""The exactness check every kernel runs on its prepared weights before it claims a layer.

A kernel's weights may differ from the layer's decoded float32 weights only by bfloat16 rounding
of its scales and zeros: at most ``MAX_STEP_FRACTION`` of the format's grid step (the format's own
rounding error is half a step). For codes of at most 4 bits under bf16 group scales and zeros the
bound is 1/16 of a step (|q - 8| <= 8 times 2^-8, twice); 8-bit codes keep float32 scales. A
mapping that is wrong (a group layout read differently, a zero point off by one) fails here and
the layer keeps the reference path instead of computing something else.
"""

from __future__ import annotations

from typing import Any

import torch

from nncompress.runtime.grid import AffineGrid, NotOnGrid, affine_grid
from nncompress.runtime.registry import Unsupported

MAX_STEP_FRACTION = 1 / 8  # twice the proven bound of bf16 scales and zeros on <= 4-bit codes


def check_matches(layer: Any, kernel_weight: torch.Tensor, step: torch.Tensor, kernel: str) -> None:
    """Raise ``Unsupported`` when ``kernel_weight`` (what the kernel will multiply by, shaped
    (N, groups, g)) strays from the layer's decoded weight by more than ``MAX_STEP_FRACTION`` of
    the grid ``step`` (shaped (N, groups, 1)) anywhere."""
    n, groups, g = kernel_weight.shape
    reference = layer.decode_weight().detach().float().cpu().reshape(n, groups, g)
    error = (kernel_weight - reference).abs_()
    allowed = step.abs() * MAX_STEP_FRACTION
    if not bool((error <= allowed).all()):
        worst = float((error / step.abs().clamp_min(torch.finfo(torch.float32).tiny)).max())
        raise Unsupported(f"{kernel}'s weights differ from the decoded weights by up to {worst:.3g} of a grid step")


def claim_grid(layer: Any, levels: int, unavailable: str | None) -> AffineGrid:
    """The layer's codes on a grid of ``levels`` levels, or ``Unsupported`` (the kernel is unavailable
    here, or the layer's format is not on such a grid)."""
    if unavailable:
        raise Unsupported(unavailable)
    try:
        return affine_grid(layer, levels)
    except NotOnGrid as why:
        raise Unsupported(str(why)) from None
