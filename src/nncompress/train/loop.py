"""The one training loop that fine-tuning, QAT, distillation and baseline training all reuse.

Gradient hooks (``before_step``) and post-step hooks (``after_step``) let compression steps keep
their invariants while training: pruning masks re-applied, fake-quant ranges updated, and so on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.base.train_config import TrainConfig
from nncompress.tasks.task import call_model, primary_output
from nncompress.train.progress import progress

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Hook = Callable[[nn.Module], None]


@dataclass
class TrainHistory:
    """What happened: loss per logged interval, steps taken, seconds spent."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum (nesterov), per the config."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=True,
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total`` (warmup, then the schedule)."""
    warmup = int(total * (0.3 if config.schedule == "onecycle" else config.warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    progress_ = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))


def total_steps(batches: Iterable[Any], config: TrainConfig) -> int:
    """How many optimizer steps ``fit(model, batches, config)`` takes: epochs x len, capped by max_steps."""
    per_epoch = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if per_epoch is None:
        if config.max_steps is None:
            raise ValueError("batches has no len(); give TrainConfig.max_steps")
        return config.max_steps
    total = math.ceil(config.epochs * per_epoch)
    return min(total, config.max_steps) if config.max_steps is not None else total


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
) -> TrainHistory:
    """Train ``model`` in place for ``config.epochs`` passes over ``batches``.

    Example:
        >>> fit(model, task.train, TrainConfig(epochs=1, lr=1e-3))  # doctest: +SKIP
    """
    torch.manual_seed(config.seed)
    if hasattr(batches, "reseeded"):  # TensorBatches: the data order follows the run's seed too
        batches = batches.reseeded(config.seed)
    loss_fn = loss_fn or cross_entropy_loss(config.label_smoothing)
    trainable = [p for p in (params or model.parameters()) if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    optimizer = make_optimizer(trainable, config)
    total = total_steps(batches, config)
    history, start, step = TrainHistory(), time.perf_counter(), 0
    model.train()
    bar = progress(total=total, desc=description)
    running = 0.0
    while step < total:
        for inputs, targets in batches:
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(step, total, config)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, inputs, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
            loss.backward()
            if before_step is not None:
                before_step(model)
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            if after_step is not None:
                after_step(model)
            running += loss.item()
            step += 1
            bar.update(1)
            if step % 50 == 0 or step == total:
                history.losses.append(running / (50 if step % 50 == 0 else step % 50))
                bar.set_postfix(loss=f"{history.losses[-1]:.4f}")
                running = 0.0
            if step >= total:
                break
    bar.close()
    model.eval()
    history.steps, history.seconds = step, time.perf_counter() - start
    return history


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
