"""Report: every figure about one model on one task, measured, never assumed."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.base.checks import check_count
from nncompress.measure.energy import estimate_model_energy
from nncompress.measure.flops import count_macs_by_module
from nncompress.measure.latency import LatencyStats, interleaved_latency
from nncompress.measure.metric import evaluate
from nncompress.measure.size import artifact_bytes, count_nonzero, count_params, layer_stats
from nncompress.tasks.task import Task, repeat_batch

# The figures every report.json side and benchmark row carries (shared DESIGN.md contract).
CONTRACT_FIELDS = ("metric", "params", "nonzero_params", "size_bytes", "dense_fp32_bytes", "macs", "latency_ms")


@dataclass(frozen=True)
class MeasureConfig:
    """What to measure and how hard: latency repetitions and the larger batch size."""

    latency: bool = True
    batch_size_large: int = 64
    warmup: int = 5
    runs: int = 30
    min_seconds: float = 0.5
    rounds: int = 5  # alternating timing rounds (see measure.latency.interleaved_latency)
    max_seconds: float = 8.0  # per model, batch size and thread count: slow models time fewer passes
    max_tokens_large: int = 4096  # sequence models: the larger batch holds at most this many tokens
    thread_counts: tuple[int, ...] = ()  # () = 1 and torch's current count; each model keeps its fastest

    def __post_init__(self) -> None:
        bad = [t for t in self.thread_counts if isinstance(t, bool) or not isinstance(t, int) or t < 1]
        if bad:
            raise ValueError(f"thread_counts must be integers >= 1, got {list(self.thread_counts)}")
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds!r}")
        check_count("max_tokens_large", self.max_tokens_large)


@dataclass
class Report:
    """Measured figures of one model on one task (the ``baseline``/``final`` objects of report.json).

    ``latency_ms`` is the batch-1 median; ``latency`` holds medians and spreads for batch 1 and
    ``batch_size_large`` (and ``tokens_per_s`` for models of token sequences); ``energy`` is an
    estimate (see measure/energy.py), labelled so;
    ``layers`` is the per-layer table (shape, parameters, non-zeros, weight sparsity, storage
    format and bits; see ``measure.size.layer_stats``).
    """

    task: str
    metric: dict[str, Any]
    params: int
    nonzero_params: int
    size_bytes: int
    dense_fp32_bytes: int
    macs: int
    latency_ms: float | None
    latency: dict[str, Any] = field(default_factory=dict)
    energy: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def measure(
    model: nn.Module,
    task: Task,
    *,
    config: MeasureConfig | None = None,
    size_bytes: int | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> Report:
    """Measure ``model`` on ``task``: metric on the test split, counts, artifact bytes, MACs, latency.

    ``size_bytes`` may be given when the artifact was already written (its real file size);
    otherwise the model is saved to a temporary file and that file's size is taken.

    Example:
        >>> report = nncompress.measure(model, task)  # doctest: +SKIP
    """
    config = config or MeasureConfig()
    metric_value = evaluate(model, task.test, task.metric_fn)
    one = task.single_example()
    macs, per_module = count_macs_by_module(model, one)  # one counted pass for MACs and the energy estimate
    params, size = (
        count_params(model),
        size_bytes if size_bytes is not None else artifact_bytes(model),
    )
    energy = estimate_model_energy(model, one, total_macs=macs, per_module_macs=per_module).to_dict()
    report = Report(
        task=task.name,
        metric={"name": task.metric_name, "value": metric_value, "higher_is_better": task.higher_is_better},
        params=params,
        nonzero_params=count_nonzero(model),
        size_bytes=size,
        dense_fp32_bytes=4 * params,
        macs=macs,
        latency_ms=None,
        energy=energy,
        steps=list(steps or []),
        layers=layer_stats(model),
    )
    if config.latency:
        add_latency([report], [model], task, config)
    return report


def tokens_per_example(example: Any) -> int | None:
    """Tokens in one batch-1 example of a sequence model (the last dim of its integer token ids,
    the first tensor of a tuple or dict batch), or None for other inputs (images)."""
    x = example[0] if isinstance(example, (tuple, list)) and example else example
    x = next(iter(x.values()), None) if isinstance(x, dict) else x
    if isinstance(x, torch.Tensor) and x.ndim == 2 and not x.is_floating_point() and x.dtype != torch.bool:
        return int(x.shape[-1])
    return None


def add_latency(reports: list[Report], models: list[nn.Module], task: Task, config: MeasureConfig) -> None:
    """Time ``models`` at batch 1 and ``config.batch_size_large`` and write the figures into the
    matching ``reports``.

    Models are timed in alternating rounds, so that their ratios are fair. Each batch size is
    timed at every thread count in ``config.thread_counts`` (default: 1 and torch's current
    count) and each model keeps its fastest, with the thread count recorded: a deployment picks
    its threads, and at batch 1 small models are often faster on one thread than on several.
    """
    one = task.single_example()
    tokens = tokens_per_example(one)
    timing = {
        "rounds": config.rounds,
        "warmup": config.warmup,
        "min_seconds": config.min_seconds,
        "max_seconds": config.max_seconds,
    }
    counts = config.thread_counts or sorted({1, torch.get_num_threads()})
    large = config.batch_size_large
    if tokens is not None:  # a long context: the larger batch keeps to a token budget
        large = max(1, min(large, config.max_tokens_large // tokens))
    sizes = {"batch_1": (one, 1, config.runs)}
    if large > 1:
        sizes[f"batch_{large}"] = (repeat_batch(one, large), large, max(5, config.runs // 3))
    for report in reports:
        report.latency = {"models_interleaved": len(models), "thread_counts": list(counts)}
    previous = torch.get_num_threads()
    try:
        for key, (inputs, batch_size, runs) in sizes.items():
            best: list[LatencyStats | None] = [None] * len(models)
            for threads in counts:
                torch.set_num_threads(threads)
                stats = interleaved_latency(models, inputs, batch_size=batch_size, runs=runs, **timing)
                best = [s if b is None or s.median_ms < b.median_ms else b for b, s in zip(best, stats)]
            for report, stats in zip(reports, best, strict=True):
                report.latency[key] = stats.to_dict()
                if tokens is not None:  # sequence models: throughput in tokens (context x batch) per second
                    report.latency[key]["tokens_per_s"] = round(tokens * batch_size / (stats.median_ms / 1e3), 1)
    finally:
        torch.set_num_threads(previous)
    for report in reports:
        report.latency_ms = report.latency["batch_1"]["median_ms"]
        report.latency["threads"] = report.latency["batch_1"]["threads"]
