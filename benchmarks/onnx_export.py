"""ONNX export of compressed reference models: file size, output error and ONNX Runtime latency.

Usage: python benchmarks/onnx_export.py [--quick] [--repeats N] [--rebuild] [--tasks T1,T2]

For fmnist-lenet5, fmnist-resnet and fmnist-mlp: the fp32 baseline, int8-static (QDQ; for
LeNet-5 also int8-dynamic, which leaves its two small convs fp32), a
structurally pruned and a low-rank factorized model; for stdlib-gpt: 4-bit weight-only models
(MatMulNBits). Each is exported with ``nncompress.export_onnx``, its test metric re-measured in
ONNX Runtime, and timed at batch 1 and 64 beside PyTorch fp32 and the ONNX Runtime fp32 export
(interleaved rounds, ``--repeats`` times, medians of the medians; at 1 and torch's thread count,
each model keeping its faster; sessions do not spin). Models come from the other benchmarks'
artifacts where they exist, else are built here once (cached in results/artifacts/onnx/).
Writes benchmarks/results/onnx.json: the DESIGN.md row contract plus an ``onnx`` object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, contract_fields, write_results  # noqa: E402

import nncompress as nc  # noqa: E402
from nncompress.io.onnx_export import export_onnx  # noqa: E402
from nncompress.measure.latency import interleaved_latency  # noqa: E402
from nncompress.measure.metric import evaluate  # noqa: E402
from nncompress.measure.onnx_latency import OrtModule  # noqa: E402
from nncompress.tasks.task import repeat_batch  # noqa: E402

FAMILY = "onnx"
ARTIFACTS = RESULTS / "artifacts"
LARGE = 64
SIZES = ("batch_1", f"batch_{LARGE}")


@dataclass(frozen=True)
class Variant:
    """One compressed model: an existing artifact, or a recipe built (once) into ``artifacts/onnx``."""

    method: str
    artifact: str  # relative to results/artifacts
    recipe: tuple[nc.Step, ...] = ()


def variants(task: str, quick: bool) -> list[Variant]:
    ft = nc.FineTune(epochs=1)
    table = {
        "fmnist-lenet5": [
            Variant("int8-static", "quantization/fmnist-lenet5--int8-static.ncz"),
            Variant("int8-dynamic", "onnx/fmnist-lenet5--int8-dynamic.ncz", (nc.DynamicInt8Quantize(),)),
            Variant("channel-50-ft1", "onnx/fmnist-lenet5--channel-50-ft1.ncz", (nc.ChannelPrune(sparsity=0.5), ft)),
            Variant(
                "svd-params50-ft1", "onnx/fmnist-lenet5--svd-params50-ft1.ncz", (nc.SVDFactorize(rank="params:0.5"), ft)
            ),
        ],
        "fmnist-resnet": [
            Variant("int8-static", "quantization/fmnist-resnet--int8-static.ncz"),
            Variant("channel-global-macs80", "pruning/fmnist-resnet--channel-global-macs80.ncz"),
            Variant("tucker-macs50-kd", "lowrank/fmnist-resnet--tucker-macs50-kd.ncz"),
        ],
        "fmnist-mlp": [
            Variant("int8-static", "onnx/fmnist-mlp--int8-static.ncz", (nc.StaticInt8Quantize(),)),
            Variant("channel-50-ft1", "onnx/fmnist-mlp--channel-50-ft1.ncz", (nc.ChannelPrune(sparsity=0.5), ft)),
            Variant("svd-params50-kd", "lowrank/fmnist-mlp--svd-params50-kd.ncz"),
        ],
        "stdlib-gpt": [
            Variant("rtn-w4", "llm/stdlib-gpt--rtn-w4.ncz"),
            Variant("gptq-w4", "llm/stdlib-gpt--gptq-w4.ncz"),
            Variant("awq-w4", "llm/stdlib-gpt--awq-w4.ncz"),
            Variant("hqq-w4", "llm/stdlib-gpt--hqq-w4.ncz"),
        ],
    }
    rows = table[task]
    return rows[:2] if quick else rows


def load_variant(task: nc.Task, v: Variant, rebuild: bool) -> tuple[nn.Module, Path]:
    path = ARTIFACTS / v.artifact
    if v.recipe and (rebuild or not path.exists()):
        model = nc.compress(task.baseline(), list(v.recipe), task, seed=0).model
        nc.save(model, path, metadata={"task": task.name, "method": v.method})
    if not path.exists():
        raise SystemExit(f"{path} is missing: run the benchmark that writes it first")
    return nc.load(path), path


def _median_stats(runs: list[list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Per model: the median over repeats of each repeat's median (and the spread of those)."""
    out = []
    for per_model in zip(*runs):
        medians = [s["median_ms"] for s in per_model]
        out.append(
            {
                "median_ms": statistics.median(medians),
                "repeat_medians_ms": [round(m, 4) for m in medians],
                "threads": per_model[0]["threads"],
            }
        )
    return out


