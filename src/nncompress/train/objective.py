"""The training objective a compression step fine-tunes with: the task's loss, or that mixed with
soft labels from the pre-compression model (Hinton et al. 2015) so any step can recover by distillation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nncompress.core.step import StepContext
from nncompress.tasks.outputs import primary_output
from nncompress.tasks.task import Task, call_model
from nncompress.train.loop import LossFn
from nncompress.train.soft_labels import kd_loss


def task_loss(task: Task) -> LossFn:
    """The task's loss in the ``(model, inputs, targets)`` form that ``fit`` takes."""

    def loss(model: nn.Module, inputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return task.loss(call_model(model, inputs), targets)

    return loss


def check_distill_settings(
    alpha: Any, temperature: Any, *, name: str = "alpha", temperature_name: str = "temperature"
) -> None:
    """ValueError unless ``alpha`` is in [0, 1] (the soft-label weight) and ``temperature`` > 0."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"{name} must be in [0, 1] (the soft-label weight; 0 = task loss only), got {alpha!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"{temperature_name} must be > 0, got {temperature!r}")


def training_loss(ctx: StepContext, *, alpha: float = 0.0, temperature: float = 4.0, who: str = "this step") -> LossFn:
    """``(model, inputs, targets) -> loss`` on ``ctx.task``: the task loss when ``alpha`` is 0, else
    ``alpha * T^2 * KL(teacher/T || model/T) + (1 - alpha) * task loss`` with ``ctx.teacher`` (the model
    ``compress`` started from) frozen in eval mode.

    Example:
        >>> loss = training_loss(ctx, alpha=0.9, temperature=4.0)  # doctest: +SKIP
    """
    task = ctx.task
    if alpha == 0:
        return task_loss(task)
    if ctx.teacher is None:
        raise ValueError(
            f"{who} needs a teacher to distill (alpha={alpha}): run it inside "
            "nncompress.compress (the teacher is the model before compression) or give "
            "StepContext(teacher=...); alpha=0 trains on the task loss alone"
        )
    teacher = ctx.teacher.eval()

    def loss(m: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = call_model(teacher, x)
        out = call_model(m, x)
        # soft labels compare logits; the task loss gets the output as the model returned it
        hard = task.loss(out, y)
        return kd_loss(primary_output(out), primary_output(soft), hard, alpha=alpha, temperature=temperature)

    return loss


def step_loss(step: Any, ctx: StepContext) -> LossFn:
    """A step's training loss from its ``distill``, ``kd_alpha`` and ``kd_temperature`` settings: soft
    labels from ``ctx.teacher`` mixed in when ``distill`` is set and a teacher exists, else the task loss."""
    alpha = step.kd_alpha if step.distill and ctx.teacher is not None else 0.0
    return training_loss(ctx, alpha=alpha, temperature=step.kd_temperature, who=getattr(step, "kind", "this step"))


def check_step_distill(step: Any) -> None:
    """Validate a step's ``kd_alpha`` and ``kd_temperature`` (see ``step_loss``)."""
    check_distill_settings(step.kd_alpha, step.kd_temperature, name="kd_alpha", temperature_name="kd_temperature")


def distill_note(step: Any, ctx: StepContext) -> str:
    """How a step's fine-tuning was supervised, for its log line."""
    if step.distill and ctx.teacher is not None:
        return f"with KD (alpha {step.kd_alpha}, T {step.kd_temperature})"
    return "task loss only"
