"""Wanda (Sun et al. 2024): |w_ij| * ||x_j||_2 over the inputs of ``calibration_batches`` train batches.
Unstructured only (the one-shot ``wanda`` step compares within each output row)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nncompress.prune import importance
from nncompress.prune.criteria.base import Criterion, register_criterion


@register_criterion("wanda")
class Wanda(Criterion):
    """|w| scaled by the L2 norm of its input feature or channel."""

    structured = False

    def weight_scores(
        self, model: nn.Module, targets: Mapping[str, nn.Parameter], ctx: Any, batches: int
    ) -> dict[str, torch.Tensor]:
        modules = {n: model.get_submodule(n.rpartition(".")[0]) for n in targets}
        norms = importance.collect_input_norms(model, modules, ctx.task.train, batches)
        missing = sorted(set(targets) - set(norms))
        if missing:
            raise ValueError(f"wanda: layers never ran on the train split: {', '.join(missing)}")
        return {n: wanda_scores(modules[n], w, norms[n]) for n, w in targets.items()}


def wanda_scores(module: nn.Module, weight: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Wanda scores, also for grouped convolutions (each filter sees its group's channels)."""
    groups = getattr(module, "groups", 1)
    if groups == 1:
        return importance.wanda(weight, norm)
    out, per_group = weight.shape[:2]
    norms = norm.reshape(groups, per_group).repeat_interleave(out // groups, dim=0)  # (out, in/g)
    return weight.detach().abs() * norms.reshape(out, per_group, *[1] * (weight.dim() - 2))
