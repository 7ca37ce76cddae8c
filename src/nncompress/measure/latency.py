"""Wall-clock latency: warm-up, then repeated timed forward passes; median and spread reported."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from nncompress.tasks.task import call_model


@dataclass(frozen=True)
class LatencyStats:
    """Per-forward latency in milliseconds over ``runs`` timed passes at ``batch_size``."""

    batch_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    runs: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(
    model: nn.Module,
    inputs: Any,
    *,
    batch_size: int,
    warmup: int = 5,
    runs: int = 30,
    min_seconds: float = 0.0,
) -> LatencyStats:
    """Time ``model(inputs)`` in inference mode: ``warmup`` untimed calls, then ``runs`` timed.

    Keeps timing beyond ``runs`` until ``min_seconds`` have passed, so that very fast models
    still get a stable median.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    return _stats(_timed_runs(model, inputs, warmup, runs, min_seconds), batch_size)


def interleaved_latency(
    models: list[nn.Module],
    inputs: Any,
    *,
    batch_size: int,
    rounds: int = 5,
    warmup: int = 5,
    runs: int = 30,
    min_seconds: float = 0.0,
    max_seconds: float = math.inf,
) -> list[LatencyStats]:
    """Latency of several models timed in alternating rounds, pooled per model.

    Machine speed drifts over seconds (frequency, other tenants); timing models one after the
    other turns that drift into a false speed-up. Alternating ``rounds`` times spreads it evenly,
    so ratios between the returned figures are fair. Each round times ``runs / rounds`` passes
    (at least one) and ``min_seconds / rounds`` seconds per model; a model whose passes are so
    slow that a round would take over ``max_seconds / rounds`` times fewer (at least one), its
    first warm-up pass saying how slow (a large language model at a long context).
    """
    if runs < 1 or rounds < 1:
        raise ValueError(f"runs and rounds must be >= 1, got runs={runs}, rounds={rounds}")
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, model in enumerate(models):
            times[i] += _timed_runs(
                model, inputs, warmup, max(1, runs // rounds), min_seconds / rounds, max_seconds / rounds
            )
    return [_stats(t, batch_size) for t in times]


def _timed_runs(
    model: nn.Module, inputs: Any, warmup: int, runs: int, min_seconds: float, max_seconds: float = math.inf
) -> list[float]:
    """Milliseconds of each timed pass: ``warmup`` untimed, then at least ``runs`` and
    ``min_seconds`` (capped at ``100 * runs`` passes). When the first warm-up pass shows that
    ``warmup + runs`` passes would take over ``max_seconds``, it is the only warm-up and the
    timed passes are cut to what fits (at least one)."""
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            if warmup:
                t0 = time.perf_counter()
                call_model(model, inputs)
                first = time.perf_counter() - t0
                warmup -= 1
                if first * (warmup + runs) > max_seconds:
                    warmup, runs = 0, max(1, int(max_seconds / first))
            for _ in range(warmup):
                call_model(model, inputs)
            start = time.perf_counter()
            while len(times) < runs or (time.perf_counter() - start) < min_seconds:
                t0 = time.perf_counter()
                call_model(model, inputs)
                times.append((time.perf_counter() - t0) * 1e3)
                if len(times) >= 100 * runs:
                    break
    finally:
        model.train(was_training)
    return times


def _stats(times: list[float], batch_size: int) -> LatencyStats:
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return LatencyStats(
        batch_size=batch_size,
        median_ms=statistics.median(times),
        p10_ms=q[0],
        p90_ms=q[-1],
        mean_ms=statistics.fmean(times),
        std_ms=statistics.pstdev(times),
        runs=len(times),
        threads=torch.get_num_threads(),
    )
