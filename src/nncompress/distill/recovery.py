"""Distill: fine-tune with the pre-compression model as teacher (recovery after compression)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.core.step import StepContext, register_step
from nncompress.train.finetune import FineTune
from nncompress.train.objective import check_distill_settings, training_loss


@register_step("distill", family="distill")
@dataclass(frozen=True)
class Distill(FineTune):
    """Fine-tune on soft labels from the model as it was before compression; masks stay fixed.

    Loss: ``alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * task loss`` (Hinton et al.
    2015). The teacher is ``ctx.teacher``: the model ``compress`` started from, frozen, in eval mode.

    Example:
        >>> Distill(epochs=4, lr=1e-3, alpha=0.9, temperature=4.0)  # doctest: +ELLIPSIS
        Distill(alpha=0.9, temperature=4.0, epochs=4.0, lr=0.001, ...)
    """

    alpha: float = 0.9
    temperature: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_distill_settings(self.alpha, self.temperature)

    def loss_fn(self, ctx: StepContext) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
        return training_loss(ctx, alpha=self.alpha, temperature=self.temperature, who="distill")
