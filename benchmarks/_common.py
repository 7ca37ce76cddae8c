"""Shared benchmark plumbing: run a recipe on a task, save the artifact, emit a contract row.

Each row (see shared DESIGN.md, "Benchmarks") holds ``task``, ``method``, ``settings`` and two
objects ``baseline`` and ``result`` with ``metric``, ``params``, ``nonzero_params``, ``size_bytes``,
``dense_fp32_bytes``, ``macs``, ``latency_ms``; ``result.artifact`` is the saved ``.ncz``, whose
file size is ``result.size_bytes`` and which ``nncompress evaluate`` re-measures to the same metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

import nncompress as nc
from nncompress.io.atomic import atomic_write_text
from nncompress.measure.report import CONTRACT_FIELDS as FIELDS
from nncompress.measure.report import add_latency
from nncompress.measure.warnings import speed_warnings

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smaller set, for smoke tests")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/<family>.json)")
    return parser.parse_args(argv)


def contract_fields(report: nc.Report) -> dict[str, Any]:
    d = report.to_dict()
    out = {k: d[k] for k in FIELDS}
    out["latency"] = d["latency"]
    out["energy_estimate_uj"] = d["energy"].get("total_uj")
    return out


def run_recipe(
    family: str,
    task: nc.Task,
    method: str,
    recipe: list[nc.Step],
    baseline_report: nc.Report | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Compress ``task``'s baseline with ``recipe``; save the artifact; return a contract row."""
    t0 = time.perf_counter()
    result = nc.compress(task.baseline(), recipe, task, seed=seed)
    seconds = time.perf_counter() - t0
    artifact = RESULTS / "artifacts" / family / f"{task.name}--{method}.ncz"
    nc.save(
        result.model,
        artifact,
        metadata={
            "task": task.name,
            "method": method,
            "recipe": result.report.recipe,
            "seed": seed,
        },
    )
    final = result.report.final
    final.size_bytes = os.path.getsize(artifact)
    row = {
        "task": task.name,
        "method": method,
        "settings": {"recipe": result.report.recipe, "seed": seed},
        "baseline": contract_fields(baseline_report or result.report.baseline),
        "result": {
            **contract_fields(final),
            "artifact": str(artifact.relative_to(RESULTS.parent.parent)),
            "compress_seconds": round(seconds, 2),
        },
        "warnings": speed_warnings(result.report.baseline.to_dict(), final.to_dict()),
        "steps": [
            {
                "kind": s.kind,
                "metric": s.metric,
                "nonzero_params": s.nonzero_params,
                "size_bytes": s.size_bytes,
                "seconds": round(s.seconds, 2),
            }
            for s in result.report.steps
        ],
    }
    return row


def peer_row(
    task: nc.Task,
    method: str,
    tool: str,
    baseline_model: nn.Module,
    model: nn.Module,
    save: Any,
    settings_: dict[str, Any],
    seconds: float,
    config: nc.MeasureConfig | None = None,
) -> dict:
    """A contract row for a peer: its model measured by us (timed alternately with the
    baseline, as our rows are); sizes of both as the peer's users save them."""
    config = config or nc.MeasureConfig()
    baseline, report = (
        nc.measure(m, task, config=replace(config, latency=False), size_bytes=0) for m in (baseline_model, model)
    )  # sizes: the peer's own files, below
    add_latency([baseline, report], [baseline_model, model], task, config)
    with tempfile.TemporaryDirectory() as d:  # both saved the peer's way
        for i, (m, r) in enumerate(((baseline_model, baseline), (model, report))):
            path = os.path.join(d, f"model{i}.pt")
            save(m, path)
            r.size_bytes = os.path.getsize(path)
    return {
        "task": task.name,
        "method": method,
        "tool": tool,
        "settings": settings_,
        "baseline": contract_fields(baseline),
        "result": {**contract_fields(report), "compress_seconds": round(seconds, 2)},
        "warnings": speed_warnings(baseline.to_dict(), report.to_dict()),
    }


def write_results(family: str, rows: list[dict[str, Any]], out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{family}.json"
    atomic_write_text(path, json.dumps(rows, indent=2) + "\n")
    return path


def _change(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The metric's change: points for a higher-is-better fraction, a relative change otherwise
    (perplexity: lower is better)."""
    if before.get("higher_is_better", True):
        return f"{(after['value'] - before['value']) * 100:+.2f}"
    return f"{(after['value'] / before['value'] - 1) * 100:+.1f}%"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = [
        "task",
        "tool",
        "method",
        "metric",
        "Δ pts / %",
        "size KB",
        "x smaller",
        "nonzero",
        "MACs",
        "lat ms",
        "x faster",
    ]
    lines = [header]
    for r in rows:
        b, res = r["baseline"], r["result"]
        lines.append(
            [
                r["task"],
                r.get("tool", "nncompress"),
                r["method"],
                f"{res['metric']['value']:.4f}",
                _change(b["metric"], res["metric"]),
                f"{res['size_bytes'] / 1024:.1f}",
                f"{b['size_bytes'] / res['size_bytes']:.2f}",
                f"{res['nonzero_params']}",
                f"{res['macs']}",
                f"{res['latency_ms']:.3f}" if res.get("latency_ms") else "-",  # untimed rows (decode speed instead)
                f"{b['latency_ms'] / res['latency_ms']:.2f}" if res.get("latency_ms") and b.get("latency_ms") else "-",
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(str(c).rjust(w) for c, w in zip(line, widths)), file=sys.stdout)
        if i == 0:
            print("  ".join("-" * w for w in widths))
