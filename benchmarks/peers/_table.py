"""Markdown tables from benchmark rows, and the winner of each peer group. Pure: JSON in, text out
(``benchmarks/readme_results.py`` uses it without importing torch).

A peer group is the rows sharing ``(task, technique)``; its ``headline`` says what wins:
- ``metric``: the settings already match the resource (same sparsity, MACs, ranks): the best
  metric wins; within ``TIE_POINTS`` of it, the smaller file.
- ``latency`` / ``size``: among the rows whose metric is within ``TOLERANCE_POINTS`` of the
  group's best, the fastest batch-1 median / the smallest file wins.
"""

from __future__ import annotations

from typing import Any

TOLERANCE_POINTS = 0.5  # accuracy points (or % of a non-fraction metric) that count as "equal metric"
TIE_POINTS = 0.05
PERCENT_METRICS = ("accuracy", "top5")


def metric_value(side: dict[str, Any]) -> float:
    return float(side["metric"]["value"])


def _points(side: dict[str, Any]) -> float:
    """The metric on a scale where TOLERANCE_POINTS applies, higher is better."""
    m = side["metric"]
    value = float(m["value"]) * (100 if m.get("name") in PERCENT_METRICS else 1)
    return value if m.get("higher_is_better", True) else -value


def _within(rows: list[dict[str, Any]], points: float) -> list[dict[str, Any]]:
    best = max(_points(r["result"]) for r in rows)
    return [r for r in rows if _points(r["result"]) >= best - points]


