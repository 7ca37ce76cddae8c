"""Task metrics: named ones and user callables, each scoring a whole split, and their direction.

Most metrics are "higher is better" (accuracy); some are not (perplexity). Every named metric is
registered with its direction, and code that compares two values of a metric (a drop after
compression, meeting a target, choosing the best candidate) asks :func:`higher_is_better` or
uses :func:`improvement` instead of assuming. A user callable is taken as higher-is-better (the
task contract) unless it carries ``higher_is_better = False`` or is wrapped in a :class:`Metric`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MetricFn = Callable[[torch.Tensor, torch.Tensor], float]

# Rows of logits scored at once by perplexity: bounds its extra memory (a float32 log-softmax of
# this many rows) whatever the split's size.
_CE_CHUNK_ELEMENTS = 1 << 22


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class equals the target."""
    return (outputs.argmax(dim=-1) == targets).float().mean().item()


def top5(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose target is among the five highest outputs."""
    k = min(5, outputs.shape[-1])
    return (outputs.topk(k, dim=-1).indices == targets[:, None]).any(dim=-1).float().mean().item()


def neg_mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Negative mean squared error (so that higher is better)."""
    return -torch.mean((outputs.float() - targets.float()) ** 2).item()


def token_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy over every token position: the loss of a language model.

    Args:
        outputs: logits ``(N, T, V)`` (or already flattened to ``(N * T, V)``).
        targets: token ids ``(N, T)`` (or ``(N * T,)``); positions equal to ``ignore_index`` are skipped.

    Example:
        >>> token_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))  # log 4
        tensor(1.3863)
    """
    logits, flat = _flatten_tokens(outputs, targets)
    return F.cross_entropy(logits, flat, ignore_index=ignore_index)


def _flatten_tokens(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, V) logits and (rows,) targets, checking that they pair up."""
    logits, flat = outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)
    if len(logits) != len(flat):
        raise ValueError(
            f"logits of shape {tuple(outputs.shape)} do not match targets of shape {tuple(targets.shape)}: "
            "expected logits (N, T, V) or (N*T, V) and targets (N, T) or (N*T,)"
        )
    return logits, flat.long()


def perplexity(outputs: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> float:
    """exp of the mean per-token cross-entropy over the whole split (lower is better).

    Scored in chunks of rows, so the only large tensor is ``outputs`` itself (no full-size
    log-softmax copy). Uniform logits over V tokens give exactly V.

    Example:
        >>> round(perplexity(torch.zeros(2, 3, 256), torch.zeros(2, 3, dtype=torch.long)), 3)
        256.0
    """
    logits, flat = _flatten_tokens(outputs.detach(), targets)
    rows = max(1, _CE_CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(flat), rows):
            t = flat[start : start + rows]
            chunk = logits[start : start + rows].float()
            total += float(F.cross_entropy(chunk, t, ignore_index=ignore_index, reduction="sum"))
            count += int((t != ignore_index).sum())
    if count == 0:
        raise ValueError("perplexity of an empty split: no target tokens (all ignored or none given)")
    return math.exp(total / count)


def mean_cosine(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cosine similarity of each output row with its target row (embedding agreement, in [-1, 1])."""
    if outputs.shape != targets.shape:
        raise ValueError(f"outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ in shape")
    return F.cosine_similarity(outputs.float().flatten(1), targets.float().flatten(1), dim=1).mean().item()


@dataclass(frozen=True)
class Metric:
    """A named metric and its direction; callable like its function.

    Example:
        >>> m = Metric("bits_per_byte", lambda o, t: 1.0, higher_is_better=False)
        >>> m.higher_is_better, m(None, None)
        (False, 1.0)
    """

    name: str
    fn: MetricFn
    higher_is_better: bool = True

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return self.fn(outputs, targets)


METRICS: dict[str, Metric] = {}


def register_metric(name: str, fn: MetricFn, *, higher_is_better: bool = True) -> Metric:
    """Make ``name`` usable as ``Task(metric=name)``, with its direction."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a metric name must be a non-empty string, got {name!r}")
    METRICS[name] = Metric(name, fn, higher_is_better)
    return METRICS[name]


register_metric("accuracy", accuracy)
register_metric("top5", top5)
register_metric("neg_mse", neg_mse)
register_metric("cosine", mean_cosine)
register_metric("perplexity", perplexity, higher_is_better=False)


def resolve_metric(metric: str | MetricFn) -> tuple[str, MetricFn]:
    """(name, function) for a metric given by name, as a :class:`Metric`, or as a callable."""
    if isinstance(metric, Metric):
        return metric.name, metric
    if callable(metric):
        return getattr(metric, "__name__", "custom"), metric
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; accepted: {', '.join(METRICS)} or a callable")
    return metric, METRICS[metric]


def higher_is_better(metric: str | MetricFn) -> bool:
    """Whether larger values of ``metric`` (a registered name, a Metric or a callable) are better.

    Example:
        >>> higher_is_better("accuracy"), higher_is_better("perplexity")
        (True, False)
    """
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; accepted: {', '.join(METRICS)} or a callable")
        return METRICS[metric].higher_is_better
    return bool(getattr(metric, "higher_is_better", True))


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
