"""Scoring a model on a split: outputs over every batch, concatenated, then the task metric."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from nncompress.tasks.metrics import MetricFn
from nncompress.tasks.task import call_model


class ModelCallError(RuntimeError):
    """The model could not run on the task's inputs; the message names both sides."""


def predict(
    model: nn.Module, batches: Iterable[tuple[Any, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """All outputs and targets of ``model`` over ``batches`` in eval/inference mode."""
    was_training = model.training
    model.eval()
    outputs, targets = [], []
    try:
        with torch.inference_mode():
            for inputs, target in batches:
                try:
                    out = call_model(model, inputs)
                except Exception as e:
                    shape = (
                        tuple(inputs.shape)
                        if isinstance(inputs, torch.Tensor)
                        else type(inputs).__name__
                    )
                    raise ModelCallError(
                        f"the model's forward failed on the task's inputs of shape {shape}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    ) from e
                outputs.append(out.float())
                targets.append(target)
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("the split is empty: no batches to evaluate")
    return torch.cat(outputs), torch.cat(targets)


def evaluate(
    model: nn.Module, batches: Iterable[tuple[Any, torch.Tensor]], metric: MetricFn
) -> float:
    """The metric of ``model`` over the whole split."""
    outputs, targets = predict(model, batches)
    return float(metric(outputs, targets))
