"""First-order Taylor (Molchanov et al. 2019): |w * dL/dw|, the loss gradient summed over
``calibration_batches`` train batches. Norm layers vote on their channels too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nncompress.prune import importance
from nncompress.prune.criteria.base import Criterion, register_criterion


@register_criterion("taylor")
class Taylor(Criterion):
    """|w * g| per weight."""

    needs_gradients = True
    scores_norms = True

    def weight_scores(
        self, model: nn.Module, targets: Mapping[str, nn.Parameter], ctx: Any, batches: int
    ) -> dict[str, torch.Tensor]:
        grads = importance.collect_gradients(model, dict(targets), ctx.task.train, ctx.task.loss, max_batches=batches)
        return {n: importance.taylor(w, grads[n]) for n, w in targets.items()}

    def tensor_scores(self, t: torch.Tensor, name: str, grads: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return importance.taylor(t, grads[name]) if name in grads else None
