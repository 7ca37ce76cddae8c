"""FineTune: the recovery step; trains on the task's train split keeping earlier masks fixed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.base.settings import TrainSettings
from nncompress.core.step import Step, StepContext, register_step
from nncompress.train.loop import TrainConfig, fit
from nncompress.train.masks import mask_hooks
from nncompress.train.objective import task_loss


@register_step("finetune", family="train")
@dataclass(frozen=True)
class FineTune(TrainSettings, Step):
    """Train the compressed model on the task's data; pruned weights stay exactly zero.

    Settings: the ``TrainSettings`` block (``base.settings``): epochs, lr, optimizer, weight_decay, max_steps.

    Example:
        >>> FineTune(epochs=2, lr=5e-4)
        FineTune(epochs=2.0, lr=0.0005, optimizer='adamw', weight_decay=0.0, max_steps=None)
    """

    def config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            max_steps=self.max_steps,
            seed=seed,
        )

    def loss_fn(self, ctx: StepContext) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
        """The training loss: the task's own loss on the hard labels."""
        return task_loss(ctx.task)

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        before, after = mask_hooks(model, ctx.masks)
        history = fit(
            model,
            ctx.task.train,
            self.config(ctx.seed),
            loss_fn=self.loss_fn(ctx),
            before_step=before,
            after_step=after,
            description=self.kind,
        )
        ctx.log.append(
            f"{self.kind}: {history.steps} steps in {history.seconds:.1f}s, last loss {history.losses[-1]:.4f}"
        )
        return model
