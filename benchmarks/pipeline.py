"""Pipeline benchmark: the shipped ``deep-compression`` recipe end to end; writes
benchmarks/results/pipeline.json and prints a table beside Han et al. 2016's MNIST figures.

Rows (method ``deep-compression``, the recipe as shipped in ``src/nncompress/recipes``):
- fmnist-mlp (LeNet-300-100) and fmnist-lenet5 (LeNet-5): gradual global magnitude pruning while
  training, k-means weight sharing with centroid fine-tuning, Huffman-coded storage.

Each row's ``settings`` also holds:
- ``breakdown``: the artifact's bytes by what they store (Huffman-coded codes, centroids, biases,
  everything else: manifest, skeleton, zip and safetensors headers);
- ``reloaded_metric``: the metric of the artifact loaded back (what ``nncompress evaluate`` gives);
- ``seed_metrics``: the test metric of the same recipe run with each seed in ``SEEDS`` (the row
  and its artifact are the first seed's);
- ``paper_mnist``: Han et al. 2016's Table 1 row for the same architecture **on MNIST**, a
  reference only: not measured here, and on an easier data set.

Usage: python benchmarks/pipeline.py [--quick]   (--quick: 60 optimizer steps per training run)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import zipfile
from typing import Any

from _common import RESULTS, parse_args, print_table, run_recipe, write_results

import nncompress as nc
from nncompress.core.recipe import load_recipe
from nncompress.measure.metric import evaluate

FAMILY = "pipeline"
TASKS = ("fmnist-mlp", "fmnist-lenet5")
RECIPE = "deep-compression"
SEEDS = (0, 1, 2)  # the recipe's spread over seeds (data order); the first seed's model is the row

# Han, Mao & Dally 2016, "Deep Compression", Table 1 (MNIST; top-1 error before -> after).
PAPER_MNIST = {
    "fmnist-mlp": {
        "model": "LeNet-300-100",
        "error_before": 0.0164,
        "error_after": 0.0158,
        "size_before_kb": 1070,
        "size_after_kb": 27,
        "x_smaller": 40,
    },
    "fmnist-lenet5": {
        "model": "LeNet-5",
        "error_before": 0.0080,
        "error_after": 0.0074,
        "size_before_kb": 1720,
        "size_after_kb": 44,
        "x_smaller": 39,
    },
}


def quick(step: nc.Step) -> nc.Step:
    """The step with each training run capped at 60 optimizer steps (smoke tests)."""
    names = {f.name for f in dataclasses.fields(step)}
    return dataclasses.replace(step, max_steps=60) if "max_steps" in names else step


def breakdown(path: str) -> dict[str, int]:
    """Bytes of the artifact by role: codes, centroids, biases, other tensors, container overhead."""
    out = {"codes": 0, "centroids": 0, "biases": 0, "other_tensors": 0}
    with zipfile.ZipFile(path) as zf:
        data = zf.read("tensors.safetensors")
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    for key, info in header.items():
        if key == "__metadata__":
            continue
        name = key.split("::")[0]
        size = info["data_offsets"][1] - info["data_offsets"][0]
        leaf = name.rsplit(".", 1)[-1]
        role = {"packed": "codes", "centroids": "centroids", "bias": "biases"}.get(leaf, "other_tensors")
        out[role] += size
    total = (RESULTS.parent.parent / path).stat().st_size
    out["overhead"] = total - sum(out.values())  # zip, manifest, skeleton, safetensors header; DEFLATE gains
    return out


def run(task_name: str, is_quick: bool, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    """The recipe on ``task_name`` with each seed; the row (and its artifact) is the first seed's, the
    others' test metrics go to ``settings.seed_metrics`` (the spread of one recipe over seeds)."""
    task = nc.tasks.get(task_name)
    recipe = load_recipe(RECIPE)
    if is_quick:
        recipe = [quick(s) for s in recipe]
    row = run_recipe(FAMILY, task, RECIPE, recipe, seed=seeds[0])
    others = [
        nc.compress(task.baseline(), recipe, task, seed=s, measure_config=nc.MeasureConfig(latency=False))
        for s in seeds[1:]
    ]
    seed_metrics = {
        str(seeds[0]): row["result"]["metric"]["value"],
        **{str(s): r.report.final.metric["value"] for s, r in zip(seeds[1:], others)},
    }
    artifact = row["result"]["artifact"]
    reloaded = evaluate(nc.load(RESULTS.parent.parent / artifact), task.test, task.metric_fn)
    row["settings"].update(
        breakdown=breakdown(artifact),
        reloaded_metric=reloaded,
        paper_mnist={**PAPER_MNIST[task_name], "note": "Han et al. 2016, Table 1, on MNIST: not measured here"},
        seed_metrics=seed_metrics,
        quick=is_quick,
    )
    return row


def print_paper(rows: list[dict[str, Any]]) -> None:
    """Our rows beside the paper's MNIST rows (a reference column, not a measurement)."""
    print("\nbeside Han et al. 2016 (their Table 1, on MNIST; not measured here):")
    lines = [["task", "ours x smaller", "ours Δ pts", "paper model (MNIST)", "paper x smaller", "paper Δ pts"]]
    for r in rows:
        b, res, paper = r["baseline"], r["result"], r["settings"]["paper_mnist"]
        lines.append(
            [
                r["task"],
                f"{res['dense_fp32_bytes'] / res['size_bytes']:.1f}",
                f"{(res['metric']['value'] - b['metric']['value']) * 100:+.2f}",
                paper["model"],
                f"{paper['x_smaller']}",
                f"{(paper['error_before'] - paper['error_after']) * 100:+.2f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    rows = [run(name, args.quick, SEEDS[:1] if args.quick else SEEDS) for name in TASKS]
    print_table(rows)
    print_paper(rows)
    for r in rows:
        settings = r["settings"]
        print(
            f"{r['task']}: {settings['breakdown']} bytes; reloaded metric {settings['reloaded_metric']:.4f}; "
            f"test metric by seed {settings['seed_metrics']}"
        )
    print(f"wrote {write_results(FAMILY, rows, args.out)}")


if __name__ == "__main__":
    sys.exit(main())
