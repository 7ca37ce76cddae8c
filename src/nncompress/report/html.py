"""The self-contained HTML report of a run folder: ``DIR/report.html``.

One file with everything inline (CSS, plots as SVG, no scripts, no external resources), so it can
be mailed or archived and still show the same thing. Every figure comes from ``report.json`` and
the search files (see ``report.inputs``); every string from them is HTML-escaped, since layer names,
task names and notes come from user code.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nncompress.report import plots
from nncompress.report.inputs import RunFiles, load_run
from nncompress.report.layers import factorized_layers, layer_names
from nncompress.report.recipe_toml import has_nulls, recipe_json, recipe_toml

HTML_NAME = "report.html"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 32px 0 8px;
     border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.sub { color: #59636e; margin: 0 0 16px; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 14px; margin: 12px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 12px; min-width: 150px; }
.card .k { color: #59636e; font-size: 12px; } .card .v { font-size: 16px; font-weight: 600; }
.card .c { font-size: 12px; color: #59636e; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e4e8ec; padding: 3px 10px; text-align: right; vertical-align: top; }
th { background: #f6f8fa; } .l { text-align: left; }
td.notes { text-align: left; color: #59636e; font-size: 12px; }
figure.plot { margin: 16px 0; } figure.plot svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #59636e; font-size: 12px; margin-top: 4px; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px;
      overflow-x: auto; font-size: 12px; }
code { font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, left: Sequence[int] = (0,), raw: Sequence[int] = ()
) -> str:
    """An HTML table, numbers right-aligned and the ``left`` columns left-aligned; cells are escaped
    except in the ``raw`` columns, which hold HTML built from escaped parts (shown as notes)."""
    aligned = ' class="l"'
    head = "".join(f"<th{aligned if i in left or i in raw else ''}>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="notes"' if i in raw else ' class="l"' if i in left else ""
            cells.append(f"<td{cls}>{cell if i in raw else _e(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(name: str, title: str, svg: str, caption: str) -> str:
    return (
        f'<figure class="plot" id="plot-{name}" data-plot="{name}"><h3>{_e(title)}</h3>{svg}'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _value(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())


def _summary(report: dict[str, Any]) -> tuple[str, str]:
    """Headline cards and the before/after table: the same figures as ``nncompress report``."""
    from nncompress.measure.report import Report
    from nncompress.measure.table import human_bytes, human_count, report_rows, row_change

    base, final = Report.from_dict(report["baseline"]), Report.from_dict(report["final"])
    rows_b, rows_f = report_rows(base), report_rows(final)
    metric_key = next(iter(rows_b))
    lat = "latency b=1 (ms, median)"
    energy = final.energy.get("total_uj")
    cards = [
        (metric_key, f"{rows_b[metric_key]} → {rows_f[metric_key]}", row_change(metric_key, base, final)),
        (
            "size on disk",
            f"{human_bytes(base.size_bytes)} → {human_bytes(final.size_bytes)}",
            row_change("size on disk", base, final),
        ),
        (
            "MACs (batch 1)",
            f"{human_count(base.macs)} → {human_count(final.macs)}",
            row_change("MACs (batch 1)", base, final),
        ),
        (
            "latency b=1",
            f"{rows_b[lat]} → {rows_f[lat]} ms" if final.latency_ms is not None else "not timed",
            row_change(lat, base, final),
        ),
        (
            "energy estimate",
            "-" if energy is None else f"{rows_b['energy estimate (uJ)']} → {energy:.1f} µJ",
            "estimate" if energy is not None else "",
        ),
    ]
    html_cards = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div><div class="c">{_e(c)}</div></div>'
        for k, v, c in cards
    )
    keys = list(dict.fromkeys([*rows_b, *rows_f]))
    table = _table(
        ["", "baseline", "compressed", "change"],
        [[k, rows_b.get(k, "-"), rows_f.get(k, "-"), row_change(k, base, final)] for k in keys],
    )
    source = final.energy.get("source")
    if source:
        table += f'<p class="sub">Energy: {_e(source)}.</p>'
    return f'<div class="cards">{html_cards}</div>', table


def _steps_table(report: dict[str, Any]) -> str:
    from nncompress.measure.table import human_bytes, human_count

    rows = [
        [
            i,
            s["kind"],
            _settings(s.get("settings", {})),
            f"{s.get('seconds', 0.0):.1f}",
            _value(s["metric"]),
            human_count(s.get("nonzero_params", 0)),
            human_bytes(s["size_bytes"]),
            "<br>".join(_e(n) for n in s.get("notes", [])),
        ]
        for i, s in enumerate(report.get("steps", []), start=1)
    ]
    return _table(
        ["#", "step", "settings", "seconds", "metric after", "non-zero params", "size (est.)", "notes"],
        rows,
        left=(1, 2),
        raw=(7,),
    )


def _layers_table(report: dict[str, Any]) -> str:
    from nncompress.measure.table import format_label, human_count

    before = {r["name"]: r for r in report["baseline"].get("layers", [])}
    after = {r["name"]: r for r in report["final"].get("layers", [])}
    rows = []
    for name in layer_names(report["baseline"].get("layers", []), report["final"].get("layers", [])):
        b, a = before.get(name), after.get(name)
        row = [name, (a or b)["type"]]
        row += [_shape(b["shape"]), human_count(b["params"]), f"{b['weight_sparsity']:.1%}"] if b else ["-"] * 3
        row += (
            [
                _shape(a["shape"]),
                format_label(a),
                _value(a.get("bits")),
                human_count(a["params"]),
                human_count(a["nonzero_params"]),
                f"{a['weight_sparsity']:.1%}",
            ]
            if a
            else ["-"] * 6
        )
        rows.append(row)
    return _table(
        ["layer", "type", "shape", "params", "sparsity", "→ shape", "format", "bits", "params", "non-zero", "sparsity"],
        rows,
        left=(0, 1),
    )


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(d) for d in shape)


def _plots(files: RunFiles) -> list[str]:
    """The figures that the run's files support, in page order."""
    rep = files.report
    base_layers, final_layers = rep["baseline"].get("layers", []), rep["final"].get("layers", [])
    out = [
        _figure(
            "steps",
            "Metric and size after each step",
            plots.steps_plot(rep),
            "Test metric and artifact size of the model after each step (sizes after steps are "
            "estimated in memory; the diamond is the saved file).",
        )
    ]
    if base_layers and final_layers:
        out.append(
            _figure(
                "sparsity",
                "Weight sparsity per layer",
                plots.sparsity_plot(base_layers, final_layers),
                "Share of each layer's weights that are zero, before and after compression.",
            )
        )
    if any(row.get("bits") is not None for row in final_layers):
        out.append(
            _figure(
                "bits",
                "Bits per weight per layer",
                plots.bits_plot(final_layers),
                "How each compressed layer stores its weights (format and bits per weight).",
            )
        )
    factorized = factorized_layers(base_layers, final_layers)
    if factorized:
        out.append(
            _figure(
                "ranks",
                "Ranks of factorized layers",
                plots.ranks_plot(factorized),
                "Each low-rank layer's kept ranks and its factors' parameters as a share of the original.",
            )
        )
    if files.sensitivity and files.sensitivity["curves"]:
        out.append(
            _figure(
                "sensitivity",
                "Sensitivity per layer",
                plots.sensitivity_plot(files.sensitivity),
                "Val metric with one layer compressed at a time; the dashed line is the baseline.",
            )
        )
    if files.trials:
        metric = (files.search or {}).get("metric") or (files.sensitivity or {}).get("metric") or rep["final"]["metric"]
        out.append(
            _figure(
                "pareto",
                "Search trials and Pareto front",
                plots.pareto_plot(files.trials, files.search, metric=metric),
                "Every trial's val metric against its cost; the line is the Pareto front, "
                "the star the chosen trial (rebuilt and measured on the test split above).",
            )
        )
    return out


