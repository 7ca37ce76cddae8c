"""Task metrics: named ones, user callables and ``torchmetrics`` objects, streamed batch by batch.

A split is never scored at once: every metric is updated with each batch's outputs and targets
and computed at the end (:class:`MetricAccumulator`). A callable metric is applied to each batch
and combined as a mean weighted by the batch's examples or, when it returns ``(total, count)``,
as ``Σtotal / Σcount`` (perplexity counts tokens this way); a :class:`Metric` may then apply a
``finish`` (perplexity: ``exp``). A ``torchmetrics.Metric`` is updated per batch and computed at
the end. Built-in metrics score :func:`~nncompress.tasks.outputs.primary_output` of what the model
returned (its logits); user callables get the output as it is.

Most metrics are "higher is better" (accuracy); some are not (perplexity). Every named metric is
registered with its direction, and code that compares two values of a metric (a drop after
compression, meeting a target, choosing the best candidate) asks :func:`higher_is_better` or
uses :func:`improvement` instead of assuming. A user callable is taken as higher-is-better (the
task contract) unless it carries ``higher_is_better = False`` or is wrapped in a :class:`Metric`;
a ``torchmetrics`` object brings its own ``higher_is_better``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nncompress.tasks.outputs import batch_examples, primary_output

# Per batch: a value (averaged weighted by the batch's examples) or a (total, count) pair.
BatchValue = float | torch.Tensor | tuple[float, float]
MetricFn = Callable[[Any, Any], BatchValue]

# Rows of logits scored at once by perplexity: bounds its extra memory (a float32 log-softmax of
# this many rows) whatever the batch's size.
_CE_CHUNK_ELEMENTS = 1 << 22


def token_cross_entropy(outputs: Any, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy over every token position: the loss of a language model.

    Args:
        outputs: logits ``(N, T, V)`` (or already flattened to ``(N * T, V)``), or what a model
            returned holding them (a tuple, a dict or a ``ModelOutput`` with ``logits``).
        targets: token ids ``(N, T)`` (or ``(N * T,)``); positions equal to ``ignore_index`` are skipped.

    Example:
        >>> token_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))  # log 4
        tensor(1.3863)
    """
    logits, flat = _flatten_tokens(primary_output(outputs), targets)
    return F.cross_entropy(logits, flat, ignore_index=ignore_index)


def cross_entropy(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """The default task loss: cross-entropy of the model's logits against integer targets.

    Logits ``(N, C)`` (or ``(N, C, ...)`` as ``F.cross_entropy`` takes them) against ``(N, ...)``
    targets; token logits ``(N, T, V)`` against ``(N, T)`` targets are scored per token (positions
    of -100 skipped). A tuple, dict or ``ModelOutput`` is scored on its logits.

    Example:
        >>> cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))  # log 4
        tensor(1.3863)
    """
    logits = primary_output(outputs)
    if logits.dim() >= 3 and logits.shape[:-1] == targets.shape:
        return token_cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets)


def _flatten_tokens(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, V) logits and (rows,) targets, checking that they pair up."""
    logits, flat = outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)
    if len(logits) != len(flat):
        raise ValueError(
            f"logits of shape {tuple(outputs.shape)} do not match targets of shape {tuple(targets.shape)}: "
            "expected logits (N, T, V) or (N*T, V) and targets (N, T) or (N*T,)"
        )
    return logits, flat.long().to(logits.device)


def _accuracy(outputs: Any, targets: torch.Tensor) -> tuple[float, int]:
    """(correct, scored): arg-max class equal to the target, per sample (or per token)."""
    hits = primary_output(outputs).argmax(dim=-1) == targets.to(primary_output(outputs).device)
    return float(hits.sum()), hits.numel()


def _top5(outputs: Any, targets: torch.Tensor) -> tuple[float, int]:
    """(hits, scored): the target among the five highest outputs."""
    out = primary_output(outputs)
    k = min(5, out.shape[-1])
    hits = (out.topk(k, dim=-1).indices == targets.to(out.device)[..., None]).any(dim=-1)
    return float(hits.sum()), hits.numel()


def _neg_mse(outputs: Any, targets: torch.Tensor) -> tuple[float, int]:
    """(minus the sum of squared errors, elements)."""
    out = primary_output(outputs).float()
    diff = out - targets.float().to(out.device)
    return -float(diff.square().sum()), diff.numel()


def _token_nll(outputs: Any, targets: torch.Tensor, ignore_index: int = -100) -> tuple[float, int]:
    """(summed cross-entropy, tokens scored) of one batch, in chunks of rows so that the only large
    tensor is the batch's logits (no full-size log-softmax copy)."""
    logits, flat = _flatten_tokens(primary_output(outputs).detach(), targets)
    rows = max(1, _CE_CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(flat), rows):
            t = flat[start : start + rows]
            chunk = logits[start : start + rows].float()
            total += float(F.cross_entropy(chunk, t, ignore_index=ignore_index, reduction="sum"))
            count += int((t != ignore_index).sum())
    return total, count


