"""Task metrics: named ones and user callables; each scores a whole split (higher is better)."""

from __future__ import annotations

from collections.abc import Callable

import torch

MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class equals the target."""
    return (outputs.argmax(dim=-1) == targets).float().mean().item()


def top5(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose target is among the five highest outputs."""
    k = min(5, outputs.shape[-1])
    return (outputs.topk(k, dim=-1).indices == targets[:, None]).any(dim=-1).float().mean().item()


def neg_mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Negative mean squared error (so that higher is better, like every metric here)."""
    return -torch.mean((outputs.float() - targets.float()) ** 2).item()


METRICS: dict[str, MetricFn] = {"accuracy": accuracy, "top5": top5, "neg_mse": neg_mse}


def resolve_metric(metric: str | MetricFn) -> tuple[str, MetricFn]:
    """(name, function) for a metric given by name or as a callable."""
    if callable(metric):
        return getattr(metric, "__name__", "custom"), metric
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; accepted: {', '.join(METRICS)} or a callable")
    return metric, METRICS[metric]
