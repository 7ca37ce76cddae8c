"""The module a factorized layer becomes: an ``nn.Sequential`` of its plain factor layers that
still answers ``weight`` (recomposed on access) and ``bias``, as the layer it replaced did.

It lives in the low layer, apart from ``nncompress.lowrank`` (which computes the factors), so an
artifact holding factorized layers loads without importing the factorization code or TensorLy.
"""

from __future__ import annotations

import torch
from torch import nn

KINDS = ("svd", "tucker", "cp", "spatial-svd")  # the factor layouts recompose() knows
# What model code reads off a Linear / convolution besides its weight (e.g. Whisper reads conv1.stride):
# kept from the replaced layer as plain attributes.
GEOMETRY = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)


class Factorized(nn.Sequential):
    """The layers replacing one factorized layer; ``weight`` recomposes them, ``bias`` is the last one's.

    ``method`` names the factorization (one of :data:`KINDS`), which fixes how the factors'
    weights multiply back into the original layer's shape.

    Example:
        >>> f = Factorized(nn.Linear(8, 2, bias=False), nn.Linear(2, 6), method="svd")
        >>> tuple(f.weight.shape), f.bias is f[1].bias
        ((6, 8), True)
    """

    def __init__(self, *layers: nn.Module, method: str, like: nn.Module | None = None) -> None:
        super().__init__(*layers)
        self.method = method
        for attr in GEOMETRY if like is not None else ():  # the replaced layer's shape attributes
            if hasattr(like, attr):
                setattr(self, attr, getattr(like, attr))

    @property
    def weight(self) -> torch.Tensor:
        """The recomposed weight (the original layer's shape): computed on access, not saved."""
        with torch.no_grad():
            return recompose(self.method, [m.weight for m in self])

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias of the last factor (the original layer's bias), or None."""
        return getattr(self[-1], "bias", None)

    def extra_repr(self) -> str:
        return f"method={self.method}"


def recompose(method: str, weights: list[torch.Tensor]) -> torch.Tensor:
    """The layer weight that the factor weights of ``method`` (in forward order) multiply back to."""
    if method == "svd":  # Linear(in, r), Linear(r, out)
        return weights[1] @ weights[0]
    if method == "tucker":  # 1x1 (r_in, C_in), core (r_out, r_in, *k), 1x1 (C_out, r_out)
        first, core, last = (w.flatten(1) if i != 1 else w for i, w in enumerate(weights))
        return torch.einsum("oa,ab...,bi->oi...", last, core, first)
    if method == "cp":  # 1x1 (R, C_in), (R, 1, kh, 1), (R, 1, 1, kw), 1x1 (C_out, R)
        first, vertical, horizontal, last = weights
        return torch.einsum(
            "or,rh,rw,ri->oihw", last.flatten(1), vertical[:, 0, :, 0], horizontal[:, 0, 0, :], first.flatten(1)
        )
    if method == "spatial-svd":  # (r, C_in, kh, 1), (C_out, r, 1, kw)
        return torch.einsum("orw,rih->oihw", weights[1][:, :, 0, :], weights[0][..., 0])
    raise ValueError(f"unknown factorization {method!r}; accepted: {', '.join(KINDS)}")
