"""Choosing among evaluated trials: the Pareto front of metric against a resource, and the
chosen trial, the best objective among those that meet the budget.

Every comparison reads the metric's direction (accuracy: higher is better; perplexity: lower).
"""

from __future__ import annotations

from collections.abc import Sequence

from nncompress.search.trials import Trial

RESOURCES = {"size": "size_bytes", "macs": "macs", "latency": "latency_ms"}


def _cost(trial: Trial, resource: str) -> float:
    value = getattr(trial, RESOURCES[resource])
    return float("inf") if value is None else float(value)


def _badness(trial: Trial, higher_is_better: bool) -> float:
    """The metric as a lower-is-better number."""
    return -trial.metric if higher_is_better else trial.metric


def pareto_front(trials: Sequence[Trial], *, resource: str, higher_is_better: bool) -> list[int]:
    """Ids of the trials no other trial beats on both the metric and ``resource`` (size, macs or
    latency), ordered by that resource. Among equal trials the first evaluated stays.

    Example:
        >>> pareto_front(trials, resource="size", higher_is_better=True)  # doctest: +SKIP
        [3, 0, 7]
    """
    if resource not in RESOURCES:
        raise ValueError(f"resource must be one of {', '.join(RESOURCES)}; got {resource!r}")
    ranked = sorted(trials, key=lambda t: (_cost(t, resource), _badness(t, higher_is_better), t.trial))
    front, best = [], float("inf")
    for t in ranked:
        if _cost(t, resource) == float("inf"):
            continue
        if _badness(t, higher_is_better) < best:
            front.append(t.trial)
            best = _badness(t, higher_is_better)
    return front


def objective_key(trial: Trial, objective: str, higher_is_better: bool) -> tuple[float, ...]:
    """Sort key, lower is better: the objective first, then the metric, then bytes."""
    badness = _badness(trial, higher_is_better)
    if objective == "metric":
        return (badness, float(trial.size_bytes), float(trial.trial))
    return (_cost(trial, objective), badness, float(trial.size_bytes), float(trial.trial))


def choose(trials: Sequence[Trial], objective: str, higher_is_better: bool) -> Trial | None:
    """The trial of best objective among those that meet the budget (None if none does)."""
    feasible = [t for t in trials if t.meets_budget]
    if not feasible:
        return None
    return min(feasible, key=lambda t: objective_key(t, objective, higher_is_better))
