"""Side-by-side comparison tables of reports, as plain text for terminals and logs."""

from __future__ import annotations

from collections.abc import Sequence

from nncompress.measure.report import Report
from nncompress.measure.warnings import speed_warnings
from nncompress.tasks.metrics import METRICS


def human_bytes(n: float) -> str:
    """``n`` bytes in B, KB, MB or GB (1024-based, one decimal above bytes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def human_count(n: float) -> str:
    """``n`` as a count with a k / M / G suffix."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def report_rows(report: Report) -> dict[str, str]:
    """The comparison table's cells of one ``Report``, by row name."""
    lat = "-" if report.latency_ms is None else f"{report.latency_ms:.3f}"
    big = next((v for k, v in report.latency.items() if k.startswith("batch_") and k != "batch_1"), None)
    rows = {
        f"{report.metric['name']} (test)": f"{report.metric['value']:.4f}",
        "params": human_count(report.params),
        "non-zero params": human_count(report.nonzero_params),
        "size on disk": human_bytes(report.size_bytes),
        "dense fp32 size": human_bytes(report.dense_fp32_bytes),
        "MACs (batch 1)": human_count(report.macs),
        "latency b=1 (ms, median)": lat,
        f"latency b={big['batch_size']} (ms, median)" if big else "latency batch-N": (
            f"{big['median_ms']:.3f}" if big else "-"
        ),
        "energy estimate (uJ)": f"{report.energy.get('total_uj', float('nan')):.1f}",
    }
    tokens = report.latency.get("batch_1", {}).get("tokens_per_s")
    if tokens is not None:  # sequence models
        rows["tokens/s b=1"] = f"{tokens:.0f}"
    return rows


def comparison_table(reports: Sequence[Report], names: Sequence[str]) -> str:
    """A text table with one column per report and, for two, a ratio column (first / second)."""
    rows = [report_rows(r) for r in reports]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    header = ["", *names]
    if len(reports) == 2:
        header.append("change")
    lines = [header]
    for key in keys:
        line = [key, *(r.get(key, "-") for r in rows)]
        if len(reports) == 2:
            line.append(row_change(key, reports[0], reports[1]))
        lines.append(line)
    return _render(lines)


def row_change(key: str, a: Report, b: Report) -> str:
    """The change column of row ``key`` from report ``a`` to ``b``."""
    if key.endswith("(test)"):
        return _metric_change(a.metric, b.metric)
    pairs = {
        "params": (a.params, b.params),
        "non-zero params": (a.nonzero_params, b.nonzero_params),
        "size on disk": (a.size_bytes, b.size_bytes),
        "MACs (batch 1)": (a.macs, b.macs),
        "latency b=1 (ms, median)": (a.latency_ms, b.latency_ms),
    }
    if key in pairs and pairs[key][0] and pairs[key][1]:
        before, after = pairs[key]
        if before == after:
            return "same"
        if key.startswith("latency"):
            return f"{before / after:.2f}x faster" if before > after else f"{after / before:.2f}x slower"
        return f"{before / after:.2f}x smaller" if before > after else f"{after / before:.2f}x larger"
    return ""


def _metric_change(before: dict, after: dict) -> str:
    """Accuracy-like metrics: the change in points; lower-is-better ones (perplexity): the relative
    change, labelled better or worse, since an increase there is a loss."""
    a, b = before["value"], after["value"]
    higher = before.get("higher_is_better")
    if higher is None:  # reports written before the direction was recorded
        metric = METRICS.get(before.get("name", ""))
        higher = metric is None or metric.higher_is_better
    if higher:
        return f"{(b - a) * 100:+.2f} pts"
    if a == b:
        return "same"
    relative = f"{(b - a) / abs(a) * 100:+.2f}%" if a else f"{b - a:+.4g}"
    return f"{relative} ({'worse' if b > a else 'better'})"


def layer_table(baseline: Report, final: Report) -> str:
    """Per-layer table: each layer's weight shape and sparsity before and after compression, and
    the storage format and bits of the compressed weight (``int4/ch``, ``codebook 5b``, ``float32``).

    Layers are matched by name; a layer present on one side only shows ``-`` on the other
    (e.g. a factorized layer replaced by two).
    """
    before = {row["name"]: row for row in baseline.layers}
    after = {row["name"]: row for row in final.layers}
    names = list(before) + [n for n in after if n not in before]
    lines = [
        ["layer", "type", "shape", "params", "sparsity", "-> shape", "format", "bits", "params", "non-zero", "sparsity"]
    ]
    for name in names:
        b, a = before.get(name), after.get(name)
        line = [name, (a or b)["type"]]
        line += [_shape(b["shape"]), human_count(b["params"]), f"{b['weight_sparsity']:.1%}"] if b else ["-"] * 3
        line += (
            [
                _shape(a["shape"]),
                format_label(a),
                _bits(a),
                human_count(a["params"]),
                human_count(a["nonzero_params"]),
                f"{a['weight_sparsity']:.1%}",
            ]
            if a
            else ["-"] * 6
        )
        lines.append(line)
    return _render(lines)


_SHORT_FORMATS = {"int-symmetric": "int", "uint-affine": "uint"}  # uniform codes: the width is in the label


def format_label(row: dict) -> str:
    """Short storage label of a per-layer row: ``int4/ch``, ``uint3/g64``, ``int8/tensor``,
    ``codebook 5b``, ``binary 1b``, ``float16``; ``-`` for rows written before formats were recorded."""
    fmt, bits = row.get("format"), row.get("bits")
    if not fmt:
        return "-"
    if fmt in ("codebook", "binary"):
        return f"{fmt} {bits}b"
    granularity = row.get("granularity")
    if granularity is None or fmt.startswith(("float", "bfloat")):  # float weights have no scales
        return fmt
    if fmt in _SHORT_FORMATS:
        fmt = f"{_SHORT_FORMATS[fmt]}{bits}"
    if granularity == "group":
        return f"{fmt}/g{row.get('group_size')}"
    return f"{fmt}/{'ch' if granularity == 'channel' else granularity}"


def _bits(row: dict) -> str:
    """The bits per weight of a row, ``-`` when unknown."""
    return "-" if row.get("bits") is None else str(row["bits"])


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _render(lines: list[list[str]]) -> str:
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    out = []
    for i, line in enumerate(lines):
        out.append(
            "  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(line, widths)))
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def run_tables(baseline: Report, final: Report) -> str:
    """The before/after table of a compression run, its speed warnings, then its per-layer table."""
    text = comparison_table([baseline, final], ["baseline", "compressed"])
    text += "".join(f"\nwarning: {line}" for line in speed_warnings(baseline.to_dict(), final.to_dict()))
    if baseline.layers and final.layers:
        text += "\n\nper layer\n" + layer_table(baseline, final)
    return text
