"""Coverage: every step family, save/load and ONNX export over the foreign zoo (tests/foreign_zoo.py).

Each cell runs one step on one model nncompress did not write (random weights, small inputs) and
records ``pass``, ``partial`` (with the reason), ``fail`` (the error's first line), ``n/a`` (the
step has nothing to act on by design, e.g. head pruning without attention) or ``skipped`` (the
CPU budget: models over 3M parameters run channel pruning, save/load and ONNX export only, over
15M channel pruning only, without saving, so every torchvision classification model is still
pruned); plus the
output error against the fp32 model on the example batch, parameters and artifact bytes before
and after, seconds, and the step's notes. A step that raises nothing but changes nothing (same
outputs, parameters and file) is a ``fail``: a silent no-op. After every step the model is saved
and loaded again; a reload that fails or does not give the same outputs makes the cell partial,
as do a step whose notes say it fell back (e.g. ONNX Runtime int8 to torch.ao) and a quantizing
step whose file grew.

Writes ``benchmarks/results/coverage.json`` and ``benchmarks/results/coverage.md`` (a table for the
README) and prints the table.

Example:
    python benchmarks/coverage.py                       # the full matrix (~15 min on 2 cores)
    python benchmarks/coverage.py --quick               # a few models, every column
    python benchmarks/coverage.py --models hf- --steps channel-prune,onnx
    python benchmarks/coverage.py --models hf- --steps int8-dynamic --merge --why "ORT int8 by keyword"
                                                        # rerun those cells into the saved results
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import foreign_zoo as fz  # noqa: E402

import nncompress as nc  # noqa: E402
from nncompress.base.conv_as_linear import apply_step  # noqa: E402
from nncompress.core.step import StepContext  # noqa: E402
from nncompress.io.atomic import atomic_write_text  # noqa: E402
from nncompress.tasks.task import call_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# packages whose classes the zoo's artifacts name (transformers' Llama-family norms pickle hub
# `kernels` functions; the recurrent nets live in tests/foreign_zoo.py)
TRUST = ("transformers", "kernels", "timm", "torchvision", "foreign_zoo", "tests")
CELL_SECONDS = 120  # a cell that runs longer is stopped and fails
QUICK_MODELS = (
    "tv-mobilenet_v3_small",
    "tv-resnet18",
    "timm-efficientnet_b0",
    "hf-gpt2",
    "hf-llama",
    "hf-bert",
    "hf-t5",
    "rnn-lstm",
    "conv1d-net",
)

# column -> (step kind, settings): small settings, one or more per registered family
STEP_COLUMNS: dict[str, tuple[str, dict[str, Any]]] = {
    "magnitude-prune": ("magnitude-prune", {"sparsity": 0.5}),
    "channel-prune": ("channel-prune", {"sparsity": 0.5}),
    "head-prune": ("head-prune", {"sparsity": 0.5}),
    "nm-prune": ("nm-prune", {}),
    "wanda": ("wanda", {"sparsity": 0.5, "calibration_batches": 2}),
    "sparsegpt": ("sparsegpt", {"sparsity": 0.5, "calibration_batches": 2}),
    "finetune": ("finetune", {"epochs": 1.0}),
    "distill": ("distill", {"epochs": 1.0}),
    "weight-quantize": ("weight-quantize", {"bits": 4}),
    "fp16": ("fp16", {}),
    "int8-dynamic": ("int8-dynamic", {}),
    "int8-static": ("int8-static", {"calibration_batches": 2}),
    "kmeans-quantize": ("kmeans-quantize", {"max_steps": 1}),
    "gptq": ("gptq", {"group_size": 32}),
    "awq": ("awq", {"group_size": 32, "grid": 5}),
    "hqq": ("hqq", {"group_size": 32, "iters": 5}),
    "w8a8": ("w8a8", {"calibration_batches": 2}),
    "svd": ("svd", {"rank": 0.25, "convs": True}),  # 1x1 convs too: conv nets' only Linear is the kept classifier
    "tucker": ("tucker", {"rank": 0.5}),
}
IO_COLUMNS = ("save-load", "onnx")
NEEDS_TAG = {"head-prune": "attention", "tucker": "conv"}  # n/a without such layers
# The CPU budget (2 shared cores, ~15 min for the matrix): models up to FULL_PARAMS run every
# column; up to MEDIUM_PARAMS channel pruning, save/load and ONNX export; larger ones channel
# pruning only (every torchvision classification model must prune). --all lifts it.
FULL_PARAMS = 3_000_000
MEDIUM_PARAMS = 15_000_000
MEDIUM_COLUMNS = ("channel-prune", "save-load", "onnx")
BIG_COLUMNS = ("channel-prune",)


# --- one cell ------------------------------------------------------------------------------
@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the main thread after ``seconds`` (checked between Python bytecodes)."""

    def stop(_signum: int, _frame: Any) -> None:
        raise TimeoutError(f"stopped after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def outputs(model: nn.Module, inputs: Any) -> torch.Tensor:
    """The model's main output on ``inputs`` as float (logits of a ModelOutput, first of a tuple)."""
    model.eval()
    with torch.inference_mode():
        return fz.logits_of(call_model(model, inputs)).detach().float().clone()


def load(path: Path) -> nn.Module:
    """nc.load, trusting the foreign packages where this nncompress asks for trust."""
    if "trust" in inspect.signature(nc.load).parameters:
        return nc.load(path, trust=TRUST)
    return nc.load(path)


def params_of(model: nn.Module) -> tuple[int, int]:
    from nncompress.measure.size import count_nonzero, count_params

    return count_params(model), count_nonzero(model)


def save_and_reload(model: nn.Module, inputs: Any, out: torch.Tensor, folder: Path) -> tuple[int | None, str | None]:
    """(artifact bytes, problem): save, load again, compare outputs bit for bit."""
    path = folder / "m.ncz"
    path.unlink(missing_ok=True)
    try:
        nc.save(model, path)
    except Exception as e:
        return None, f"save failed: {first_line(e)}"
    size = path.stat().st_size
    try:
        again = outputs(load(path), inputs)
    except Exception as e:
        return size, f"load failed: {first_line(e)}"
    if again.shape != out.shape or not torch.equal(again, out):
        diff = float((again - out).abs().max()) if again.shape == out.shape else float("nan")
        return size, f"reloaded model's outputs differ (max {diff:.3g}, shape {tuple(again.shape)})"
    return size, None


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    if out.shape != ref.shape:
        return {"max_abs_error": float("nan"), "rel_error": float("nan")}
    err = float((out - ref).abs().max())
    return {"max_abs_error": err, "rel_error": err / max(float(ref.abs().max()), 1e-12)}


def canonical(model: nn.Module, ctx: StepContext) -> nn.Module:
    """What ``nc.compress`` does before the first step, where this nncompress has it: foreign layers
    (HF Conv1D, nn.MultiheadAttention) rewritten as plain ones, the rewrites in the notes."""
    try:
        from nncompress.base.canonical import canonicalize
    except ImportError:
        return model
    result = canonicalize(model)
    if hasattr(result, "log_lines"):
        ctx.log.extend(result.log_lines())
    return result.model


def step_cell(
    column: str,
    entry: fz.ZooEntry,
    base: nn.Module,
    ref: torch.Tensor,
    base_stats: dict[str, Any],
    folder: Path,
    *,
    save: bool = True,
) -> dict[str, Any]:
    """Run one step on a copy of ``base``; judge, measure, save and reload the result (``save``)."""
    kind, settings = STEP_COLUMNS[column]
    cell: dict[str, Any] = {"step": kind, "settings": settings}
    inputs = entry.example()
    task = entry.task(model=base)
    ctx = StepContext(task=task, teacher=copy.deepcopy(base).eval(), seed=0)
    work = copy.deepcopy(base)
    start = time.perf_counter()
    try:
        work = canonical(work, ctx)
        step = nc.STEPS[kind](**settings)
        with time_limit(CELL_SECONDS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            work = apply_step(step, work, ctx)
            out = outputs(work, inputs)
    except Exception as e:
        cell.update(
            status="fail",
            reason=first_line(e),
            notes=ctx.log[-6:],
            where=traceback.extract_tb(e.__traceback__)[-1].filename.split("site-packages/")[-1],
        )
        cell["seconds"] = round(time.perf_counter() - start, 2)
        return cell
    cell["seconds"] = round(time.perf_counter() - start, 2)
    cell["notes"] = ctx.log[-6:]
    cell.update(errors(out, ref))
    params, nonzero = params_of(work)
    size, problem = save_and_reload(work, inputs, out, folder) if save else (None, None)
    cell.update(
        params_before=base_stats["params"],
        params_after=params,
        nonzero_before=base_stats["nonzero"],
        nonzero_after=nonzero,
        size_before=base_stats["size"],
        size_after=size,
    )
    changed = (
        (params, nonzero) != (base_stats["params"], base_stats["nonzero"])
        or size != base_stats["size"]
        or cell["max_abs_error"] != 0.0
    )
    if not torch.isfinite(out).all():
        cell.update(status="fail", reason="the compressed model's outputs are not finite")
    elif out.shape != ref.shape:
        cell.update(status="fail", reason=f"output shape {tuple(out.shape)} != {tuple(ref.shape)}")
    elif not changed:
        cell.update(status="fail", reason="silent no-op: outputs, parameters and file unchanged")
    elif problem:
        cell.update(status="partial", reason=problem)
    elif fallback := next((n for n in ctx.log if "failed (" in n or "fell back" in n), None):
        cell.update(status="partial", reason=f"fell back: {fallback[:200]}")
    elif nc.STEPS[kind].family == "quantize" and size is not None and size > base_stats["size"]:
        cell.update(status="partial", reason=f"quantized file grew: {base_stats['size']} -> {size} bytes")
    else:
        cell.update(status="pass")
    return cell


def save_load_cell(entry: fz.ZooEntry, base: nn.Module, ref: torch.Tensor, folder: Path) -> dict[str, Any]:
    start = time.perf_counter()
    size, problem = save_and_reload(base, entry.example(), ref, folder)
    cell: dict[str, Any] = {"size_after": size, "seconds": round(time.perf_counter() - start, 2)}
    cell.update(status="fail", reason=problem) if problem else cell.update(status="pass")
    return cell


def onnx_cell(entry: fz.ZooEntry, base: nn.Module, folder: Path) -> dict[str, Any]:
    from nncompress.io.onnx_export import export_onnx

    start = time.perf_counter()
    try:
        with time_limit(CELL_SECONDS):
            result = export_onnx(base, folder / "m.onnx", entry.example(), overwrite=True)
    except Exception as e:
        return {"status": "fail", "reason": first_line(e), "seconds": round(time.perf_counter() - start, 2)}
    rel = result.max_abs_error / max(result.max_abs_output, 1e-12)
    cell = {
        "seconds": round(time.perf_counter() - start, 2),
        "size_after": result.bytes,
        "max_abs_error": result.max_abs_error,
        "rel_error": rel,
        "notes": result.notes,
    }
    if cell["rel_error"] > 1e-3:
        cell.update(status="partial", reason=f"ONNX Runtime differs from PyTorch by {cell['rel_error']:.2g} (relative)")
    else:
        cell["status"] = "pass"
    return cell


# --- a model's row -------------------------------------------------------------------------
def model_row(entry: fz.ZooEntry, columns: list[str], run_all: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"model": entry.name, "group": entry.group, "tags": sorted(entry.tags), "cells": {}}
    start = time.perf_counter()
    try:
        base = entry.build()
        ref = outputs(base, entry.example())
    except Exception as e:
        row["error"] = first_line(e)
        why = f"model did not build or run: {first_line(e)}"
        row["cells"] = {c: {"status": "fail", "reason": why} for c in columns}
        return row
    params, nonzero = params_of(base)
    row["params"] = params
    allowed = (
        columns if run_all or params <= FULL_PARAMS else (MEDIUM_COLUMNS if params <= MEDIUM_PARAMS else BIG_COLUMNS)
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        saving = params <= MEDIUM_PARAMS or run_all  # saving a 100M+ model takes a minute on 2 cores
        base_size, problem = save_and_reload(base, entry.example(), ref, folder) if saving else (None, None)
        base_stats = {"params": params, "nonzero": nonzero, "size": base_size}
        row["size_bytes"] = base_size
        for column in columns:
            if column not in allowed:
                row["cells"][column] = {
                    "status": "skipped",
                    "reason": f"CPU budget: {params / 1e6:.0f}M parameters run only {', '.join(allowed)}",
                }
            elif column in NEEDS_TAG and NEEDS_TAG[column] not in entry.tags:
                row["cells"][column] = {"status": "n/a", "reason": f"no {NEEDS_TAG[column]} layers"}
            elif column == "save-load":
                row["cells"][column] = (
                    save_load_cell(entry, base, ref, folder) if not problem else {"status": "fail", "reason": problem}
                )
            elif column == "onnx":
                row["cells"][column] = onnx_cell(entry, base, folder)
            else:
                row["cells"][column] = step_cell(column, entry, base, ref, base_stats, folder, save=saving)
            status = row["cells"][column]["status"]
            print(
                f"  {entry.name:32s} {column:16s} {status:8s} {row['cells'][column].get('reason', '')[:110]}",
                flush=True,
            )
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


# --- tables --------------------------------------------------------------------------------
MARK = {"pass": "✓", "partial": "◐", "fail": "✗", "n/a": "·", "skipped": "–"}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts = Counter(c["status"] for r in rows for c in r["cells"].values())
    applicable = counts["pass"] + counts["partial"] + counts["fail"]
    per_column: dict[str, dict[str, int]] = {}
    for r in rows:
        for col, c in r["cells"].items():
            per_column.setdefault(col, Counter())[c["status"]] += 1
    return {
        "counts": dict(counts),
        "applicable": applicable,
        "pass_rate": counts["pass"] / applicable if applicable else 0.0,
        "per_column": {k: dict(v) for k, v in per_column.items()},
    }


def markdown(rows: list[dict[str, Any]], columns: list[str], info: dict[str, Any]) -> str:
    """The README table: one row per model, one column per step; the failures listed under it."""
    s = info["counts"]
    lines = [
        f"Coverage over {len(rows)} foreign models (random weights, small inputs; `python benchmarks/coverage.py`): "
        f"{s.get('pass', 0)} pass, {s.get('partial', 0)} partial, {s.get('fail', 0)} fail of {info['applicable']} "
        f"applicable cells ({info['pass_rate']:.0%} pass); ✓ pass, ◐ partial, ✗ fail, · not applicable, "
        f"– skipped for the CPU budget (models over {FULL_PARAMS // 10**6}M parameters run "
        f"{', '.join(MEDIUM_COLUMNS)}; over {MEDIUM_PARAMS // 10**6}M, channel-prune only).",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for r in rows:
        marks = [MARK[r["cells"][c]["status"]] if c in r["cells"] else " " for c in columns]
        lines.append(f"| {r['model']} | " + " | ".join(marks) + " |")
    per = info["per_column"]
    lines.append(
        "| **pass / applicable** | "
        + " | ".join(
            f"{per.get(c, {}).get('pass', 0)}/{sum(per.get(c, {}).get(k, 0) for k in ('pass', 'partial', 'fail'))}"
            for c in columns
        )
        + " |"
    )
    reasons = Counter(
        (c, r["cells"][c].get("reason", ""))
        for r in rows
        for c in columns
        if c in r["cells"] and r["cells"][c]["status"] in ("fail", "partial")
    )
    if reasons:
        lines += ["", "Most frequent failures and partials (column: reason, cells):", ""]
        lines += [f"- {c}: {why} ({n})" for (c, why), n in reasons.most_common(25)]
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    short = [c[:5] for c in columns]
    print(f"{'model':32s} " + " ".join(f"{s:>5s}" for s in short))
    for r in rows:
        marks = [MARK[r["cells"][c]["status"]] if c in r["cells"] else " " for c in columns]
        print(f"{r['model']:32s} " + " ".join(f"{m:>5s}" for m in marks))


def select(pattern: str | None, quick: bool) -> list[fz.ZooEntry]:
    entries = list(fz.zoo().values())
    if quick:
        entries = [fz.get(n) for n in QUICK_MODELS]
    if pattern:
        wanted = pattern.split(",")
        entries = [e for e in entries if any(w in e.name for w in wanted)]
    if not entries:
        raise SystemExit(f"no zoo model matches {pattern!r}; known: {', '.join(fz.zoo())}")
    return entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_MODELS)}")
    parser.add_argument("--models", default=None, help="comma-separated substrings of zoo names (hf-,tv-resnet)")
    parser.add_argument("--steps", default=None, help="comma-separated columns (default: all)")
    parser.add_argument(
        "--all",
        action="store_true",
        help=f"every column on every model (default: models over "
        f"{FULL_PARAMS // 10**6}M parameters run only {', '.join(MEDIUM_COLUMNS)})",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a shared CPU)")
    parser.add_argument("--out", default=str(RESULTS / "coverage.json"))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace the rerun cells in the results at --out (recorded under 'reruns') instead of writing a new file",
    )
    parser.add_argument("--why", default="", help="with --merge: what changed, recorded with the rerun")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    all_columns = [*STEP_COLUMNS, *IO_COLUMNS]
    columns = args.steps.split(",") if args.steps else all_columns
    bad = [c for c in columns if c not in all_columns]
    if bad:
        raise SystemExit(f"unknown columns {bad}; known: {', '.join(all_columns)}")
    entries = select(args.models, args.quick)
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for entry in entries:
        print(f"{entry.name} ({entry.group})", flush=True)
        rows.append(model_row(entry, columns, args.all))
        if not args.merge:
            write(out, rows, columns, time.perf_counter() - start, args)
    print_table(rows, columns)
    if args.merge:
        rows, columns = merge(out, rows, columns, args)
    info = summary(rows)
    print(
        f"\n{info['counts']} — {info['pass_rate']:.1%} of {info['applicable']} applicable cells pass; "
        f"{time.perf_counter() - start:.0f} s"
    )
    print(f"wrote {out} and {out.with_suffix('.md')}")


def merge(
    out: Path, rerun: list[dict[str, Any]], columns: list[str], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[str]]:
    """Put the rerun cells into the saved results at ``out`` (rows and columns otherwise kept),
    record the rerun under ``reruns``, rewrite the JSON and the table; the merged rows and columns."""
    if not out.exists():
        raise SystemExit(f"--merge: {out} does not exist; run without --merge first")
    data = json.loads(out.read_text())
    by_model = {r["model"]: r for r in data["rows"]}
    for row in rerun:
        saved = by_model.get(row["model"])
        if saved is None:
            data["rows"].append(row)
            continue
        saved["cells"].update(row["cells"])
        for key in ("params", "size_bytes", "error"):
            if key in row:
                saved[key] = row[key]
    data["summary"] = summary(data["rows"])
    data.setdefault("settings", {}).update({c: STEP_COLUMNS[c][1] for c in columns if c in STEP_COLUMNS})
    data.setdefault("reruns", []).append(
        {"models": [r["model"] for r in rerun], "columns": columns, "why": args.why, "versions": versions()}
    )
    atomic_write_text(out, json.dumps(data, indent=1, default=str) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(data["rows"], data["columns"], data["summary"]))
    return data["rows"], data["columns"]


def write(out: Path, rows: list[dict[str, Any]], columns: list[str], seconds: float, args: argparse.Namespace) -> None:
    info = summary(rows)
    data = {
        "columns": columns,
        "settings": {c: STEP_COLUMNS[c][1] for c in columns if c in STEP_COLUMNS},
        "summary": info,
        "seconds": round(seconds, 1),
        "threads": args.threads,
        "versions": versions(),
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(data, indent=1, default=str) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(rows, columns, info))


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__, "nncompress": nc.__version__}
    for name in ("transformers", "timm", "onnxruntime"):
        with contextlib.suppress(Exception):
            found[name] = __import__(name).__version__
    return found


if __name__ == "__main__":
    main()
