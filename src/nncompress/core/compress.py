"""compress(): run a recipe on a model and a task, measuring before, after each step, and at the end.

Each state is measured once: the baseline (cached for the same weights and task, so a benchmark
running many recipes on one model evaluates it once), each step but the last (test metric and a
trial save for its size), and the final model, whose figures are also the last step's. On a
135M-parameter LM each test evaluation is a minute or more and each save several seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import platform
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.base.canonical import canonicalize
from nncompress.base.conv_as_linear import apply_step
from nncompress.core.recipe import check_order, describe_recipe
from nncompress.core.step import Step, StepContext
from nncompress.measure.metric import ModelCallError, evaluate
from nncompress.measure.report import MeasureConfig, Report, add_latency, measure
from nncompress.measure.size import artifact_bytes, count_nonzero, count_params
from nncompress.measure.warnings import speed_warnings
from nncompress.tasks.task import Task, call_model


@dataclass
class StepRecord:
    """One step as it ran: its settings, seconds taken, and the model's figures right after it."""

    kind: str
    settings: dict[str, Any]
    seconds: float
    metric: float
    params: int
    nonzero_params: int
    size_bytes: int
    notes: list[str] = field(default_factory=list)


@dataclass
class CompressionReport:
    """report.json: task, ``baseline`` and ``final`` reports, the steps that ran, provenance."""

    task: str
    baseline: Report
    final: Report
    steps: list[StepRecord]
    recipe: list[dict[str, Any]]
    seed: int
    versions: dict[str, str]
    seconds: float

    @property
    def warnings(self) -> list[str]:
        """Speed warnings: the compressed model timed slower than its baseline (``measure.warnings``)."""
        return speed_warnings(self.baseline.to_dict(), self.final.to_dict())

    def to_dict(self) -> dict[str, Any]:
        baseline, final = self.baseline.to_dict(), self.final.to_dict()
        return {
            "task": self.task,
            "baseline": baseline,
            "final": final,
            "warnings": speed_warnings(baseline, final),
            "steps": [asdict(s) for s in self.steps],
            "recipe": self.recipe,
            "seed": self.seed,
            "versions": self.versions,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionReport:
        return cls(
            task=data["task"],
            baseline=Report.from_dict(data["baseline"]),
            final=Report.from_dict(data["final"]),
            steps=[StepRecord(**s) for s in data.get("steps", [])],
            recipe=data.get("recipe", []),
            seed=data.get("seed", 0),
            versions=data.get("versions", {}),
            seconds=data.get("seconds", 0.0),
        )


@dataclass
class Result:
    """What compress() returns: the compressed model and its report."""

    model: nn.Module
    report: CompressionReport


def versions() -> dict[str, str]:
    """Library and platform versions, recorded so that any result can be rerun exactly."""
    from nncompress import __version__

    return {
        "nncompress": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def check_runs(model: nn.Module, task: Task) -> None:
    """Fail early, with a clear message, when the model cannot run on the task's inputs."""
    model.eval()
    try:
        with torch.inference_mode():
            call_model(model, task.single_example())
    except Exception as e:
        raise ModelCallError(
            f"the model's forward failed on task {task.name!r}'s example inputs: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e


BASELINE_CACHE_SIZE = 4  # baseline reports kept (each a few KB); a model's weights are hashed to find one
_BASELINES: OrderedDict[tuple[Any, ...], Report] = OrderedDict()


def model_fingerprint(model: nn.Module) -> str | None:
    """A digest of everything that decides the model's outputs: its module tree's repr, its Hugging
    Face config (when it has one) and every parameter's and buffer's name, dtype, shape and bytes;
    None for a model it cannot hash (quantized or non-CPU tensors), which is then never cached."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model}".encode())
    digest.update(repr(getattr(model, "config", None)).encode())
    try:
        for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
            t = t.detach()
            if t.is_quantized or t.device.type != "cpu" or t.layout != torch.strided:
                return None
            digest.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.numel():
                digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    except (RuntimeError, TypeError, ValueError):
        return None
    return digest.hexdigest()


def measure_baseline(model: nn.Module, task: Task, config: MeasureConfig) -> Report:
    """``measure(model, task)``, reused when the same weights were measured on the same task object
    with the same settings earlier in this process (a copy is returned: callers may amend it)."""
    fingerprint = model_fingerprint(model)
    key = (id(task), task.name, id(task.test), repr(config), fingerprint)
    if fingerprint is not None and key in _BASELINES:
        _BASELINES.move_to_end(key)
        return copy.deepcopy(_BASELINES[key])
    report = measure(model, task, config=config)
    if fingerprint is not None:
        _BASELINES[key] = copy.deepcopy(report)
        while len(_BASELINES) > BASELINE_CACHE_SIZE:
            _BASELINES.popitem(last=False)
    return report


def compress(
    model: nn.Module,
    recipe: Sequence[Step],
    task: Task,
    *,
    seed: int = 0,
    measure_config: MeasureConfig | None = None,
    copy_model: bool = True,
) -> Result:
    """Run ``recipe`` on ``model`` for ``task`` and report what each step cost and gained.

    The input model is left untouched (a copy is compressed) unless ``copy_model=False``. The
    baseline's report is reused when the same weights were measured on the same ``task`` object
    before in this process (``measure_baseline``); the last step's figures are the final report's.

    Example:
        >>> result = nncompress.compress(model, [nc.MagnitudePrune(sparsity=0.9)], task)  # doctest: +SKIP
    """
    if not recipe:
        raise ValueError("the recipe is empty: give at least one step (see `nncompress steps`)")
    for step in recipe:
        if not isinstance(step, Step):
            raise TypeError(f"recipe items must be Step instances, got {type(step).__name__}")
    check_order(recipe)
    start = time.perf_counter()
    check_runs(model, task)
    config = measure_config or MeasureConfig()
    untimed = dataclasses.replace(config, latency=False)  # timed at the end, side by side
    baseline = measure_baseline(model, task, untimed)
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    # foreign layers (HF Conv1D, nn.MultiheadAttention) as plain nn.Linear, same outputs; first step's notes
    canonical = canonicalize(copy.deepcopy(model) if copy_model else model)
    work, ctx = canonical.model, StepContext(task=task, teacher=teacher, seed=seed, log=canonical.log_lines())
    records: list[StepRecord] = []
    last: tuple[Step, float, list[str]] | None = None
    for index, step in enumerate(recipe):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        log_start = len(ctx.log) if index else 0
        work = apply_step(step, work, ctx)  # a Linear-only step sees convs as the matrices they multiply
        seconds = time.perf_counter() - t0
        if index == len(recipe) - 1:  # the final measurement below is this state's: not evaluated twice
            last = (step, seconds, ctx.log[log_start:])
            break
        records.append(
            StepRecord(
                kind=step.kind,
                settings=step.settings(),
                seconds=seconds,
                metric=evaluate(work, task.test, task.metric_fn),
                params=count_params(work),
                nonzero_params=count_nonzero(work),
                size_bytes=artifact_bytes(work),
                notes=ctx.log[log_start:],
            )
        )
    described = describe_recipe(recipe)
    final = measure(work, task, config=untimed, steps=described)
    assert last is not None
    step, seconds, notes = last
    records.append(
        StepRecord(
            kind=step.kind,
            settings=step.settings(),
            seconds=seconds,
            metric=final.metric["value"],
            params=final.params,
            nonzero_params=final.nonzero_params,
            size_bytes=final.size_bytes,
            notes=notes,
        )
    )
    if config.latency:
        add_latency([baseline, final], [teacher, work], task, config)
    report = CompressionReport(
        task=task.name,
        baseline=baseline,
        final=final,
        steps=records,
        recipe=described,
        seed=seed,
        versions=versions(),
        seconds=time.perf_counter() - start,
    )
    return Result(work.eval(), report)
