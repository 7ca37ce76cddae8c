"""Distillation benchmark on the reference tasks: prints a table, writes benchmarks/results/distillation.json.

Rows (method names are stable; see shared DESIGN.md):
- fmnist-mlp, fmnist-lenet5, fmnist-resnet: a student of <= 25% of the teacher's parameters
  (``student_for``: the shape within the budget that keeps the most MACs -- every hidden width scaled
  by one factor, or the first channel groups kept whole and the rest scaled), trained for the same epochs
  and learning rate three ways, over several seeds (mean in ``result.metric``, per-seed values
  and spread in ``settings``):
  ``kd-<student>``: initialized from the teacher's most important channels, then KD (soft labels,
  T=4, kd_alpha=0.9); ``kd-random-init-<student>``: random init, KD; ``scratch-<student>``: random
  init, hard labels only (the same student trained from scratch)
- fmnist-vit ``kd-half-depth``: every other block of the teacher (DistilBERT-style init), KD;
  ``kd-half-depth-mlp64``: the same with each kept block's MLP hidden layer halved first
- recovery: channel-pruned ResNet (-80% MACs) and 3-bit QAT ResNet, each recovered with KD
  (``recovery-...-kd``) and with plain fine-tuning (``recovery-...-ft``) for the same steps

Usage: python benchmarks/distillation.py [--quick]
(NNCOMPRESS_BENCH_ONLY=fmnist-lenet5,vit reruns those parts -- a task's student rows, ``vit``,
``recovery`` -- and keeps the other rows of the saved JSON.)
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from typing import Any

from _common import RESULTS, contract_fields, parse_args, print_table, write_results
from torch import nn

import nncompress as nc
from nncompress.distill.students import shallower, student_for
from nncompress.measure.metric import evaluate
from nncompress.measure.report import add_latency

FAMILY = "distillation"
RECIPES = {  # epochs, lr (the same for every arm of a task)
    "fmnist-mlp": (8, 2e-3),
    "fmnist-lenet5": (8, 3e-3),
    "fmnist-resnet": (6, 3e-3),
}


def _train(model: nn.Module, task: nc.Task, step: nc.FineTune, teacher: nn.Module | None, seed: int) -> nn.Module:
    ctx = nc.StepContext(task=task, teacher=teacher, seed=seed)
    return step.apply(model, ctx)


def _row(
    task: nc.Task,
    method: str,
    teacher: nn.Module,
    teacher_report: nc.Report,
    models: list[nn.Module],
    metrics: list[float],
    settings: dict[str, Any],
    seconds: float,
) -> dict:
    """A contract row: the seed-0 model is measured and saved; ``result.metric`` is the seed mean."""
    artifact = RESULTS / "artifacts" / FAMILY / f"{task.name}--{method}.ncz"
    nc.save(models[0], artifact, metadata={"task": task.name, "method": method, "seed": 0})
    report = nc.measure(models[0], task, config=nc.MeasureConfig(latency=False), size_bytes=os.path.getsize(artifact))
    add_latency([teacher_report, report], [teacher, models[0]], task, nc.MeasureConfig())
    result = contract_fields(report)
    result["metric"] = {"name": task.metric_name, "value": statistics.fmean(metrics)}
    spread = {
        "seeds": list(range(len(metrics))),
        "metric_per_seed": metrics,
        "metric_std": statistics.pstdev(metrics) if len(metrics) > 1 else 0.0,
        "metric_min": min(metrics),
        "metric_max": max(metrics),
        "artifact_seed": 0,
        "artifact_metric": metrics[0],
    }
    return {
        "task": task.name,
        "method": method,
        "settings": {**settings, **spread},
        "baseline": contract_fields(teacher_report),
        "result": {
            **result,
            "artifact": str(artifact.relative_to(RESULTS.parent.parent)),
            "compress_seconds": round(seconds, 2),
        },
    }


def student_rows(task_name: str, seeds: tuple[int, ...], quick: bool) -> list[dict]:
    """kd / kd-random-init / scratch rows for the task's <= 25% student."""
    task = nc.tasks.get(task_name)
    teacher = task.baseline().eval()
    teacher_report = nc.measure(teacher, task, config=nc.MeasureConfig(latency=False))
    example = task.single_example()
    epochs, lr = RECIPES[task_name]
    epochs = 0.2 if quick else epochs
    kd = nc.Distill(epochs=epochs, lr=lr, kd_alpha=0.9, kd_temperature=4.0)
    ce = nc.FineTune(epochs=epochs, lr=lr)
    arms: dict[str, dict[str, Any]] = {
        name: {"models": [], "metrics": [], "seconds": 0.0} for name in ("kd", "kd-random-init", "scratch")
    }
    description = ""
    for seed in seeds:
        for arm, init, step, with_teacher in (
            ("kd", "teacher", kd, True),
            ("kd-random-init", "random", kd, True),
            ("scratch", "random", ce, False),
        ):
            t0 = time.perf_counter()
            student, description = student_for(teacher, 0.25, example_inputs=example, init=init, seed=seed)
            student = _train(student, task, step, teacher if with_teacher else None, seed)
            arms[arm]["seconds"] += time.perf_counter() - t0
            arms[arm]["models"].append(student.eval())
            arms[arm]["metrics"].append(evaluate(student, task.test, task.metric_fn))
    name = _student_tag(description)
    rows = []
    for arm, data in arms.items():
        settings = {
            "student": description,
            "epochs": epochs,
            "lr": lr,
            "loss": "0.9 * T^2 KL(T=4) + 0.1 CE" if arm.startswith("kd") else "CE",
            "init": "teacher channels (L1)" if arm == "kd" else "random",
        }
        rows.append(
            _row(
                task,
                f"{arm}-{name}",
                teacher,
                teacher_report,
                data["models"],
                data["metrics"],
                settings,
                data["seconds"] / len(seeds),
            )
        )
    return rows


