"""Scoring a model on a split, streamed: each batch's outputs update the metric (and loss), then
the split's value is computed; outputs are never concatenated, so their shape may change from
batch to batch and a large model's logits over a split never sit in memory at once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

import torch
from torch import nn

from nncompress.tasks.metrics import MetricAccumulator, MetricFn
from nncompress.tasks.outputs import batch_examples
from nncompress.tasks.task import call_model

# (outputs, targets, inputs) of one batch -> None
BatchSink = Callable[[Any, Any, Any], None]


class ModelCallError(RuntimeError):
    """The model could not run on the task's inputs; the message names both sides."""


def describe_inputs(inputs: Any) -> str:
    """A short description of a batch's inputs for error messages: shapes, or the type."""
    if isinstance(inputs, torch.Tensor):
        return str(tuple(inputs.shape))
    if isinstance(inputs, Mapping):
        return "{" + ", ".join(f"{k}: {describe_inputs(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(describe_inputs(v) for v in inputs) + ")"
    return type(inputs).__name__


def stream(
    model: nn.Module, batches: Iterable[tuple[Any, Any]], sink: BatchSink, *, max_batches: int | None = None
) -> int:
    """Run ``model`` (eval mode, inference mode; its mode restored after) on each ``(inputs,
    targets)`` batch and hand ``(outputs, targets, inputs)`` to ``sink``; returns the batches run."""
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.inference_mode():
            for inputs, target in islice(batches, max_batches):
                try:
                    out = call_model(model, inputs)
                except Exception as e:
                    raise ModelCallError(
                        f"the model's forward failed on the task's inputs of shape {describe_inputs(inputs)}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    ) from e
                sink(out, target, inputs)
                seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("the split is empty: no batches to evaluate")
    return seen


class LossAccumulator:
    """A loss over a split: each batch's (mean) loss weighted by the batch's examples."""

    def __init__(self, loss: Callable[[Any, Any], torch.Tensor]) -> None:
        self.loss, self.total, self.count = loss, 0.0, 0

    def update(self, outputs: Any, targets: Any, inputs: Any = None) -> None:
        n = batch_examples(targets, inputs)
        self.total += float(self.loss(outputs, targets)) * n
        self.count += n

    def compute(self) -> float:
        if self.count == 0:
            raise ValueError("the split is empty: no batches to evaluate")
        return self.total / self.count


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    metric: str | MetricFn | Any,
    *,
    max_batches: int | None = None,
) -> float:
    """The metric (a name, a :class:`~nncompress.tasks.metrics.Metric`, a callable or a
    ``torchmetrics.Metric``) of ``model`` over the split, streamed batch by batch.

    Example:
        >>> evaluate(model, task.test, task.metric_fn)  # doctest: +SKIP
    """
    acc = MetricAccumulator(metric)
    stream(model, batches, acc.update, max_batches=max_batches)
    return acc.compute()


def evaluate_loss(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    loss: Callable[[Any, Any], torch.Tensor],
    *,
    max_batches: int | None = None,
) -> float:
    """The task loss of ``model`` over the split: per-batch losses weighted by the batch's examples."""
    acc = LossAccumulator(loss)
    stream(model, batches, acc.update, max_batches=max_batches)
    return acc.compute()


def evaluate_with_loss(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    metric: str | MetricFn | Any,
    loss: Callable[[Any, Any], torch.Tensor],
    *,
    max_batches: int | None = None,
) -> tuple[float, float]:
    """``(metric, loss)`` of ``model`` over the split in one streamed pass."""
    m, lo = MetricAccumulator(metric), LossAccumulator(loss)

    def both(outputs: Any, targets: Any, inputs: Any) -> None:
        m.update(outputs, targets, inputs)
        lo.update(outputs, targets, inputs)

    stream(model, batches, both, max_batches=max_batches)
    return m.compute(), lo.compute()