def _search_section(files: RunFiles) -> str:
    if files.search is None and not files.trials:
        return ""
    from nncompress.measure.table import human_bytes

    parts = ["<h2>Search</h2>"]
    search = files.search or {}
    if search:
        budget = ", ".join(f"{k}={_value(v)}" for k, v in search["budget"].items() if v is not None) or "none"
        rows = [
            ["objective", search["objective"]],
            ["budget", budget],
            ["chosen trial", search["chosen"]],
            ["Pareto front", ", ".join(map(str, search["pareto"]))],
        ]
        if "test_metric" in search:
            rows.append(
                [
                    "test metric (chosen / baseline)",
                    f"{_value(search['test_metric'])} / {_value(search.get('baseline_test_metric'))}",
                ]
            )
        parts.append(_table(["", ""], rows, left=(0, 1)))
    if files.trials:
        chosen, front = search.get("chosen"), set(search.get("pareto", []))
        listed = [t for t in files.trials if t["trial"] in front or t["trial"] == chosen]
        rows = [
            [
                t["trial"],
                t.get("stage", "-"),
                "chosen" if t["trial"] == chosen else "front",
                _value(t["metric"]),
                human_bytes(t["size_bytes"]),
                t["macs"],
                _value(t.get("latency_ms")),
                "yes" if t.get("meets_budget") else "no",
                _params(t["params"]),
            ]
            for t in listed
        ]
        parts.append(f'<p class="sub">{len(files.trials)} trials in trials.jsonl; the front and the chosen one:</p>')
        parts.append(
            _table(
                ["trial", "stage", "", "val metric", "size", "MACs", "latency ms", "meets budget", "settings"],
                rows,
                left=(1, 2, 8),
            )
        )
    return "".join(parts)


