"""Magnitude: |w|^p (Han et al. 2015); L1 with p = 1 (``l1``, or ``magnitude`` for unstructured pruning), L2
(squared) with p = 2.

Channels score the sum over their weights; with ``fold_norms`` a following BatchNorm is folded into
its producer's rows first. Heads score what they can write into the model, ``proj_h @ [W_v,h | b_v,h]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from nncompress.models.vit import MultiHeadSelfAttention
from nncompress.prune import importance
from nncompress.prune.criteria.base import Criterion, register_criterion


class L1Magnitude(Criterion):
    """|w| per weight."""

    p: ClassVar[int] = 1

    def tensor_scores(self, t: torch.Tensor, name: str, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return importance.magnitude(t, self.p)

    def folded_scores(self, layer: nn.Module, bn: nn.Module) -> torch.Tensor | None:
        """Per-row |W|^p and |shift|^p of a Conv/Linear with its BatchNorm folded in (eval maths)."""
        if bn.running_var is None or bn.running_mean is None:
            return None
        scale = (bn.running_var + bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.detach()
        bias = layer.bias.detach() if layer.bias is not None else 0.0
        shift = (bias - bn.running_mean) * scale + (bn.bias.detach() if bn.bias is not None else 0.0)
        rows = importance.reduce_groups(importance.magnitude(layer.weight, self.p), 0)
        return rows * scale.abs().pow(self.p) + shift.abs().pow(self.p)

    def head_scores(
        self, attn: MultiHeadSelfAttention, name: str, grads: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        """Norm of what each head writes into the model: zero when its values or its output columns are zero."""
        h, d = attn.num_heads, attn.head_dim
        v = attn.v.weight.detach()  # (h*d, dim)
        if attn.v.bias is not None:
            v = torch.cat([v, attn.v.bias.detach()[:, None]], 1)
        p_h = attn.proj.weight.detach().view(-1, h, d)  # (dim, h, d)
        ov = torch.einsum("ohk,hkc->hoc", p_h, v.view(h, d, -1))  # (h, dim, dim + 1)
        return importance.magnitude(ov, self.p).flatten(1).sum(1).float().cpu()


@register_criterion("magnitude")
class Magnitude(L1Magnitude):
    """|w| per weight: the unstructured steps' name for L1 (channel and head pruning say ``l1``)."""

    structured = False


register_criterion("l1")(L1Magnitude)


@register_criterion("l2")
class L2Magnitude(L1Magnitude):
    """w^2 per weight."""

    p = 2
