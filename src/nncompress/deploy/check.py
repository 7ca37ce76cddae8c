"""Export a model to a target, then check it there: metric on the test split, max output error
against our model, file size, and latency beside ours and beside the target's own fp32 export.

Example:
    >>> result = deploy(nc.load("model.ncz"), "openvino", "out/model.xml", task)  # doctest: +SKIP
    >>> result.metric["export"], result.latency_ms["batch_1"]  # doctest: +SKIP
    (0.9281, {'ours': 0.09, 'export': 0.05, 'fp32_export': 0.07})
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.deploy.targets import Exported, Target, get_target


@dataclass(frozen=True, kw_only=True)
class CheckConfig:
    """How an export is checked.

    Attributes:
        metric: evaluate ours and the export on the test split (``max_batches`` of it, None: all).
        fp32: also export ``fp32_model`` (the task's baseline by default) to the same target, to
            time and size our compression against the runtime's own fp32.
        batch_large: the second batch size timed (batch 1 is always timed); 0 skips timing.
        runs, rounds: timed passes per model and interleaved rounds (see ``interleaved_latency``).
    """

    metric: bool = True
    max_batches: int | None = None
    fp32: bool = True
    batch_large: int = 64
    runs: int = 30
    rounds: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.batch_large, bool) or not isinstance(self.batch_large, int) or self.batch_large < 0:
            raise ValueError(f"batch_large must be an integer >= 0 (0: no timing), got {self.batch_large!r}")
        if self.runs < 1 or self.rounds < 1:
            raise ValueError(f"runs and rounds must be >= 1, got runs={self.runs}, rounds={self.rounds}")


@dataclass
class DeployResult:
    """An export and how it ran in its runtime (``to_dict()`` is report.json's ``export`` entry).

    Attributes:
        target, path, bytes: where it went and its size on disk (every file it needs).
        fp32_bytes: size of the target's own export of the fp32 model (None: not made).
        metric: ``{"name", "ours", "export", "fp32_export"}`` on the test split (None where not run).
        max_abs_error, max_abs_output: max |export - ours| over the first test batch's outputs, and
            max |ours| (the scale to read it against).
        latency_ms: ``{"batch_1": {"ours", "export", "fp32_export"}, "batch_N": {...}}`` medians,
            interleaved in one process.
        layers: weighted layer -> its form in the target; notes: layers kept in a nearer form, fallbacks.
        export_seconds: time the export took.
        runner: the export as a module running in its runtime (left out of ``to_dict``).
    """

    target: str
    path: str
    bytes: int
    fp32_bytes: int | None = None
    metric: dict[str, Any] = field(default_factory=dict)
    max_abs_error: float | None = None
    max_abs_output: float | None = None
    latency_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    export_seconds: float = 0.0
    runner: nn.Module | None = field(default=None, repr=False, compare=False)  # the export, runnable; not saved

    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, runner=None))
        out.pop("runner")
        return out


def _flat(out: Any) -> list[torch.Tensor]:
    from nncompress.tasks.outputs import primary_output

    if isinstance(out, (tuple, list)):
        return [o.detach().float() for o in out if isinstance(o, torch.Tensor)]
    return [primary_output(out).detach().float()]


def _max_error(model: nn.Module, runner: nn.Module, inputs: Any) -> tuple[float, float]:
    """(max |runner - model|, max |model|) over every output on ``inputs``."""
    from nncompress.tasks.task import call_model

    with torch.inference_mode():
        ours, theirs = _flat(call_model(model, inputs)), _flat(call_model(runner, inputs))
    if len(ours) != len(theirs):
        raise ValueError(f"the export returns {len(theirs)} outputs, the model {len(ours)}")
    error = max((float((t.reshape(o.shape) - o).abs().max()) for o, t in zip(ours, theirs) if o.numel()), default=0.0)
    return error, max(float(o.abs().max()) for o in ours if o.numel())


def _batch_size(inputs: Any) -> int:
    first = (
        inputs
        if isinstance(inputs, torch.Tensor)
        else next(iter(inputs.values() if isinstance(inputs, dict) else inputs))
    )
    return int(first.shape[0])


def _timings(models: dict[str, nn.Module], task: Any, config: CheckConfig) -> dict[str, dict[str, float | None]]:
    from nncompress.measure.latency import interleaved_latency
    from nncompress.tasks.task import repeat_batch

    one = task.single_example()
    out: dict[str, dict[str, float | None]] = {}
    for batch in sorted({1, config.batch_large}):
        inputs = repeat_batch(one, batch)
        stats = interleaved_latency(
            list(models.values()), inputs, batch_size=batch, runs=config.runs, rounds=config.rounds, warmup=3
        )
        out[f"batch_{batch}"] = {name: round(s.median_ms, 4) for name, s in zip(models, stats)}
    return out


def deploy(
    model: nn.Module,
    target: str | Target,
    path: str | os.PathLike,
    task: Any,
    *,
    config: CheckConfig | None = None,
    fp32_model: nn.Module | None = None,
) -> DeployResult:
    """Export ``model`` to ``target`` at ``path`` and check the export in its runtime on ``task``.

    Args:
        model: what nncompress produced (``nc.load`` of an artifact).
        target: a target name (``onnx``, ``openvino``, ``executorch``, ``litert``, ``gguf``) or a :class:`Target`.
        path: the file to write (its suffix is the target's where it needs one).
        task: the task (test split, metric, example inputs).
        config: what to check (default :class:`CheckConfig`).
        fp32_model: the uncompressed model exported beside ours (default ``task.baseline()``).

    Raises:
        ValueError: unknown target, its runtime not installed (says what to install), or a model
            the target cannot take (naming the layer).
    """
    config = config or CheckConfig()
    chosen = get_target(target) if isinstance(target, str) else target
    example = task.inputs_example()
    max_batch = max(_batch_size(example), config.batch_large, 1)
    model.eval()
    t0 = time.perf_counter()
    exported = chosen.export(model, path, example, max_batch=max_batch)
    seconds = time.perf_counter() - t0
    result = DeployResult(chosen.name, exported.path, exported.bytes, layers=exported.layers, notes=exported.notes)
    result.export_seconds = round(seconds, 2)
    runner = result.runner = exported.runner
    if runner is None:
        result.notes.append(f"{chosen.name}'s runtime is not installed here: the export was not run")
        return result
    result.max_abs_error, result.max_abs_output = _max_error(model, runner, example)
    with tempfile.TemporaryDirectory() as tmp:
        fp32: Exported | None = None
        if config.fp32:
            reference = fp32_model if fp32_model is not None else task.baseline()
            fp32 = chosen.export(reference.eval(), Path(tmp) / f"fp32{chosen.suffix}", example, max_batch=max_batch)
            result.fp32_bytes = fp32.bytes
        result.metric = {"name": task.metric_name, "ours": None, "export": None, "fp32_export": None}
        if config.metric:
            from nncompress.measure.metric import evaluate

            result.metric["ours"] = evaluate(model, task.test, task.metric_fn, max_batches=config.max_batches)
            result.metric["export"] = evaluate(runner, task.test, task.metric_fn, max_batches=config.max_batches)
            if fp32 is not None and fp32.runner is not None:
                result.metric["fp32_export"] = evaluate(
                    fp32.runner, task.test, task.metric_fn, max_batches=config.max_batches
                )
        if config.batch_large:
            models = {"ours": model, "export": runner}
            if fp32 is not None and fp32.runner is not None:
                models["fp32_export"] = fp32.runner
            result.latency_ms = _timings(models, task, config)
    return result


def summary(result: DeployResult) -> str:
    """A short table for the CLI: size, metric, error and latency of ours, the export and the target's fp32."""
    m = result.metric
    lines = [
        f"wrote {result.path} ({result.bytes:,} bytes; {result.target}'s fp32 export: {_num(result.fp32_bytes)} bytes)"
    ]
    if result.max_abs_error is not None:
        lines.append(f"max |export - ours| = {result.max_abs_error:.3g} (outputs up to {result.max_abs_output:.3g})")
    header = f"{'':12} {'ours':>10} {'export':>10} {'fp32 export':>12}"
    rows = [header]
    if m.get("export") is not None:
        rows.append(
            f"{m['name']:12} {_num(m['ours'], 4):>10} {_num(m['export'], 4):>10} {_num(m['fp32_export'], 4):>12}"
        )
    for key, t in result.latency_ms.items():
        label = key.replace("batch_", "ms @ batch ")
        ours, theirs, fp32 = (_num(t.get(k), 3) for k in ("ours", "export", "fp32_export"))
        rows.append(f"{label:12} {ours:>10} {theirs:>10} {fp32:>12}")
    if len(rows) > 1:
        lines += rows
    counts: dict[str, int] = {}
    for label in result.layers.values():
        counts[label] = counts.get(label, 0) + 1
    if counts:
        lines.append(
            "layers: " + "; ".join(f"{n} x {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        )
    return "\n".join(lines + [f"note: {n}" for n in result.notes])


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if digits else f"{value:,}"