def _params(params: dict[str, Any]) -> str:
    """A trial's per-layer settings, ``fc1: prune 0.8, quantize 4``."""
    return (
        "; ".join(
            f"{layer}: " + ", ".join(f"{t} {_value(s)}" for t, s in techniques.items())
            for layer, techniques in params.items()
        )
        or "(none)"
    )


def _reproduce(report: dict[str, Any]) -> str:
    recipe = report.get("recipe", [])
    versions = report.get("versions", {})
    seed = report.get("seed", 0)
    command = f"nncompress compress --task {report['task']} --recipe recipe.toml --seed {seed} --out DIR"
    note = (
        (
            '<p class="sub">Some settings were null, which TOML cannot write: left out, a setting takes the '
            "step's default, which may differ. The JSON form below loads exactly (<code>--recipe recipe.json</code>)."
            "</p>"
        )
        if has_nulls(recipe)
        else ""
    )
    return (
        "<h2>Reproduce</h2>"
        f"<p>Seed <b>{_e(seed)}</b>. Save the recipe below as <code>recipe.toml</code>, then run:</p>"
        f"<pre>{_e(command)}</pre>"
        f'<pre id="recipe-toml">{_e(recipe_toml(recipe))}</pre>{note}'
        f"<details><summary>Recipe as JSON</summary><pre>{_e(recipe_json(recipe))}</pre></details>"
        + _table(["version", ""], sorted(versions.items()), left=(0, 1))
    )


def _warnings(report: dict[str, Any]) -> str:
    """A highlighted list of the run's warnings (report.json ``warnings``; older reports: derived)."""
    from nncompress.measure.warnings import speed_warnings

    lines = report.get("warnings")
    if lines is None:
        lines = speed_warnings(report["baseline"], report["final"])
    if not lines:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in lines)
    return f'<div class="warn"><strong>Warnings</strong><ul>{items}</ul></div>'


def _export_section(report: dict[str, Any]) -> str:
    """The exports checked in their runtimes (report.json ``export``, written by ``nncompress export``)."""
    if not report.get("export"):
        return ""
    from nncompress.deploy.report import export_section  # lazy: deploy sits above report

    return export_section(report["export"])


def build_html(files: RunFiles) -> str:
    """The report page of a run folder's parsed files."""
    rep = files.report
    cards, summary = _summary(rep)
    seconds = rep.get("seconds")
    sub = f"task {_e(rep['task'])}; " + " → ".join(_e(s["kind"]) for s in rep.get("steps", []))
    if seconds is not None:
        sub += f"; ran in {float(seconds):.1f} s"
    layers = _layers_table(rep) if rep["baseline"].get("layers") or rep["final"].get("layers") else ""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>nncompress report: {_e(rep['task'])}</title><style>{CSS}</style></head><body><main>",
            f'<h1>nncompress report: {_e(rep["task"])}</h1><p class="sub">{sub}</p>',
            cards,
            _warnings(rep),
            "<h2>Before and after</h2>",
            summary,
            "<h2>Plots</h2>",
            *_plots(files),
            "<h2>Steps</h2>",
            _steps_table(rep),
            "<h2>Per layer</h2>" + layers if layers else "",
            _search_section(files),
            _export_section(rep),
            _reproduce(rep),
            "</main></body></html>",
            "",
        ]
    )


def render_html(run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/report.html`` from its report.json (and search files, when present); atomic.

    Raises:
        FileNotFoundError: ``run_dir`` has no report.json.
        ValueError: a file is malformed (the message names it and the missing field).

    Example:
        >>> render_html("runs/demo")  # doctest: +SKIP
        PosixPath('runs/demo/report.html')
    """
    from nncompress.io.atomic import atomic_write_text  # here: io's run folders render reports

    files = load_run(run_dir)
    path = Path(run_dir) / HTML_NAME
    atomic_write_text(path, build_html(files))
    return path
