"""Each CLI subcommand as a plain function of the parsed arguments; returns what to print."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from nncompress.measure.report import MeasureConfig


def _measure_config(args: argparse.Namespace) -> MeasureConfig:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    return MeasureConfig(latency=not args.no_latency, batch_size_large=args.batch_size)


def _run(args: argparse.Namespace, recipe_spec: str) -> Any:
    from nncompress.core.compress import compress
    from nncompress.core.recipe import load_recipe
    from nncompress.io.run import REPORT_NAME, check_out_dir, write_run
    from nncompress.measure.table import run_tables
    from nncompress.report.html import HTML_NAME
    from nncompress.tasks import get

    out = check_out_dir(args.out, overwrite=args.overwrite)  # empty, under a file, unwritable, taken
    recipe = load_recipe(recipe_spec)  # validate before any slow work
    measure_config = _measure_config(args)
    task = get(args.task, data_dir=args.data_dir)
    model = task.baseline()
    result = compress(model, recipe, task, seed=args.seed, measure_config=measure_config)
    # written into a temporary sibling folder and renamed into place: all new files or none
    artifact, report_path = write_run(result, out, overwrite=args.overwrite)
    if args.json:
        return json.loads(report_path.read_text())
    rep = result.report
    lines = [
        run_tables(rep.baseline, rep.final),
        "",
        "steps: " + " -> ".join(f"{s.kind} ({s.seconds:.1f}s)" for s in rep.steps),
        f"wrote {artifact} ({os.path.getsize(artifact)} bytes), {out / REPORT_NAME} and {out / HTML_NAME}",
    ]
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> Any:
    """Compress a reference model with the default recipe; print the before/after table."""
    return _run(args, args.recipe)


def compress(args: argparse.Namespace) -> Any:
    """Run a recipe on a task's baseline model and write the run folder."""
    return _run(args, args.recipe)


def _trust(args: argparse.Namespace) -> tuple[str, ...]:
    """``--trust`` modules (checked), plus the module of a ``path/file.py:factory`` task: the user
    chose to run that file's code, so its classes may load from the artifact."""
    from nncompress.io.trust import normalize_trust

    trust = normalize_trust(getattr(args, "trust", None) or ())
    spec = getattr(args, "task", None) or ""
    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        from nncompress.tasks.loading import _module_name

        trust += (_module_name(Path(spec.rpartition(":")[0])),)
    return trust


def _load_artifact_for(args: argparse.Namespace):
    from nncompress.io.artifact import load
    from nncompress.tasks import get

    trust = _trust(args)  # a bad --trust is refused before the task loads
    task = get(args.task, data_dir=args.data_dir)  # first: a file task defines the model's classes
    return task, load(args.artifact, trust=trust)


def evaluate(args: argparse.Namespace) -> Any:
    """Measure a saved artifact on a task; print the report as JSON."""
    from nncompress.measure.report import measure

    task, model = _load_artifact_for(args)
    report = measure(model, task, config=_measure_config(args), size_bytes=os.path.getsize(args.artifact))
    return report.to_dict()


def measure_cmd(args: argparse.Namespace) -> Any:
    """Measure the task's baseline (or a given artifact) and print a table or JSON."""
    from nncompress.measure.report import measure
    from nncompress.measure.table import comparison_table
    from nncompress.tasks import get

    if args.artifact:
        task, model = _load_artifact_for(args)
        size = os.path.getsize(args.artifact)
    else:
        task = get(args.task, data_dir=args.data_dir)
        model, size = task.baseline(), None
    report = measure(model, task, config=_measure_config(args), size_bytes=size)
    if args.json:
        return report.to_dict()
    return comparison_table([report], [args.artifact or f"{task.name} baseline"])


def zoo_list(args: argparse.Namespace) -> Any:
    """The reference models with their measured baseline metric (accuracy, or perplexity for LMs)."""
    from nncompress.tasks.zoo import all_entries, checkpoint_info

    rows = []
    for name, e in all_entries().items():
        info = checkpoint_info(name) or {}
        rows.append(
            {
                "name": name,
                "description": e.description,
                "metric": e.metric,
                "target": e.target,
                f"test_{e.metric}": info.get(f"test_{e.metric}"),
                "train_seconds": info.get("train_seconds"),
                "checkpoint": info.get("path", "not trained yet (`nncompress zoo train NAME`)"),
            }
        )
    if args.json:
        return rows
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'name'.ljust(width)}  {'metric':<10}  {'test':>7}  target  train s  description"]
    for r in rows:
        value = r[f"test_{r['metric']}"]
        test = "-" if value is None else f"{value:.4f}"
        secs = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(
            f"{r['name'].ljust(width)}  {r['metric']:<10}  {test:>7}  {r['target']:.3f}  {secs:>7}  {r['description']}"
        )
    return "\n".join(lines)


def zoo_train(args: argparse.Namespace) -> Any:
    """Train a reference model from its fixed seed and cache the checkpoint."""
    from nncompress.tasks.metrics import meets
    from nncompress.tasks.zoo import entry, train_baseline

    metric = entry(args.name).metric  # validate the name before loading data
    out_dir = Path(args.out_dir) if args.out_dir else None
    _, info = train_baseline(args.name, data_dir=args.data_dir, out_dir=out_dir)
    if args.json:
        return info
    test, val = info[f"test_{metric}"], info[f"val_{metric}"]
    status = "meets" if meets(test, info["target"], metric) else "MISSES"
    return (
        f"{args.name}: test {metric} {test:.4f} ({status} target "
        f"{info['target']}), val {val:.4f}, trained in {info['train_seconds']}s"
    )


