"""Task: everything compression needs besides the model (data, loss, metric, example inputs)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.tasks.metrics import Metric, MetricFn, cross_entropy, higher_is_better, resolve_metric
from nncompress.tasks.outputs import primary_output

__all__ = ["Batch", "LossFn", "Task", "call_model", "primary_output", "repeat_batch", "run_with_hooks", "slice_batch"]

Batch = tuple[Any, Any]
# (what the model returned, targets) -> scalar loss tensor
LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass
class Task:
    """A model's data and how to score it.

    Args:
        name: how reports refer to the task (a reference name or ``file.py:factory``).
        train, val, test: iterables of ``(inputs, targets)`` batches (DataLoaders work); inputs
            are a tensor, a tuple of positional arguments or a dict of keyword arguments
            (``input_ids`` / ``attention_mask`` for a Hugging Face model).
        baseline: zero-argument callable that returns the trained model to compress (any
            ``nn.Module``, a raw ``transformers.PreTrainedModel`` included).
        metric: a registered name (``"accuracy"``, ``"top5"``, ``"neg_mse"``, ``"cosine"``,
            ``"perplexity"``), a :class:`~nncompress.tasks.metrics.Metric`, a ``torchmetrics.Metric``
            (updated per batch, computed at the end; its ``higher_is_better`` is the direction), or a
            callable ``(outputs, targets) -> float | (total, count)`` applied to each batch and
            combined as a mean weighted by the batch's examples, or as ``Σtotal / Σcount``.
            Callables count as higher-is-better unless they carry ``higher_is_better = False``.
        loss: ``(outputs, targets) -> scalar tensor`` used by every training step; the default is
            cross-entropy of the model's logits (per token for ``(N, T, V)`` logits).
        example_inputs: a batch of inputs for tracing and MACs (default: first test batch).

    ``outputs`` reach ``metric`` and ``loss`` as the model returned them: a tensor, a tuple, a
    dict or a Hugging Face ``ModelOutput``; built-in metrics and losses take its logits
    (:func:`~nncompress.tasks.outputs.primary_output`).

    Example:
        >>> task = Task("mine", train=train_loader, val=val_loader, test=test_loader,
        ...             baseline=lambda: my_trained_model)  # doctest: +SKIP
    """

    name: str
    train: Iterable[Batch]
    val: Iterable[Batch]
    test: Iterable[Batch]
    baseline: Callable[[], nn.Module]
    metric: str | Metric | MetricFn | Any = "accuracy"
    loss: LossFn = cross_entropy
    example_inputs: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            if not hasattr(getattr(self, split), "__iter__"):
                raise TypeError(
                    f"Task.{split} must be an iterable of (inputs, targets) batches, "
                    f"got {type(getattr(self, split)).__name__}"
                )
        if not callable(self.baseline):
            raise TypeError("Task.baseline must be a zero-argument callable returning a model")
        self.metric_name, self.metric_fn = resolve_metric(self.metric)

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger metric value is better (False for perplexity): compare values with it."""
        return higher_is_better(self.metric_fn)

    def inputs_example(self) -> Any:
        """The example inputs (first test batch's inputs when none were given)."""
        if self.example_inputs is None:
            first = next(iter(self.test), None)
            if first is None:
                raise ValueError(f"task {self.name!r} has an empty test split")
            self.example_inputs = first[0]
        return self.example_inputs

    def single_example(self) -> Any:
        """A batch-1 slice of the example inputs, for latency and MACs."""
        return slice_batch(self.inputs_example(), 1)


def slice_batch(inputs: Any, n: int) -> Any:
    """The first ``n`` samples of a tensor, or of each tensor in a tuple/list/dict batch (other
    values, such as ``use_cache=False`` among keyword inputs, are kept as they are)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:n] if inputs.dim() else inputs
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(slice_batch(x, n) for x in inputs)
    if isinstance(inputs, Mapping):  # dict, or a tokenizer's BatchEncoding
        return {k: slice_batch(v, n) for k, v in inputs.items()}
    if inputs is None or isinstance(inputs, (bool, int, float, str)):
        return inputs
    raise TypeError(f"cannot slice inputs of type {type(inputs).__name__}")


def repeat_batch(inputs: Any, n: int) -> Any:
    """A batch of ``n`` samples built by repeating the given batch (for batch-N latency)."""
    if isinstance(inputs, torch.Tensor):
        if not inputs.dim():
            return inputs
        reps = -(-n // len(inputs))
        return inputs.repeat(reps, *([1] * (inputs.dim() - 1)))[:n]
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(repeat_batch(x, n) for x in inputs)
    if isinstance(inputs, Mapping):
        return {k: repeat_batch(v, n) for k, v in inputs.items()}
    if inputs is None or isinstance(inputs, (bool, int, float, str)):
        return inputs
    raise TypeError(f"cannot repeat inputs of type {type(inputs).__name__}")


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call the model on a batch's inputs: a tensor, a tuple of positional args, or a mapping of kwargs; returns
    what the model returns (take :func:`primary_output` of it for the prediction tensor)."""
    if isinstance(inputs, Mapping):  # dict, or a tokenizer's BatchEncoding
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


LayerHook = Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def run_with_hooks(model: nn.Module, names: Iterable[str], batches: Iterable[Any], hook: LayerHook) -> None:
    """Run ``model`` (eval mode, restored afterwards) on ``batches`` of inputs, calling
    ``hook(name, module, input, output)`` on every call of the named modules; hooks are removed."""
    handles = [
        model.get_submodule(name).register_forward_hook(lambda m, args, out, name=name: hook(name, m, args[0], out))
        for name in names
    ]
    was_training = model.training
    model.eval()
    try:
        for inputs in batches:
            call_model(model, inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
