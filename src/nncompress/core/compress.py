"""compress(): run a recipe on a model and a task, measuring before, after each step, and at the end."""

from __future__ import annotations

import copy
import dataclasses
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.base.canonical import canonicalize
from nncompress.core.recipe import check_order, describe_recipe
from nncompress.core.step import Step, StepContext
from nncompress.measure.metric import ModelCallError, evaluate
from nncompress.measure.report import MeasureConfig, Report, add_latency, measure
from nncompress.measure.size import artifact_bytes, count_nonzero, count_params
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "baseline": self.baseline.to_dict(),
            "final": self.final.to_dict(),
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

    The input model is left untouched (a copy is compressed) unless ``copy_model=False``.

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
    baseline = measure(model, task, config=untimed)
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    # foreign layers (HF Conv1D, nn.MultiheadAttention) as plain nn.Linear, same outputs; first step's notes
    canonical = canonicalize(copy.deepcopy(model) if copy_model else model)
    work, ctx = canonical.model, StepContext(task=task, teacher=teacher, seed=seed, log=canonical.log_lines())
    records = []
    for step in recipe:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        log_start = len(ctx.log) if records else 0
        work = step.apply(work, ctx)
        seconds = time.perf_counter() - t0
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