def _cosine(outputs: Any, targets: torch.Tensor) -> tuple[float, int]:
    """(summed cosine similarity of each output row with its target row, rows)."""
    out = primary_output(outputs)
    if out.shape != targets.shape:
        raise ValueError(f"outputs {tuple(out.shape)} and targets {tuple(targets.shape)} differ in shape")
    cos = F.cosine_similarity(out.float().flatten(1), targets.float().to(out.device).flatten(1), dim=1)
    return float(cos.sum()), len(cos)


def _is_torchmetric(obj: Any) -> bool:
    """Whether ``obj`` is a ``torchmetrics.Metric`` (without importing torchmetrics)."""
    tm = sys.modules.get("torchmetrics")
    return tm is not None and isinstance(obj, tm.Metric)


@dataclass(frozen=True)
class Metric:
    """A named metric, its direction and how its batches combine; callable on one batch (or split).

    Args:
        name: how reports refer to it.
        fn: ``(outputs, targets) -> value`` per batch (averaged weighted by the batch's examples)
            or ``-> (total, count)`` (combined as ``Σtotal / Σcount``); or a ``torchmetrics.Metric``.
        higher_is_better: its direction.
        finish: applied to the combined value (perplexity: ``math.exp`` of the mean token loss).

    Example:
        >>> m = Metric("bits_per_byte", lambda o, t: 1.0, higher_is_better=False)
        >>> m.higher_is_better, m(None, None)
        (False, 1.0)
    """

    name: str
    fn: MetricFn
    higher_is_better: bool = True
    finish: Callable[[float], float] | None = None

    def __call__(self, outputs: Any, targets: Any) -> float:
        """The metric of ``outputs`` against ``targets`` taken as one batch."""
        acc = MetricAccumulator(self)
        acc.update(outputs, targets)
        return acc.compute()