def time_models(models: dict[str, Any], example: Any, repeats: int, gpt: bool) -> dict[str, dict[str, Any]]:
    """``{name: {"batch_1": stats, "batch_64": stats}}``: interleaved, at 1 and torch's threads (the
    faster kept per model), ``repeats`` times; ONNX entries are paths, rebuilt per thread count."""
    one = example[:1]
    counts = sorted({1, torch.get_num_threads()})
    previous = torch.get_num_threads()
    result: dict[str, dict[str, Any]] = {name: {} for name in models}
    try:
        for batch in (1, LARGE):
            inputs = repeat_batch(one, batch)
            runs, min_s = ((6, 0.0) if batch > 1 else (10, 0.3)) if gpt else ((15, 0.3) if batch > 1 else (60, 0.5))
            best: dict[str, dict[str, Any]] = {}
            for threads in counts:
                torch.set_num_threads(threads)
                live = [OrtModule(m, threads=threads) if isinstance(m, Path) else m for m in models.values()]
                repeated = [
                    [
                        s.to_dict()
                        for s in interleaved_latency(
                            live, inputs, batch_size=batch, runs=runs, min_seconds=min_s, rounds=5
                        )
                    ]
                    for _ in range(repeats)
                ]
                for name, stats in zip(models, _median_stats(repeated)):
                    if name not in best or stats["median_ms"] < best[name]["median_ms"]:
                        best[name] = stats
            for name in models:
                result[name][f"batch_{batch}"] = best[name]
    finally:
        torch.set_num_threads(previous)
    return result


def _ms(timing: dict[str, Any], key: str) -> float:
    return timing[key]["median_ms"]


