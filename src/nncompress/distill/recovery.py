"""Distill: fine-tune with the pre-compression model as teacher (recovery after compression)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nncompress.base.settings import SoftLabels
from nncompress.core.step import StepContext, register_step
from nncompress.train.finetune import FineTune
from nncompress.train.objective import training_loss


@register_step("distill", family="distill")
@dataclass(frozen=True)
class Distill(SoftLabels, FineTune):
    """Fine-tune on soft labels from the model as it was before compression; masks stay fixed.

    Loss: ``kd_alpha * T^2 * KL(teacher/T || student/T) + (1 - kd_alpha) * task loss`` with T =
    ``kd_temperature`` (Hinton et al. 2015), named as every step's soft-label settings are. The
    teacher is ``ctx.teacher``: the model ``compress`` started from, frozen, in eval mode. Recipe
    files written with the old names ``alpha`` / ``temperature`` still load.

    Example:
        >>> Distill(epochs=4, lr=1e-3, kd_alpha=0.9, kd_temperature=4.0)  # doctest: +ELLIPSIS
        Distill(epochs=4.0, lr=0.001, ..., kd_alpha=0.9, kd_temperature=4.0)
    """

    renamed_settings: ClassVar[dict[str, str]] = {"alpha": "kd_alpha", "temperature": "kd_temperature"}

    def loss_fn(self, ctx: StepContext) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
        return training_loss(ctx, alpha=self.kd_alpha, temperature=self.kd_temperature, who="distill")