class MetricAccumulator:
    """Streams a metric over a split: :meth:`update` per batch, :meth:`compute` at the end.

    Example:
        >>> acc = MetricAccumulator("accuracy")
        >>> acc.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
        >>> acc.update(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([1, 1]))
        >>> round(acc.compute(), 4)  # 1 of 3 examples right
        0.3333
    """

    def __init__(self, metric: str | Metric | MetricFn | Any) -> None:
        self.name, resolved = resolve_metric(metric)
        fn = resolved.fn if isinstance(resolved, Metric) else resolved
        self.finish = resolved.finish if isinstance(resolved, Metric) else None
        self.torchmetric = fn.clone() if _is_torchmetric(fn) else None
        if self.torchmetric is not None:
            self.torchmetric.reset()
        self.fn = fn
        self.total, self.count, self.batches = 0.0, 0.0, 0
        self.pairs: bool | None = None  # whether the metric returns (total, count); fixed by the first batch

    def update(self, outputs: Any, targets: Any, inputs: Any = None) -> None:
        """Add one batch (``inputs`` only count its examples when ``targets`` hold no tensor)."""
        self.batches += 1
        if self.torchmetric is not None:
            preds = outputs if isinstance(outputs, torch.Tensor) else primary_output(outputs)
            if isinstance(targets, torch.Tensor) and targets.device != preds.device:
                targets = targets.to(preds.device)
            self.torchmetric.to(preds.device).update(preds, targets)
            return
        value = self.fn(outputs, targets)
        pair = isinstance(value, (tuple, list))
        if self.pairs is not None and pair != self.pairs:
            raise ValueError(
                f"metric {self.name!r} returned {'a (total, count) pair' if pair else 'a single value'} "
                "for one batch and not for another: return the same form for every batch"
            )
        self.pairs = pair
        if pair:
            if len(value) != 2:
                raise ValueError(
                    f"metric {self.name!r} returned {len(value)} values; accepted: a number or (total, count)"
                )
            self.total += float(value[0])
            self.count += float(value[1])
        else:
            n = batch_examples(targets, inputs)
            self.total += float(value) * n
            self.count += n

    def compute(self) -> float:
        """The metric over every batch added so far."""
        if self.batches == 0:
            raise ValueError("the split is empty: no batches to evaluate")
        if self.torchmetric is not None:
            return float(self.torchmetric.compute())
        if self.count == 0:
            raise ValueError(
                f"{self.name} of an empty split: no target tokens or examples were counted (all ignored or none given)"
            )
        value = self.total / self.count
        return float(self.finish(value)) if self.finish is not None else value


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str, fn: MetricFn, *, higher_is_better: bool = True, finish: Callable[[float], float] | None = None
) -> Metric:
    """Make ``name`` usable as ``Task(metric=name)``, with its direction (see :class:`Metric`)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a metric name must be a non-empty string, got {name!r}")
    METRICS[name] = Metric(name, fn, higher_is_better, finish)
    return METRICS[name]


def _float32(value: float) -> float:
    """``value`` rounded to float32: a fraction of hits over a split as it was when a split's hits
    were averaged in float32, so accuracies recorded before streaming reproduce exactly."""
    return torch.tensor(value, dtype=torch.float32).item()


accuracy = register_metric("accuracy", _accuracy, finish=_float32)
"""Fraction of samples (or tokens) whose arg-max class equals the target."""
top5 = register_metric("top5", _top5, finish=_float32)
"""Fraction of samples whose target is among the five highest outputs."""
neg_mse = register_metric("neg_mse", _neg_mse)
"""Negative mean squared error over every element (so that higher is better)."""
mean_cosine = register_metric("cosine", _cosine)
"""Mean cosine similarity of each output row with its target row (embedding agreement, in [-1, 1])."""
perplexity = register_metric("perplexity", _token_nll, higher_is_better=False, finish=math.exp)
"""exp of the mean per-token cross-entropy (lower is better): summed per batch, divided by the
tokens scored (targets of -100 are skipped). Uniform logits over V tokens give exactly V.

Example:
    >>> round(perplexity(torch.zeros(2, 3, 256), torch.zeros(2, 3, dtype=torch.long)), 3)
    256.0
"""


def resolve_metric(metric: str | Metric | MetricFn | Any) -> tuple[str, Metric | MetricFn]:
    """(name, metric) for a metric given by name, as a :class:`Metric`, a ``torchmetrics.Metric``
    (wrapped in a :class:`Metric` with its ``higher_is_better``) or a callable."""
    if isinstance(metric, Metric):
        return metric.name, metric
    if _is_torchmetric(metric):
        higher = getattr(metric, "higher_is_better", None)
        name = type(metric).__name__
        return name, Metric(name, metric, True if higher is None else bool(higher))
    if callable(metric):
        return getattr(metric, "__name__", "custom"), metric
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(
            f"unknown metric {metric!r}; accepted: {', '.join(METRICS)}, a callable or a torchmetrics.Metric"
        )
    return metric, METRICS[metric]


def higher_is_better(metric: str | Metric | MetricFn | Any) -> bool:
    """Whether larger values of ``metric`` (a registered name, a Metric, a torchmetrics object or a
    callable) are better.

    Example:
        >>> higher_is_better("accuracy"), higher_is_better("perplexity")
        (True, False)
    """
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(
                f"unknown metric {metric!r}; accepted: {', '.join(METRICS)}, a callable or a torchmetrics.Metric"
            )
        return METRICS[metric].higher_is_better
    value = getattr(metric, "higher_is_better", True)
    return True if value is None else bool(value)


def improvement(before: float, after: float, metric: str | MetricFn) -> float:
    """``after - before`` signed so that positive means better (a perplexity decrease is positive).

    Example:
        >>> improvement(0.9, 0.8, "accuracy") < 0, improvement(10.0, 12.0, "perplexity")
        (True, -2.0)
    """
    change = after - before
    return change if higher_is_better(metric) else -change


def is_better(a: float, b: float, metric: str | MetricFn) -> bool:
    """Whether value ``a`` is strictly better than ``b`` for ``metric``."""
    return improvement(b, a, metric) > 0


def meets(value: float, target: float, metric: str | MetricFn) -> bool:
    """Whether ``value`` is at least as good as ``target`` (>= for accuracy, <= for perplexity)."""
    return improvement(target, value, metric) >= 0
