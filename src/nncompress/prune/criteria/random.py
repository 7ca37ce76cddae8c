"""Random: uniform noise, the control every criterion must beat (seeded by the run's seed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nncompress.models.vit import MultiHeadSelfAttention
from nncompress.prune import importance
from nncompress.prune.criteria.base import Criterion, register_criterion


@register_criterion("random")
class Random(Criterion):
    """Uniform scores per weight, per channel or per head."""

    def weight_scores(
        self, model: nn.Module, targets: Mapping[str, nn.Parameter], ctx: Any, batches: int
    ) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(ctx.seed)
        return {n: importance.random_scores(w, gen).to(w.device) for n, w in targets.items()}

    def channel_scores(
        self,
        model: nn.Module,
        group: Any,
        grads: Mapping[str, torch.Tensor],
        followers: Mapping[str, str],
        generator: torch.Generator,
    ) -> torch.Tensor:
        return torch.rand(group.size, generator=generator)

    def head_scores(
        self, attn: MultiHeadSelfAttention, name: str, grads: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        return torch.rand(attn.num_heads, generator=generator)