def _student_tag(description: str) -> str:
    """A short method-name part for ``student_for``'s description: ``width0.25``, ``width0.20-2-whole``."""
    shape = description.split(":")[0]
    tag = "".join(p.replace("width ", "width") for p in shape.split(", ") if p.startswith("width "))
    whole = [p for p in shape.split(", ") if p.endswith(" whole")]
    if whole:
        tag += f"-{len(whole[0].replace(' and ', ', ').split(', '))}-whole"
    return tag or "student"


def half_depth_rows(quick: bool) -> list[dict]:
    """fmnist-vit: every other block of the teacher, then KD; and the same with each block's MLP
    hidden layer halved (its L1-strongest units kept), for more speed at batch 1."""
    task = nc.tasks.get("fmnist-vit")
    teacher = task.baseline().eval()
    teacher_report = nc.measure(teacher, task, config=nc.MeasureConfig(latency=False))
    step = nc.Distill(epochs=0.2 if quick else 6, lr=1e-3, kd_alpha=0.9, kd_temperature=4.0)
    rows = []
    for method, halve_mlp in (("kd-half-depth", False), ("kd-half-depth-mlp64", True)):
        t0 = time.perf_counter()
        student = shallower(teacher, "every_other")
        description = "blocks 0 and 2 of 4, teacher weights"
        if halve_mlp:
            others = tuple(
                n
                for n, m in student.named_modules()
                if isinstance(m, (nn.Linear, nn.Conv2d)) and not n.endswith("mlp.fc1")
            )
            student = _train(student, task, nc.ChannelPrune(sparsity=0.5, scope="layer", exclude=others), None, 0)
            description += "; MLP hidden 128 -> 64 (L1-strongest units)"
        student = _train(student, task, step, teacher, 0).eval()
        metric = evaluate(student, task.test, task.metric_fn)
        rows.append(
            _row(
                task,
                method,
                teacher,
                teacher_report,
                [student],
                [metric],
                {"student": description, "epochs": step.epochs, "lr": step.lr, "loss": "0.9 * T^2 KL(T=4) + 0.1 CE"},
                time.perf_counter() - t0,
            )
        )
    return rows


def recovery_rows(quick: bool) -> list[dict]:
    """The same compressed ResNet recovered with KD and with plain fine-tuning, same steps."""
    task = nc.tasks.get("fmnist-resnet")
    teacher = task.baseline().eval()
    teacher_report = nc.measure(teacher, task, config=nc.MeasureConfig(latency=False))
    epochs = 0.2 if quick else 3
    cases = {
        "prune80": (
            nc.ChannelPrune(macs_reduction=0.8, scope="global"),
            nc.Distill(epochs=epochs, lr=2e-3),
            nc.FineTune(epochs=epochs, lr=2e-3),
        ),
        "w3": (
            None,
            nc.QuantizationAwareTraining(bits=3, epochs=min(epochs, 1), lr=1e-4, distill=True),
            nc.QuantizationAwareTraining(bits=3, epochs=min(epochs, 1), lr=1e-4, distill=False),
        ),
    }
    rows = []
    for case, (compress, with_kd, plain) in cases.items():
        start = teacher if compress is None else _train(copy.deepcopy(teacher), task, compress, teacher, 0)
        for suffix, step in (("kd", with_kd), ("ft", plain)):
            t0 = time.perf_counter()
            model = _train(copy.deepcopy(start), task, step, teacher, 0).eval()
            metric = evaluate(model, task.test, task.metric_fn)
            rows.append(
                _row(
                    task,
                    f"recovery-{case}-{suffix}",
                    teacher,
                    teacher_report,
                    [model],
                    [metric],
                    {"compression": compress.describe() if compress else "qat 3-bit", "recovery": step.describe()},
                    time.perf_counter() - t0,
                )
            )
    return rows


PARTS = (*RECIPES, "vit", "recovery")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    only = [p for p in os.environ.get("NNCOMPRESS_BENCH_ONLY", "").split(",") if p]
    if bad := sorted(set(only) - set(PARTS)):
        raise SystemExit(f"NNCOMPRESS_BENCH_ONLY: unknown parts {bad}; accepted: {', '.join(PARTS)}")
    seeds = (0,) if args.quick else (0, 1, 2)
    parts = {name: (lambda name=name: student_rows(name, seeds, args.quick)) for name in RECIPES}
    parts["vit"] = lambda: half_depth_rows(args.quick)
    parts["recovery"] = lambda: recovery_rows(args.quick)
    fresh = {part: make() for part, make in parts.items() if not only or part in only}
    if only:  # rerun some parts, keep the other rows of the saved JSON in their place
        old = json.loads((RESULTS / f"{FAMILY}.json").read_text())
        kept = {part: [r for r in old if _part_of(r) == part] for part in PARTS}
        fresh = {part: fresh.get(part, kept[part]) for part in PARTS}
    rows = [r for part in PARTS for r in fresh[part]]
    print_table(rows)
    print(f"wrote {write_results(FAMILY, rows, args.out)}")


def _part_of(row: dict) -> str:
    """Which part of the benchmark made ``row`` (see PARTS)."""
    if row["method"].startswith("recovery-"):
        return "recovery"
    return "vit" if row["task"] == "fmnist-vit" else row["task"]


if __name__ == "__main__":
    main()
