"""Regenerate README.md's results block from the committed benchmark JSON, so its tables cannot rot.

The block lies between ``<!-- results:begin -->`` and ``<!-- results:end -->``: one table per
benchmark family (every row of ``benchmarks/results/<family>.json``: metric and its change, the
saved file and how much smaller, MACs, batch-1 latency and the speed-up timed in the same run),
then the peer-tools table with each group's winner (``benchmarks/peers/_table.py``).
``tests/test_readme_results.py`` checks that the README holds exactly what this script writes.

Usage: python benchmarks/readme_results.py [--check]   (--check: exit 1 if README.md is stale)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peers._table import PEERS_NOTE, family_markdown, peers_markdown

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
# (file stem, heading, what produced it); families without a JSON file are left out
FAMILIES = (
    ("pruning", "Pruning", "python benchmarks/pruning.py"),
    ("quantization", "Quantization", "python benchmarks/quantization.py"),
    ("distillation", "Distillation", "python benchmarks/distillation.py"),
    ("lowrank", "Low-rank factorization", "python benchmarks/lowrank.py"),
    ("llm", "Language models", "python benchmarks/llm.py"),
    ("pipeline", "Deep Compression pipeline", "python benchmarks/pipeline.py"),
    ("search", "Automatic search under a 1-point budget", "python benchmarks/search.py"),
)
ONNX = ("onnx", "ONNX export, run in ONNX Runtime", "python benchmarks/onnx_export.py")


def _metric_text(metric: dict[str, Any]) -> str:
    value = metric["value"]
    return f"{value:.2%}" if metric.get("name") == "accuracy" else f"{value:.3f} {metric.get('name', '')}".strip()


def onnx_markdown(rows: list[dict[str, Any]]) -> str:
    """ONNX rows: file vs the fp32 ONNX file, max output error, and ONNX Runtime latency against the
    fp32 export and PyTorch fp32 timed in the same run."""
    lines = [
        "| task | model | ONNX file vs fp32 ONNX | max abs error | metric in ONNX Runtime | "
        "batch-1 ms: ORT / ORT fp32 / PyTorch fp32 | batch-64 ms: same |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        o = r["onnx"]
        lat = o["latency_ms"]
        big = next(k for k in lat if k != "batch_1")
        cells = [
            r["task"],
            f"`{r['method'].removeprefix('onnx-')}`",
            f"{o['bytes'] / o['fp32_bytes']:.2f}",
            f"{o['max_abs_error']:.1e}",
            _metric_text(o["metric"]),
            " / ".join(f"{lat['batch_1'][k]:.3f}" for k in ("onnx", "onnx_fp32", "pytorch_fp32")),
            " / ".join(f"{lat[big][k]:.2f}" for k in ("onnx", "onnx_fp32", "pytorch_fp32")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _points(change: float) -> str:
    """A change of a fraction in signed percentage points, with a real minus sign."""
    return f"{100 * change:+.2f}".replace("-", "−")


def deep_compression_markdown(pipeline: list[dict[str, Any]], peers: list[dict[str, Any]]) -> str:
    """Issue 9's Deep Compression table: each pipeline row beside Han et al. 2016's MNIST row (a
    reference, not measured here) and the smallest peer file, from ``peers.json``, on the same task
    at no lower accuracy than ours. Sizes are against the dense fp32 weights (4 bytes a parameter)."""
    lines = [
        "| task | ours: × smaller than fp32 (bytes) | ours: metric (Δ), reloaded file | ours over seeds | "
        "Han et al. 2016 on MNIST: model, × smaller, Δ | smallest peer file at ≥ our metric (× smaller) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in pipeline:
        b, res = r["baseline"], r["result"]
        dense = res["dense_fp32_bytes"]
        paper = r["settings"]["paper_mnist"]
        mine = res["metric"]["value"]
        reloaded = r["settings"].get("reloaded_metric", mine)
        rivals = [
            p
            for p in peers
            if p["task"] == r["task"] and p["tool"] != "nncompress" and p["result"]["metric"]["value"] >= mine
        ]
        best = min(rivals, key=lambda p: p["result"]["size_bytes"], default=None)
        seeds = [float(v) for v in r["settings"].get("seed_metrics", {}).values()]
        spread = (
            f"{_metric_text({**res['metric'], 'value': statistics.mean(seeds)})} ± "
            f"{100 * statistics.stdev(seeds):.2f} ({len(seeds)} seeds)"
            if len(seeds) > 1
            else "one seed"
        )
        peer = (
            f"{best['tool']} `{best['method']}`: {best['result']['size_bytes'] / 1024:.1f} KB "
            f"({dense / best['result']['size_bytes']:.1f}×), {_metric_text(best['result']['metric'])}"
            if best
            else "none in peers.json"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    r["task"],
                    f"{dense / res['size_bytes']:.1f}× ({res['size_bytes']:,} B)",
                    f"{_metric_text(res['metric'])} ({_points(mine - b['metric']['value'])}), "
                    f"{_metric_text({**res['metric'], 'value': reloaded})}",
                    spread,
                    f"{paper['model']}: {paper['x_smaller']}×, {_points(paper['error_before'] - paper['error_after'])}",
                    peer,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _rows(path: Path) -> list[dict[str, Any]]:
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "result" in r for r in rows):
        raise ValueError(f"{path}: expected a list of benchmark rows (objects with 'result'), see DESIGN.md")
    return rows


def generate(results: Path = RESULTS) -> str:
    """The block's text (without the markers) from the JSON files in ``results``."""
    parts = [
        f"<!-- generated by `python benchmarks/readme_results.py` from {results.relative_to(ROOT)}/*.json; "
        "edit the JSON's producer, not this block -->"
    ]
    for stem, heading, command in FAMILIES:
        path = results / f"{stem}.json"
        if path.exists():
            parts += [f"### {heading} (`{command}`)", family_markdown(_rows(path))]
    pipeline, peers = results / "pipeline.json", results / "peers.json"
    if pipeline.exists():
        parts += [
            "### Deep Compression beside Han et al. 2016 (`python benchmarks/pipeline.py`, peers from "
            "`benchmarks/peers/run.py`)",
            deep_compression_markdown(_rows(pipeline), _rows(peers) if peers.exists() else []),
        ]
    path = results / f"{ONNX[0]}.json"
    if path.exists():
        parts += [f"### {ONNX[1]} (`{ONNX[2]}`)", onnx_markdown(_rows(path))]
    if peers.exists():
        parts += [
            "### Peer tools, side by side (`python benchmarks/peers/run.py`)",
            peers_markdown(_rows(peers)),
            PEERS_NOTE,
        ]
    return "\n\n".join(parts)


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no '{BEGIN}' ... '{END}' block (both markers, in that order, are needed)")
    return f"{text[: start + len(BEGIN)]}\n{block}\n{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's block is not up to date")
    args = parser.parse_args(argv)
    text = README.read_text()
    try:
        new = replace_block(text, generate())
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print("README.md's results block is stale: run python benchmarks/readme_results.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        from nncompress.io.atomic import atomic_write_text

        atomic_write_text(README, new)
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