def winner(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of one group that wins its headline figure (see the module docstring)."""
    headline = rows[0]["headline"]
    if headline == "metric":
        return min(_within(rows, TIE_POINTS), key=lambda r: r["result"]["size_bytes"])
    if headline == "latency":
        return min(_within(rows, TOLERANCE_POINTS), key=lambda r: r["result"]["latency_ms"])
    if headline == "size":
        return min(_within(rows, TOLERANCE_POINTS), key=lambda r: r["result"]["size_bytes"])
    raise ValueError(f"headline={headline!r} is not known; accepted: metric, latency, size")


def group_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["task"], row["technique"]


def mark_winners(rows: list[dict[str, Any]]) -> None:
    """Set ``wins`` on every row: True for its group's winner."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    for members in groups.values():
        best = winner(members)
        for r in members:
            r["wins"] = r is best


# --- formatting ---------------------------------------------------------------------------------


def fmt_metric(base: dict[str, Any], res: dict[str, Any]) -> str:
    """``91.06% (−0.05)`` for accuracy-like metrics (change in points), else value and relative change."""
    b, r = base["metric"], res["metric"]
    if r.get("name") in PERCENT_METRICS:
        return f"{100 * r['value']:.2f}% ({100 * (r['value'] - b['value']):+.2f})".replace("-", "−")
    return f"{r['value']:.4g} {r.get('name', '')} ({100 * (r['value'] / b['value'] - 1):+.1f}%)".replace("-", "−")


def fmt_size(base: dict[str, Any], res: dict[str, Any]) -> str:
    ratio = f" ({base['size_bytes'] / res['size_bytes']:.1f}×)" if base.get("size_bytes") else ""
    return f"{res['size_bytes'] / 1024:.1f}{ratio}"


def fmt_macs(res: dict[str, Any]) -> str:
    return f"{res['macs'] / 1e6:.2f}M"


def _batch_large(side: dict[str, Any]) -> dict[str, Any] | None:
    keys = [k for k in side.get("latency", {}) if k.startswith("batch_") and k != "batch_1"]
    return side["latency"][keys[0]] if keys and isinstance(side["latency"][keys[0]], dict) else None


def fmt_latency(base: dict[str, Any], res: dict[str, Any], large: bool = False) -> str:
    """Median ms and the speed-up over the baseline timed in the same run (blank when untimed)."""
    if large:
        b, r = _batch_large(base), _batch_large(res)
        b_ms, r_ms = (b or {}).get("median_ms"), (r or {}).get("median_ms")
    else:
        b_ms, r_ms = base.get("latency_ms"), res.get("latency_ms")
    if not r_ms:
        return ""
    return f"{r_ms:.3f} ({b_ms / r_ms:.2f}×)" if b_ms else f"{r_ms:.3f}"


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def slower_notes(row: dict[str, Any]) -> list[str]:
    """The row's speed warnings (``warnings``, written by the benchmarks from ``measure.warnings``);
    rows written before them get a plain line when their batch-1 median is above the baseline's."""
    if "warnings" in row:
        return list(row["warnings"])
    b_ms, r_ms = row["baseline"].get("latency_ms"), row["result"].get("latency_ms")
    if b_ms and r_ms and r_ms > b_ms:
        return [f"slower than its baseline at batch 1: {r_ms:.3g} ms against {b_ms:.3g} ms ({b_ms / r_ms:.2f}x speed)"]
    return []


def family_markdown(rows: list[dict[str, Any]]) -> str:
    """One line per row: metric, file, MACs, batch-1 latency, each against the row's baseline; rows
    slower than their baseline are marked ⚠ and their warnings listed under the table."""
    head = ["task", "tool", "method", "metric (Δ)", "file KB (× smaller)", "MACs", "batch-1 ms (× faster)"]
    lines = [_line(head), _line(["---"] * len(head))]
    notes = []
    for r in rows:
        warned = slower_notes(r)
        notes += [f"- ⚠ {r['task']} `{r['method']}`: {w}" for w in warned]
        b, res = r["baseline"], r["result"]
        metric = fmt_metric(b, res)
        settings = r.get("settings", {})
        std, seeds = settings.get("metric_std"), settings.get("seeds") or ()
        if std is not None and len(seeds) > 1 and res["metric"].get("name") in PERCENT_METRICS:  # mean over seeds
            metric = metric.replace("% (", f"% ± {100 * std:.2f} (", 1)
        lines.append(
            _line(
                [
                    r["task"],
                    r.get("tool", "nncompress"),
                    f"`{r['method']}`",
                    metric,
                    fmt_size(b, res),
                    fmt_macs(res),
                    fmt_latency(b, res) + (" ⚠" if warned else ""),
                ]
            )
        )
    if notes:
        lines += ["", "Slower than the baseline (timed in the same run):", *notes]
    return "\n".join(lines)


def peers_markdown(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table: groups in order, the winner of each marked ✓ with its headline."""
    large = next(
        (k for r in rows for k in r["result"].get("latency", {}) if k.startswith("batch_") and k != "batch_1"),
        "batch_64",
    )
    head = [
        "task",
        "technique (headline)",
        "tool",
        "method",
        "metric (Δ)",
        "file KB (× vs its fp32 file)",
        "MACs",
        "batch-1 ms (× vs fp32)",
        f"{large.replace('_', '-')} ms (×)",
        "compress s",
        "wins",
    ]
    lines = [_line(head), _line(["---"] * len(head))]
    for r in rows:
        b, res = r["baseline"], r["result"]
        lines.append(
            _line(
                [
                    r["task"],
                    f"{r['technique']} ({r['headline']})",
                    r["tool"],
                    f"`{r['method']}`",
                    fmt_metric(b, res),
                    fmt_size(b, res),
                    fmt_macs(res),
                    fmt_latency(b, res),
                    fmt_latency(b, res, large=True),
                    f"{res.get('compress_seconds', 0):.1f}",
                    "✓" if r.get("wins") else "",
                ]
            )
        )
    return "\n".join(lines)


PEERS_NOTE = (
    f"Winner (✓) per (task, technique): `metric` groups match the resource (same sparsity, MACs or ranks), "
    f"so the best metric wins (within {TIE_POINTS} points: the smaller file); `latency` and `size` groups: "
    f"the fastest batch-1 median / smallest file among rows within {TOLERANCE_POINTS} points of the group's "
    "best metric. File sizes are each tool's own file (ours `.ncz`; torch, torchao, quanto, TensorLy-Torch "
    "`torch.save(state_dict)`; Torch-Pruning `torch.save(model)`; ONNX Runtime `.onnx`) against the fp32 "
    "model saved the same way. Latency: every model of a group and the fp32 eager model timed in one "
    "process, in alternating rounds, each at its faster thread count (1 or 2); ratios are against that "
    "fp32 model."
)