def run_task(task_name: str, quick: bool, repeats: int, rebuild: bool, tmp: Path) -> list[dict[str, Any]]:
    task = nc.tasks.get(task_name)
    gpt = task_name == "stdlib-gpt"
    baseline = task.baseline().eval()
    example = task.inputs_example()
    check_inputs = example[:8]
    no_latency = nc.MeasureConfig(latency=False)
    base_report = nc.measure(baseline, task, config=no_latency)
    exports, models, loaded, seconds = {}, {"pytorch fp32": baseline}, {}, {}
    exports["fp32"] = export_onnx(baseline, tmp / f"{task_name}-fp32.onnx", check_inputs, overwrite=True)
    models["onnx fp32"] = Path(exports["fp32"].path)
    for v in variants(task_name, quick):
        model, path = load_variant(task, v, rebuild)
        loaded[v.method] = (model, path)
        t0 = time.perf_counter()
        exports[v.method] = export_onnx(model, tmp / f"{task_name}-{v.method}.onnx", check_inputs, overwrite=True)
        seconds[v.method] = time.perf_counter() - t0
        models[f"onnx {v.method}"] = Path(exports[v.method].path)
        models[f"pytorch {v.method}"] = model
    timing = time_models(models, example, repeats, gpt)
    fp32_metric = evaluate(OrtModule(exports["fp32"].path, threads=1), task.test, task.metric_fn)
    baseline_fields = contract_fields(base_report)
    baseline_fields.update(latency_ms=_ms(timing["pytorch fp32"], "batch_1"), latency=timing["pytorch fp32"])
    rows = []
    for method, (model, path) in loaded.items():
        exp = exports[method]
        report = nc.measure(model, task, config=no_latency, size_bytes=os.path.getsize(path))
        fields = contract_fields(report)
        fields.update(
            latency_ms=_ms(timing[f"pytorch {method}"], "batch_1"),
            latency=timing[f"pytorch {method}"],
            artifact=str(path.relative_to(RESULTS.parent.parent)),
        )
        onnx_metric = evaluate(OrtModule(exp.path, threads=1), task.test, task.metric_fn)
        mine, fp32, torch_fp32 = timing[f"onnx {method}"], timing["onnx fp32"], timing["pytorch fp32"]
        counts: dict[str, int] = {}
        for label in exp.layers.values():
            counts[label] = counts.get(label, 0) + 1
        rows.append(
            {
                "task": task_name,
                "method": f"onnx-{method}",
                "settings": {
                    "source_artifact": fields["artifact"],
                    "opset": exp.opset,
                    "exporter": "torchscript",
                    "check_batch": len(check_inputs),
                    "timing_repeats": repeats,
                    "batch_large": LARGE,
                    "ort_spinning": False,
                },
                "baseline": baseline_fields,
                "result": fields,
                "onnx": {
                    "bytes": exp.bytes,
                    "fp32_bytes": exports["fp32"].bytes,
                    "max_abs_error": exp.max_abs_error,
                    "max_abs_output": exp.max_abs_output,
                    "metric": {
                        "name": task.metric_name,
                        "value": onnx_metric,
                        "pytorch": report.metric["value"],
                        "onnx_fp32": fp32_metric,
                    },
                    "layer_formats": counts,
                    "notes": exp.notes,
                    "export_seconds": round(seconds[method], 2),
                    "latency_ms": {
                        k: {
                            "onnx": _ms(mine, k),
                            "onnx_fp32": _ms(fp32, k),
                            "pytorch_fp32": _ms(torch_fp32, k),
                            "pytorch": _ms(timing[f"pytorch {method}"], k),
                        }
                        for k in SIZES
                    },
                    "speedup_vs_pytorch_fp32": {k: round(_ms(torch_fp32, k) / _ms(mine, k), 3) for k in SIZES},
                    "speedup_vs_onnx_fp32": {k: round(_ms(fp32, k) / _ms(mine, k), 3) for k in SIZES},
                    "latency": {"onnx": mine, "onnx_fp32": fp32},
                },
            }
        )
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = [
        "task",
        "method",
        "metric (ort)",
        "onnx KB",
        "vs fp32",
        "max err",
        "b1 ort ms",
        "b1 ort fp32",
        "b1 pt fp32",
        f"b{LARGE} ort",
        f"b{LARGE} ort fp32",
        f"b{LARGE} pt fp32",
    ]
    lines = [header]
    for r in rows:
        o = r["onnx"]
        lat = o["latency_ms"]
        lines.append(
            [
                r["task"],
                r["method"],
                f"{o['metric']['value']:.4f}",
                f"{o['bytes'] / 1024:.1f}",
                f"{o['bytes'] / o['fp32_bytes']:.2f}",
                f"{o['max_abs_error']:.2g}",
                *(
                    f"{lat[k][m]:.3f}"
                    for k in ("batch_1", f"batch_{LARGE}")
                    for m in ("onnx", "onnx_fp32", "pytorch_fp32")
                ),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fmnist-lenet5 only, two variants, one repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing runs per batch size (median)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the models this benchmark makes")
    parser.add_argument(
        "--tasks",
        default="fmnist-lenet5,fmnist-resnet,fmnist-mlp,stdlib-gpt",
        help="tasks to run; with the default --out, other tasks' rows stay as they were",
    )
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/onnx.json)")
    args = parser.parse_args()
    tasks = ["fmnist-lenet5"] if args.quick else [t for t in args.tasks.split(",") if t]
    repeats = 1 if args.quick else args.repeats
    if repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {repeats}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in tasks:
            rows += run_task(name, args.quick, repeats, args.rebuild, Path(tmp))
            print(f"{name}: done", file=sys.stderr, flush=True)
    print_rows(rows)
    previous = RESULTS / f"{FAMILY}.json"
    if args.out is None and not args.quick and previous.exists():  # a rerun of some tasks keeps the rest
        rows = [r for r in json.loads(previous.read_text()) if r["task"] not in tasks] + rows
        order = {t: i for i, t in enumerate(parser.get_default("tasks").split(","))}
        rows.sort(key=lambda r: order.get(r["task"], len(order)))  # stable: a task's rows keep their order
    print(f"wrote {write_results(FAMILY, rows, args.out)}")


if __name__ == "__main__":
    main()
