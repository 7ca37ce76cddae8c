"""Distill: fine-tune with the pre-compression model as teacher (recovery after compression)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.core.step import StepContext, register_step
from nncompress.distill.losses import kd_loss
from nncompress.tasks.task import call_model
from nncompress.train.finetune import FineTune


@register_step("distill", family="distill")
@dataclass(frozen=True)
class Distill(FineTune):
    """Fine-tune on soft labels from the model as it was before compression; masks stay fixed.

    Loss: ``alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * task loss`` (Hinton et al.
    2015). The teacher is ``ctx.teacher``: the model ``compress`` started from, frozen, in eval mode.

    Example:
        >>> Distill(epochs=4, lr=1e-3, alpha=0.9, temperature=4.0)  # doctest: +ELLIPSIS
        Distill(epochs=4.0, lr=0.001, ..., alpha=0.9, temperature=4.0)
    """

    alpha: float = 0.9
    temperature: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1] (the soft-label weight), got {self.alpha!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    def loss_fn(self, ctx: StepContext) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
        if ctx.teacher is None:
            raise ValueError("distill needs a teacher: run it inside nncompress.compress (the teacher is "
                             "the model before compression) or give StepContext(teacher=...)")
        teacher, task = ctx.teacher.eval(), ctx.task

        def loss(m: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                soft = call_model(teacher, x)
            out = call_model(m, x)
            return kd_loss(out, soft, task.loss(out, y), alpha=self.alpha, temperature=self.temperature)

        return loss
