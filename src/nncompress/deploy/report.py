"""Exports in the run's report: report.json's ``export`` object (one entry per target) and a
report.html section rendering it.

Example:
    >>> merge_into_report("runs/a/report.json", result)  # doctest: +SKIP
    >>> html = export_section(json.load(open("runs/a/report.json"))["export"])  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

REPORT_NAME = "report.json"


def report_beside(artifact: str | os.PathLike) -> Path | None:
    """The report.json of the run folder holding ``artifact``, if there is one."""
    candidate = Path(artifact).resolve().parent / REPORT_NAME
    return candidate if candidate.is_file() else None


def merge_into_report(report_path: str | os.PathLike, result: Any) -> Path:
    """Write ``result`` (a ``DeployResult`` or its dict) into report.json as ``export[target]``,
    keeping every other key; the file is replaced atomically."""
    from nncompress.io.atomic import atomic_write_text

    path = Path(report_path)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"cannot merge the export into {path}: {e}; accepted: a report.json written by nncompress"
        ) from e
    if not isinstance(report, dict):
        raise ValueError(f"{path} holds a JSON {type(report).__name__}, not an object; accepted: a report.json")
    entry = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    exports = report.get("export") if isinstance(report.get("export"), dict) else {}
    exports[entry["target"]] = entry
    report["export"] = exports
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return path


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def export_section(exports: dict[str, dict[str, Any]]) -> str:
    """An HTML ``<section>`` for report.html: per target, size, metric, error and latency of ours,
    the export and the target's own fp32 export, then its notes. Empty string when there is none."""
    if not exports:
        return ""
    rows = []
    for target, e in exports.items():
        metric = e.get("metric") or {}
        lat = e.get("latency_ms") or {}
        cells = [
            html.escape(target),
            _cell(e.get("bytes")),
            _cell(e.get("fp32_bytes")),
            _cell(metric.get("ours")),
            _cell(metric.get("export")),
            _cell(metric.get("fp32_export")),
            _cell(e.get("max_abs_error"), 3),
        ]
        for key in sorted(lat, key=lambda k: int(k.split("_")[-1])):
            t = lat[key]
            ours, theirs, fp32 = (_cell(t.get(k), 3) for k in ("ours", "export", "fp32_export"))
            cells.append(f"{key.split('_')[-1]}: {ours} / {theirs} / {fp32}")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    notes = [
        f"<li><b>{html.escape(t)}</b>: {html.escape(n)}</li>" for t, e in exports.items() for n in e.get("notes") or []
    ]
    header = (
        "<tr><th>target</th><th>bytes</th><th>fp32 export bytes</th><th>metric ours</th><th>export</th>"
        "<th>fp32 export</th><th>max |export &minus; ours|</th><th>ms at batch: ours / export / fp32 export</th></tr>"
    )
    parts = ["<section id='export'>", "<h2>Export</h2>", "<table>", header, *rows, "</table>"]
    if notes:
        parts += ["<ul>", *notes, "</ul>"]
    return "\n".join(parts + ["</section>"])
