"""``fit``: training on a plain loss, as fine-tuning, QAT, pruning schedules, lottery rounds and
baseline training use it; it runs on the one engine (``train.engine``) that distillation uses too.

Gradient hooks (``before_step``) and post-step hooks (``after_step``) let compression steps keep
their invariants while training: pruning masks re-applied, fake-quant ranges updated, and so on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from nncompress.base.train_config import TrainConfig
from nncompress.tasks.task import call_model, primary_output
from nncompress.train.engine import (
    LossObjective,
    RunSettings,
    StepHooks,
    TrainHistory,
    TrainingRun,
    lr_factor,
    make_optimizer,
    total_steps,
)

__all__ = [  # the engine's names that steps import from here
    "LossFn",
    "TrainConfig",
    "TrainHistory",
    "cross_entropy_loss",
    "fit",
    "lr_factor",
    "make_optimizer",
    "total_steps",
    "train_config",
]

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Hook = Callable[[nn.Module], None]


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """The default loss: cross-entropy of the model's outputs against integer targets."""

    def loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(
            primary_output(call_model(model, inputs)), targets, label_smoothing=label_smoothing
        )

    return loss


def fit(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    config: TrainConfig,
    *,
    loss_fn: LossFn | None = None,
    before_step: Hook | None = None,
    after_step: Hook | None = None,
    params: Iterable[nn.Parameter] | None = None,
    description: str = "train",
    settings: RunSettings | None = None,
) -> TrainHistory:
    """Train ``model`` in place for ``config.epochs`` passes over ``batches`` on ``loss_fn`` (default:
    cross-entropy), through the one engine (``train.engine``: AMP, DDP, checkpoints per ``settings``).

    Example:
        >>> fit(model, task.train, TrainConfig(epochs=1, lr=1e-3))  # doctest: +SKIP
    """
    if hasattr(batches, "reseeded"):  # TensorBatches: the data order follows the run's seed too
        batches = batches.reseeded(config.seed)
    objective = LossObjective(loss_fn or cross_entropy_loss(config.label_smoothing))
    run = TrainingRun(
        model,
        batches,
        config,
        objective,
        settings=settings,
        hooks=StepHooks(before_step, after_step),
        params=params,
    )
    return run.run(description)


def train_config(step: Any, seed: int) -> TrainConfig:
    """The training run a step describes: ``epochs``, ``lr``, ``optimizer``, ``max_steps`` and,
    where the step has it, ``weight_decay``."""
    return TrainConfig(
        epochs=step.epochs,
        lr=step.lr,
        optimizer=step.optimizer,
        weight_decay=getattr(step, "weight_decay", 0.0),
        max_steps=step.max_steps,
        seed=seed,
    )
