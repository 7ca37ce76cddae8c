"""The report's plots, one function each, returning inline SVG text (``<svg ...>...</svg>``).

matplotlib is imported inside the functions, so ``import nncompress`` does not pay for it. Figures
are drawn with matplotlib's object API (no pyplot, no global figure state, no GUI backend) under
the default style, so a user's matplotlibrc does not change the report. Text stays text
(``svg.fonttype = none``): smaller files, searchable pages.

Each SVG's element ids start with the plot's name, so several plots can share one HTML page
(matplotlib's ids such as ``patch_1`` would otherwise repeat and its ``url(#...)`` references
could reach another plot's clip path). The drawn series carry ids the tests count:
``<name>-<series>`` for a line of points (one ``<use>`` per point marker) and
``<name>-<series>-<i>`` for the i-th bar.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from nncompress.measure.table import format_label, human_bytes, human_count
from nncompress.report.layers import Factorized, layer_names

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH = 7.5  # inches; the page scales the SVG to its column
BEFORE, AFTER, ACCENT, MUTED = "#9aa5b1", "#1f6feb", "#d1242f", "#b0b7c0"
# x axis of a Pareto plot per search objective (a "metric" search is drawn against size)
RESOURCE_KEYS = {"size": "size_bytes", "macs": "macs", "latency": "latency_ms"}
BUDGET_KEYS = {"size": "max_bytes", "macs": "max_macs", "latency": "max_latency_ms"}
STRENGTH_LABELS = {"prune": "sparsity", "quantize": "bits per weight", "lowrank": "rank fraction"}


def text(value: Any) -> str:
    """``value`` as plain text for matplotlib: ``$`` escaped, since a pair of them starts mathtext."""
    return str(value).replace("$", r"\$")


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """matplotlib's default style plus the report's few choices, restored afterwards."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(
            {
                "svg.fonttype": "none",
                "font.size": 9,
                "axes.spines.top": False,
                "axes.spines.right": False,
                "axes.grid": True,
                "grid.alpha": 0.3,
                "legend.frameon": False,
            }
        )
        yield


def _figure(height: float, width: float = WIDTH) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


_ID = re.compile(r'(\bid="|href="#|url\(#)([^")]+)')


