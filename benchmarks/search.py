"""Search benchmark: automatic per-layer compression against the best single technique, same budget.

On fmnist-resnet with a budget of 1 point of accuracy (``max_drop=0.01``, on the val split),
objective size (artifact bytes):
- ``uniform-prune-*``: global magnitude pruning, the highest sparsity of a grid meeting the budget on val
- ``uniform-quant-*``: weight-only quantization of every searchable layer (per channel, MSE ranges;
  the first conv and classifier float, as the search keeps them), the fewest bits meeting it
- ``uniform-lowrank-*``: Tucker-2 (3x3 convs) and spatial SVD (1x1 convs) at one parameter
  fraction for every layer, the smallest meeting it
- ``search-size-drop1``: ``nncompress.search`` (sensitivity, knapsack allocation, refinement)
No fine-tuning anywhere. Every row is then measured on the test split; ``settings.val_metric``
is what the choice was made on.

Usage: python benchmarks/search.py [--quick] [--workers N]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, contract_fields, print_table, run_recipe, write_results

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.measure.metric import evaluate
from nncompress.search import Budget, SearchConfig, SearchSpace, search
from nncompress.search.allocate import drop_of
from nncompress.search.space import search_layers

FAMILY = "search"
TASK = "fmnist-resnet"
MAX_DROP = 0.01


def _val_metric(task: nc.Task, model, recipe: list[nc.Step]) -> float:
    work = copy.deepcopy(model)
    ctx = StepContext(task=task, teacher=model, seed=0)
    for step in recipe:
        work = step.apply(work, ctx)
    return evaluate(work, task.val, task.metric_fn)


def _uniform(
    task: nc.Task, model, base_val: float, grid: list[tuple[str, list[nc.Step]]]
) -> tuple[str, list, float] | None:
    """The last (strongest) setting of ``grid`` meeting the budget on val, with its val metric
    (None when none does)."""
    best = None
    for method, recipe in grid:
        val = _val_metric(task, model, recipe)
        print(f"  {method}: val {val:.4f} (drop {drop_of(val, base_val, True):+.4f})", flush=True)
        if drop_of(val, base_val, True) <= MAX_DROP:
            best = (method, recipe, val)
    return best


def grids(model, quick: bool) -> dict[str, list[tuple[str, list[nc.Step]]]]:
    layers = [n for n in search_layers(model)]
    bits = [
        (f"uniform-quant-w{b}", [nc.WeightQuantize(bits=b, method="mse", granularity="channel")])
        for b in ((8, 4, 3) if quick else (8, 6, 5, 4, 3, 2))
    ]
    prune = [
        (f"uniform-prune-{int(s * 100)}", [nc.MagnitudePrune(sparsity=s, scope="global")])
        for s in ((0.3, 0.4) if quick else (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
    ]
    convs = tuple(n for n in layers if model.get_submodule(n).kernel_size != (1, 1))
    pointwise = tuple(n for n in layers if model.get_submodule(n).kernel_size == (1, 1))
    lowrank = [
        (
            f"uniform-lowrank-params{int(f * 100)}",
            [
                nc.TuckerFactorize(rank=f"params:{f}", layers=convs),
                nc.SpatialSVDFactorize(rank=f"params:{f}", layers=pointwise),
            ],
        )
        for f in ((0.9,) if quick else (0.95, 0.9, 0.75, 0.6, 0.5))
    ]
    return {"prune": prune, "quantize": bits, "lowrank": lowrank}


def search_row(task: nc.Task, quick: bool, workers: int) -> dict[str, Any]:
    space = SearchSpace(techniques=("quantize",), bits=(8, 4, 3)) if quick else SearchSpace()
    config = SearchConfig(trials=6 if quick else 40, workers=workers, space=space)
    method = "search-size-drop1"
    with tempfile.TemporaryDirectory(prefix="nncompress-bench-search-") as tmp:
        t0 = time.perf_counter()
        result = search(
            TASK,
            Budget(max_drop=MAX_DROP),
            Path(tmp) / "run",
            objective="size",
            config=config,
            progress=lambda line: print("  " + line, flush=True),
        )
        seconds = time.perf_counter() - t0
        artifact = RESULTS / "artifacts" / FAMILY / f"{TASK}--{method}.ncz"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "run" / "model.ncz", artifact)
        trials = [json.loads(line) for line in (Path(tmp) / "run" / "trials.jsonl").read_text().splitlines()]
    rep = result.report
    s = result.summary
    return {
        "task": TASK,
        "method": method,
        "settings": {
            "budget": s["budget"],
            "objective": "size",
            "trials": s["trials"],
            "workers": workers,
            "space": s["space"],
            "chosen": s["chosen"],
            "params": s["params"],
            "recipe": rep.recipe,
            "val_metric": s["val_metric"],
            "baseline_val_metric": s["baseline_val_metric"],
            "test_drop": s["test_drop"],
            "meets_budget_on_test": s["meets_budget_on_test"],
            "pareto": s["pareto"],
            "search_seconds": round(seconds, 1),
            "trials_meeting_budget": sum(t["meets_budget"] for t in trials),
        },
        "baseline": contract_fields(rep.baseline),
        "result": {
            **contract_fields(rep.final),
            "artifact": str(artifact.relative_to(RESULTS.parent.parent)),
            "compress_seconds": round(seconds, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller set, for smoke tests")
    parser.add_argument("--workers", type=int, default=2, help="search worker processes (default 2)")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/search.json)")
    args = parser.parse_args()
    task = nc.tasks.get(TASK)
    model = task.baseline()
    base_val = evaluate(model, task.val, task.metric_fn)
    rows = []
    for technique, grid in grids(model, args.quick).items():
        print(f"{technique}: baseline val {base_val:.4f}", flush=True)
        found = _uniform(task, model, base_val, grid)
        if found is None:
            print(f"  {technique}: no setting of the grid meets the budget on val; no row", flush=True)
            continue
        method, recipe, val = found
        row = run_recipe(FAMILY, task, method, recipe)
        row["settings"].update(
            {
                "val_metric": val,
                "baseline_val_metric": base_val,
                "budget": {"max_drop": MAX_DROP},
                "selection": f"strongest setting of the grid meeting the budget on val ({technique})",
            }
        )
        rows.append(row)
    rows.append(search_row(task, args.quick, args.workers))
    path = write_results(FAMILY, rows, args.out)
    print_table(rows)
    best = min(rows[:-1], key=lambda r: r["result"]["size_bytes"])
    found = rows[-1]
    print(
        f"\nbest single technique: {best['method']} {best['result']['size_bytes']:,} bytes, "
        f"test {best['result']['metric']['value']:.4f}; search: {found['result']['size_bytes']:,} bytes "
        f"({found['result']['size_bytes'] / best['result']['size_bytes']:.1%} of it), "
        f"test {found['result']['metric']['value']:.4f} (drop {found['settings']['test_drop']:+.4f}, "
        f"{'meets' if found['settings']['meets_budget_on_test'] else 'MISSES'} the 1-point budget on test)"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