def steps(args: argparse.Namespace) -> Any:
    """The registered steps with their settings and defaults."""
    from nncompress.core.step import builtin_steps

    rows = []
    for kind, cls in sorted(builtin_steps().items()):
        settings = {}
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            settings[f.name] = default
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        rows.append({"kind": kind, "family": cls.family, "summary": doc, "settings": settings})
    if args.json:
        return rows
    return "\n".join(
        f"{r['kind']:<18} {r['family']:<9} {r['summary']}\n"
        + "".join(f"    {k} = {json.dumps(v)}\n" for k, v in r["settings"].items())
        for r in rows
    ).rstrip()


def report(args: argparse.Namespace) -> Any:
    """Print the table of a run folder's report.json and (re)write its report.html."""
    from nncompress.core.compress import CompressionReport
    from nncompress.measure.table import run_tables
    from nncompress.report import render_html

    path = Path(args.dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report.json in {args.dir} (give a folder written by `compress`)")
    try:
        rep = CompressionReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"{path} is not a valid nncompress report: {e}") from e
    return run_tables(rep.baseline, rep.final) + f"\n\nwrote {render_html(args.dir)}"


def search(args: argparse.Namespace) -> Any:
    """Search per-layer compression within a budget; print the chosen model's summary."""
    import sys

    from nncompress.io.run import check_writable_path
    from nncompress.search import Budget, SearchConfig, SearchSpace
    from nncompress.search import search as run_search
    from nncompress.train.progress import progress_enabled

    check_writable_path(args.out)  # before any slow work

    budget = Budget(
        max_drop=args.max_drop, max_bytes=args.max_bytes, max_macs=args.max_macs, max_latency_ms=args.max_latency_ms
    )
    space = SearchSpace(techniques=tuple(t.strip() for t in args.techniques.split(",") if t.strip()))
    config = SearchConfig(
        trials=args.trials,
        workers=args.workers,
        seed=args.seed,
        space=space,
        ray_address=args.ray_address,
        measure=_measure_config(args),
    )
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress_enabled() else None
    result = run_search(
        args.task,
        budget,
        args.out,
        objective=args.objective,
        config=config,
        resume=args.resume,
        data_dir=args.data_dir,
        progress=log,
    )
    s = result.summary
    if args.json:
        return s
    name = s["metric"]["name"]
    return "\n".join(
        [
            f"chosen trial {s['chosen']} of {s['trials']}: {json.dumps(s['params'])}",
            f"{name}: val {s['val_metric']:.4f} (baseline {s['baseline_val_metric']:.4f}), "
            f"test {s['test_metric']:.4f} (baseline {s['baseline_test_metric']:.4f}, drop {s['test_drop']:+.4f}, "
            f"{'meets' if s['meets_budget_on_test'] else 'MISSES'} the budget on test)",
            f"size {s['size_bytes']:,} bytes (baseline {s['baseline_size_bytes']:,}), MACs {s['macs']:,}",
            f"Pareto front (trial ids): {s['pareto']}",
            f"wrote {result.out_dir}/model.ncz, report.json, search.json, trials.jsonl, sensitivity.json",
        ]
    )


def export(args: argparse.Namespace) -> Any:
    """Export an artifact to a runtime (``--to``, ONNX by default) and check it there: metric on the
    test split, max output error, size, latency beside ours and the runtime's fp32 export."""
    from nncompress.deploy import CheckConfig, deploy, get_target, merge_into_report, report_beside, summary
    from nncompress.io.run import check_writable_path

    target = get_target(args.to)  # unknown name, or runtime not installed: one line, before any work
    out = check_writable_path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give the {target.suffix} file to write")
    if out.exists() and not args.overwrite:  # before any slow work
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if args.batch_size < 0:
        raise ValueError(f"--batch-size must be an integer >= 0 (0: no timing), got {args.batch_size}")
    check = args.check if args.check is not None else args.to != "onnx"  # plain ONNX export stays as it was
    task, model = _load_artifact_for(args)
    if args.to == "onnx" and not check:
        from nncompress.io.onnx_export import export_onnx, export_summary

        plain = export_onnx(model, out, task.inputs_example(), opset=args.opset, overwrite=args.overwrite)
        return plain.to_dict() if args.json else export_summary(plain)
    config = CheckConfig(
        metric=check,
        fp32=check and not args.no_fp32,
        batch_large=args.batch_size if check else 0,
        max_batches=args.max_batches,
    )
    result = deploy(model, target, out, task, config=config)
    report = Path(args.report) if args.report else report_beside(args.artifact)
    merged = merge_into_report(report, result) if report is not None and check else None
    if merged is not None and (merged.parent / "report.html").exists():  # the page shows report.json's export
        from nncompress.report.html import render_html

        render_html(merged.parent)
    if args.json:
        return result.to_dict()
    text = summary(result)
    return text + (f"\nadded export.{result.target} to {merged}" if merged else "")