def _svg(fig: Figure, name: str) -> str:
    """The figure as SVG text without the XML prolog and metadata, every id prefixed with ``name``."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name}):  # stable ids: the same report gives the same page
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)  # RDF block: nothing to show
    return _ID.sub(lambda m: f"{m.group(1)}{name}-{m.group(2)}", svg)


def _points(ax: Axes, xs: Sequence[float], ys: Sequence[float], gid: str, **style: Any) -> None:
    """A series drawn as one line with a marker per point; NaN points are left out."""
    pairs = [(x, y) for x, y in zip(xs, ys) if _finite(x) and _finite(y)]
    if not pairs:
        return
    (line,) = ax.plot([p[0] for p in pairs], [p[1] for p in pairs], **{"marker": "o", **style})
    line.set_gid(gid)


def _bar_ids(container: Any, prefix: str) -> None:
    for i, bar in enumerate(container.patches):
        bar.set_gid(f"{prefix}-{i}")


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _metric_label(metric: dict[str, Any], split: str) -> str:
    direction = "lower" if metric.get("higher_is_better") is False else "higher"
    return f"{text(metric.get('name', 'metric'))} ({split}, {direction} is better)"


def _bytes_axis(ax: Axes, axis: str = "y") -> None:
    from matplotlib.ticker import FuncFormatter

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))


def steps_plot(report: dict[str, Any]) -> str:
    """Metric and size after each step: ``baseline``, then the model after step 1, 2, ...

    Sizes after steps are the artifact size estimated in memory; the final saved file's size is a
    separate marker (``saved``) at the last step. A report without steps shows baseline and final.

    Series: ``steps-metric`` and ``steps-size`` (one point per stage), ``steps-saved`` (one point).
    """
    base, final, steps = report["baseline"], report["final"], report.get("steps") or []
    stages = ["baseline"] + [f"{i}. {text(s['kind'])}" for i, s in enumerate(steps, start=1)]
    metrics = [base["metric"]["value"]] + [s["metric"] for s in steps]
    sizes = [base["size_bytes"]] + [s["size_bytes"] for s in steps]
    if not steps:
        stages.append("final")
        metrics.append(final["metric"]["value"])
        sizes.append(final["size_bytes"])
    xs = list(range(len(stages)))
    with _style():
        fig = _figure(4.2)
        top, bottom = fig.subplots(2, 1, sharex=True)
        _points(top, xs, metrics, "metric", color=AFTER)
        for x, y in zip(xs, metrics):
            if _finite(y):
                top.annotate(f"{y:.4g}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        top.set_ylabel(_metric_label(base["metric"], "test"))
        top.margins(y=0.2)  # room for the value labels above the points
        _points(bottom, xs, sizes, "size", color=AFTER)
        _points(
            bottom,
            [xs[-1]],
            [final["size_bytes"]],
            "saved",
            color=ACCENT,
            marker="D",
            linestyle="none",
            label=f"saved artifact ({human_bytes(final['size_bytes'])})",
        )
        bottom.set_ylabel("size (artifact)")
        bottom.set_ylim(bottom=0)
        _bytes_axis(bottom)
        bottom.legend(loc="upper right", fontsize=8)
        bottom.set_xticks(xs, stages, rotation=20 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center")
        return _svg(fig, "steps")


def _barh_height(n: int) -> float:
    return 1.0 + 0.28 * max(n, 2)


def sparsity_plot(baseline_layers: Sequence[dict[str, Any]], final_layers: Sequence[dict[str, Any]]) -> str:
    """Weight sparsity of each layer before and after compression (horizontal bars, one row per layer).

    A layer on one side only (a factorized layer and its factors) has only that side's bar.
    Series: ``sparsity-before-<i>`` and ``sparsity-after-<i>`` bars.
    """
    before = {row["name"]: row for row in baseline_layers}
    after = {row["name"]: row for row in final_layers}
    names = layer_names(baseline_layers, final_layers)
    with _style():
        fig = _figure(_barh_height(len(names)))
        ax = fig.subplots()
        for side, rows, color, offset in (("before", before, BEFORE, -0.2), ("after", after, AFTER, 0.2)):
            drawn = [
                (y, rows[n]["weight_sparsity"])
                for y, n in enumerate(names)
                if n in rows and rows[n].get("weight_sparsity") is not None
            ]
            if drawn:  # one call per series: per-bar calls cost seconds on models with hundreds of layers
                container = ax.barh(
                    [y + offset for y, _ in drawn], [100 * v for _, v in drawn], height=0.4, color=color, label=side
                )
                _bar_ids(container, side)
        ax.set_yticks(range(len(names)), [text(n) for n in names])
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("weight sparsity (% of weights that are zero)")
        ax.legend(loc="lower right", fontsize=8)
        return _svg(fig, "sparsity")


def bits_plot(final_layers: Sequence[dict[str, Any]]) -> str:
    """Bits per weight of each compressed layer, coloured by its storage format (``int4/ch``...).

    Layers without a recorded ``bits`` (reports written before formats were recorded) are left out.
    Series: ``bits-bar-<i>`` bars.
    """
    rows = [row for row in final_layers if row.get("bits") is not None]
    labels = [format_label(row) for row in rows]
    formats = list(dict.fromkeys(labels))
    with _style():
        import matplotlib

        palette = matplotlib.colormaps["tab10"].colors
        fig = _figure(_barh_height(len(rows)))
        ax = fig.subplots()
        top = max((row["bits"] for row in rows), default=32)
        container = ax.barh(
            range(len(rows)),
            [row["bits"] for row in rows],
            height=0.6,
            color=[palette[formats.index(label) % len(palette)] for label in labels],
        )
        _bar_ids(container, "bar")
        from matplotlib.patches import Patch

        legend = [Patch(color=palette[k % len(palette)], label=text(label)) for k, label in enumerate(formats)]
        ax.set_yticks(range(len(rows)), [text(row["name"]) for row in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.05)
        ax.set_xlabel("bits per stored weight")
        ax.legend(
            handles=legend, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="format", title_fontsize=8
        )
        return _svg(fig, "bits")


def ranks_plot(factorized: Sequence[Factorized]) -> str:
    """For each factorized layer, the share of its parameters the factors keep, labelled with the ranks.

    Series: ``ranks-bar-<i>`` bars.
    """
    with _style():
        fig = _figure(_barh_height(len(factorized)))
        ax = fig.subplots()
        shares = [100 * layer.kept for layer in factorized]
        _bar_ids(ax.barh(range(len(factorized)), shares, height=0.6, color=AFTER), "bar")
        for i, (layer, share) in enumerate(zip(factorized, shares)):
            ax.text(
                share + 1,
                i,
                f"{text(layer.label())} ({human_count(layer.params_after)} params)",
                va="center",
                fontsize=8,
            )
        ax.set_yticks(range(len(factorized)), [text(layer.name) for layer in factorized])
        ax.invert_yaxis()
        ax.set_xlim(0, max([100.0, *(130 * layer.kept for layer in factorized)]))
        ax.axvline(100, color=MUTED, linestyle="--", linewidth=1)
        ax.set_xlabel("parameters of the factors (% of the original layer)")
        return _svg(fig, "ranks")


def sensitivity_plot(sensitivity: dict[str, Any]) -> str:
    """Val metric against strength, one panel per technique and one curve per layer, with the
    baseline metric dashed: the steeper a curve falls, the more that layer resists compression.

    Series: ``sensitivity-curve-<i>`` (the i-th curve of sensitivity.json, points sorted by
    strength) and ``sensitivity-baseline-<j>`` per panel.
    """
    curves = sensitivity["curves"]
    techniques = list(dict.fromkeys(c["technique"] for c in curves))
    metric = sensitivity["metric"]
    with _style():
        fig = _figure(3.0 * max(len(techniques), 1))
        axes = fig.subplots(max(len(techniques), 1), 1, squeeze=False)[:, 0]
        for j, (ax, technique) in enumerate(zip(axes, techniques or ["-"])):
            for i, curve in enumerate(curves):
                if curve["technique"] != technique:
                    continue
                points = sorted(curve["points"], key=lambda p: p["strength"])
                _points(
                    ax,
                    [p["strength"] for p in points],
                    [p["metric"] for p in points],
                    f"curve-{i}",
                    markersize=4,
                    linewidth=1.2,
                    label=text(curve["layer"]),
                )
            base = ax.axhline(
                sensitivity["baseline_metric"], color=ACCENT, linestyle="--", linewidth=1, label="baseline"
            )
            base.set_gid(f"baseline-{j}")
            ax.set_title(text(technique), loc="left", fontsize=9)
            ax.set_xlabel(STRENGTH_LABELS.get(technique, "strength"))
            ax.set_ylabel(_metric_label(metric, sensitivity.get("split", "val")))
            handles = len(ax.get_legend_handles_labels()[0])
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, ncols=1 + handles // 16)
        return _svg(fig, "sensitivity")


def pareto_plot(
    trials: Sequence[dict[str, Any]],
    search: dict[str, Any] | None = None,
    *,
    metric: dict[str, Any] | None = None,
) -> str:
    """Every search trial's val metric against its cost, the Pareto front, and the chosen trial.

    The cost axis follows search.json's objective (size, MACs or latency; size for a ``metric``
    objective or without search.json), with the budget on that axis drawn when one was set.
    Trials without that cost (latency not timed) are left out. ``metric``: name and direction.

    Series: ``pareto-meets`` and ``pareto-misses`` (trials that met the budget or not),
    ``pareto-front`` (the front's trials by cost), ``pareto-chosen`` and ``pareto-budget``.
    """
    search = search or {}
    objective = search.get("objective", "size")
    resource = objective if objective in RESOURCE_KEYS else "size"
    key = RESOURCE_KEYS[resource]
    shown = [t for t in trials if _finite(t.get(key)) and _finite(t.get("metric"))]
    by_id = {t["trial"]: t for t in shown}
    metric = metric or search.get("metric") or {"name": "metric"}
    with _style():
        fig = _figure(4.0)
        ax = fig.subplots()
        for gid, keep, style in (
            ("meets", True, {"color": AFTER, "label": "met the budget"}),
            ("misses", False, {"color": MUTED, "marker": "x", "label": "missed the budget"}),
        ):
            group = [t for t in shown if bool(t.get("meets_budget")) == keep]
            _points(
                ax, [t[key] for t in group], [t["metric"] for t in group], gid, linestyle="none", markersize=4, **style
            )
        front = sorted((by_id[i] for i in search.get("pareto", []) if i in by_id), key=lambda t: t[key])
        _points(
            ax,
            [t[key] for t in front],
            [t["metric"] for t in front],
            "front",
            color=ACCENT,
            markersize=5,
            linewidth=1.2,
            drawstyle="steps-post",
            label="Pareto front",
        )
        chosen = by_id.get(search.get("chosen"))
        if chosen is not None:
            _points(
                ax,
                [chosen[key]],
                [chosen["metric"]],
                "chosen",
                marker="*",
                markersize=16,
                linestyle="none",
                color="#f2b705",
                markeredgecolor="black",
                label=f"chosen (trial {chosen['trial']})",
            )
        limit = (search.get("budget") or {}).get(BUDGET_KEYS[resource])
        if _finite(limit):
            ax.axvline(limit, color=ACCENT, linestyle=":", linewidth=1, label="budget").set_gid("budget")
        costs = [t[key] for t in shown if t[key] > 0]
        if costs and max(costs) / min(costs) > 20:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        if resource == "size":
            _bytes_axis(ax, "x")
        left_out = len(trials) - len(shown)
        ax.set_xlabel(
            {"size": "artifact size", "macs": "MACs (batch 1)", "latency": "latency (ms, batch 1)"}[resource]
            + (f" ({left_out} trials without it not shown)" if left_out else "")
        )
        ax.set_ylabel(_metric_label(metric, "val"))
        if shown:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
        return _svg(fig, "pareto")
