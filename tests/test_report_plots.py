"""The HTML report's parts without a browser: each plot's SVG (series and point counts, missing
optional data), per-layer views, the recipe listing, reading run folders, escaping, atomic writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from nncompress.report import plots
from nncompress.report.html import build_html, render_html
from nncompress.report.inputs import RunFiles, load_run, parse_trials
from nncompress.report.layers import factorized_layers
from nncompress.report.recipe_toml import has_nulls, recipe_json, recipe_toml

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>console.error("escaped?")</script>&<img src=x onerror=alert(1)>'


def layer(name, shape, *, sparsity=0.0, bits=32, fmt="float32", layer_type="Linear", **extra):
    params = 1
    for d in shape:
        params *= d
    return {
        "name": name,
        "type": layer_type,
        "shape": list(shape),
        "params": params,
        "nonzero_params": round(params * (1 - sparsity)),
        "weight_sparsity": sparsity,
        "format": fmt,
        "bits": bits,
        "granularity": None if fmt == "float32" else "channel",
        "group_size": None,
        **extra,
    }


def side(metric, size, layers):
    return {
        "task": "t",
        "metric": {"name": "accuracy", "value": metric, "higher_is_better": True},
        "params": 1000,
        "nonzero_params": 500,
        "size_bytes": size,
        "dense_fp32_bytes": 4000,
        "macs": 900,
        "latency_ms": None,
        "latency": {},
        "energy": {},
        "steps": [],
        "layers": layers,
    }


def make_report(task="synthetic", note="kept 50%"):
    """A report.json: fc1 factorized by SVD (rank 75 of 300), fc2 pruned and quantized, fc3 dense."""
    baseline = [layer("fc1", (300, 784)), layer("fc2", (100, 300)), layer("fc3", (10, 100))]
    final = [
        layer("fc1.0", (75, 784), sparsity=0.25, bits=4, fmt="int-symmetric"),
        layer("fc1.1", (300, 75), bits=4, fmt="int-symmetric"),
        layer("fc2", (100, 300), sparsity=0.5, bits=4, fmt="int-symmetric"),
        layer("fc3", (10, 100)),
    ]
    steps = [
        {
            "kind": "svd",
            "settings": {"rank": 0.25, "layers": ["fc1"]},
            "seconds": 0.5,
            "metric": 0.88,
            "params": 900,
            "nonzero_params": 900,
            "size_bytes": 3000,
            "notes": [],
        },
        {
            "kind": "magnitude-prune",
            "settings": {"sparsity": 0.5, "threshold": None},
            "seconds": 0.1,
            "metric": 0.86,
            "params": 900,
            "nonzero_params": 450,
            "size_bytes": 2000,
            "notes": [note],
        },
    ]
    recipe = [{"kind": s["kind"], "settings": s["settings"]} for s in steps]
    return {
        "task": task,
        "baseline": side(0.9, 4000, baseline),
        "final": side(0.86, 1900, final),
        "steps": steps,
        "recipe": recipe,
        "seed": 3,
        "versions": {"nncompress": "0.1.0"},
        "seconds": 1.0,
    }


def synthetic_search_files(metric_name="accuracy"):
    """sensitivity.json, trials.jsonl rows and search.json per the search contract: 2 layers x 2
    techniques x 3 strengths; 10 trials (trial 9 without latency); front [0, 3, 5, 8], chosen 5."""
    sensitivity = {
        "task": "synthetic",
        "metric": {"name": metric_name, "higher_is_better": True},
        "baseline_metric": 0.9,
        "split": "val",
        "curves": [
            {
                "layer": name,
                "technique": tech,
                "points": [
                    {"strength": s, "metric": 0.9 - k * drop, "size_bytes": None if k == 1 else 1000 * (3 - k)}
                    for k, s in enumerate(strengths)
                ],
            }
            for name, drop in (("fc1", 0.01), ("fc2", 0.05))
            for tech, strengths in (("prune", (0.9, 0.5, 0.7)), ("quantize", (8, 4, 2)))
        ],
    }
    sizes = [500, 900, 700, 1200, 650, 1500, 1800, 800, 2500, 3000]
    metrics = [0.70, 0.74, 0.72, 0.80, 0.60, 0.85, 0.83, 0.75, 0.88, 0.87]
    trials = [
        {
            "trial": i,
            "stage": "greedy" if i < 5 else "refine",
            "params": {"fc1": {"prune": 0.5}, "fc2": {"quantize": 4}} if i % 2 else {},
            "metric": m,
            "size_bytes": s,
            "macs": 10 * s,
            "latency_ms": None if i == 9 else s / 1000,
            "meets_budget": s <= 2000,
            "seconds": 0.1,
        }
        for i, (s, m) in enumerate(zip(sizes, metrics))
    ]
    search = {
        "task": "synthetic",
        "objective": "size",
        "chosen": 5,
        "pareto": [0, 3, 5, 8],
        "budget": {"max_drop": 0.05, "max_bytes": 2000, "max_latency_ms": None, "max_macs": None},
        "test_metric": 0.84,
        "baseline_test_metric": 0.9,
    }
    return sensitivity, trials, search


def write_search_files(run_dir, sensitivity, trials, search) -> None:
    (run_dir / "sensitivity.json").write_text(json.dumps(sensitivity))
    (run_dir / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trials))
    (run_dir / "search.json").write_text(json.dumps(search))


def parse(svg: str) -> ET.Element:
    assert svg.startswith("<svg"), svg[:80]  # no XML prolog: it goes inline into HTML
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def by_id(root: ET.Element, gid: str) -> ET.Element | None:
    return next((e for e in root.iter() if e.get("id") == gid), None)


def points(root: ET.Element, gid: str) -> int:
    """Markers drawn in a series (one ``<use>`` per point); 0 when the series is absent."""
    group = by_id(root, gid)
    return 0 if group is None else sum(1 for e in group.iter(f"{SVG}use"))


def bars(root: ET.Element, prefix: str) -> int:
    return sum(1 for e in root.iter() if re.fullmatch(rf"{prefix}-\d+", e.get("id", "")))


def bar_length(root: ET.Element, gid: str) -> float:
    """Horizontal extent of a bar (a ``<path>`` rectangle in matplotlib's SVG)."""
    d = next(by_id(root, gid).iter(f"{SVG}path")).get("d")
    xs = [float(x) for x in re.findall(r"[ML]\s*(-?[\d.]+)", d)]
    return max(xs) - min(xs)


def ids(svg: str) -> list[str]:
    return re.findall(r'\bid="([^"]+)"', svg)


def test_steps_plot_has_a_point_per_stage():
    rep = make_report()
    root = parse(svg := plots.steps_plot(rep))
    assert points(root, "steps-metric") == 3 and points(root, "steps-size") == 3  # baseline + 2 steps
    assert points(root, "steps-saved") == 1
    assert all(i.startswith("steps-") for i in ids(svg)) and len(ids(svg)) == len(set(ids(svg)))
    rep["steps"][1]["metric"] = float("nan")  # a step whose metric could not be measured is left out
    assert points(parse(plots.steps_plot(rep)), "steps-metric") == 2
    rep["steps"] = []  # no steps recorded: baseline and final
    root = parse(plots.steps_plot(rep))
    assert points(root, "steps-metric") == 2 and points(root, "steps-size") == 2


def test_sparsity_plot_has_a_bar_per_layer_and_side():
    rep = make_report()
    root = parse(plots.sparsity_plot(rep["baseline"]["layers"], rep["final"]["layers"]))
    assert bars(root, "sparsity-before") == 3  # fc1, fc2, fc3
    assert bars(root, "sparsity-after") == 4  # fc1.0, fc1.1, fc2, fc3
    # rows in baseline order, then the new layers; bar lengths follow the sparsity: fc2 after (50%,
    # bar 0) is twice as long as fc1.0 after (25%, bar 2)
    assert bar_length(root, "sparsity-after-0") == pytest.approx(2 * bar_length(root, "sparsity-after-2"), rel=1e-3)
    assert bar_length(root, "sparsity-before-0") == 0


def test_bits_plot_labels_formats_and_skips_rows_without_bits():
    rows = make_report()["final"]["layers"]
    rows.append({**layer("old", (4, 4)), "bits": None, "format": None})  # written before formats were recorded
    svg = plots.bits_plot(rows)
    assert bars(parse(svg), "bits-bar") == 4
    assert "int4/ch" in svg and "float32" in svg


def test_factorized_layers_read_ranks_from_factor_shapes():
    baseline = [
        layer("fc", (300, 784)),
        layer("conv", (64, 32, 3, 3)),
        layer("cp", (64, 32, 3, 3)),
        layer("sp", (64, 32, 3, 3)),
        layer("blocks.0", (8, 8)),
        layer("single", (8, 8)),
    ]
    final = [
        layer("fc.0", (75, 784)),
        layer("fc.1", (300, 75)),  # SVD
        layer("conv.0", (16, 32, 1, 1)),
        layer("conv.1", (24, 16, 3, 3)),
        layer("conv.2", (64, 24, 1, 1)),  # Tucker
        layer("cp.0", (8, 32, 1, 1)),
        layer("cp.1", (8, 1, 3, 1)),
        layer("cp.2", (8, 1, 1, 3)),
        layer("cp.3", (64, 8, 1, 1)),  # CP
        layer("sp.1", (64, 10, 1, 3)),
        layer("sp.0", (10, 32, 3, 1)),  # spatial SVD, listed out of order
        layer("blocks.0", (8, 8)),  # a numbered layer that exists on both sides is not a factor
        layer("single.0", (8, 8)),  # one child is a renamed layer, not a factorization
    ]
    found = {f.name: f for f in factorized_layers(baseline, final)}
    assert set(found) == {"fc", "conv", "cp", "sp"}
    assert found["fc"].ranks == (75,) and found["fc"].full_ranks == (300,)
    assert found["fc"].label() == "rank 75 of 300"
    assert found["fc"].kept == pytest.approx((75 * 784 + 300 * 75) / (300 * 784))
    assert found["conv"].ranks == (16, 24) and found["conv"].full_ranks == (32, 64)
    assert found["conv"].label() == "ranks 16, 24 of 32, 64"
    assert found["cp"].ranks == (8,) and found["cp"].full_ranks is None and found["cp"].label() == "rank 8"
    assert found["sp"].factors == ("sp.0", "sp.1") and found["sp"].ranks == (10,)
    assert found["sp"].full_ranks == (min(32 * 3, 64 * 3),)
    svg = plots.ranks_plot(list(found.values()))
    assert bars(parse(svg), "ranks-bar") == 4 and "rank 75 of 300" in svg


def test_sensitivity_plot_has_a_curve_per_layer_and_technique():
    sensitivity, _, _ = synthetic_search_files()
    root = parse(plots.sensitivity_plot(sensitivity))
    assert [points(root, f"sensitivity-curve-{i}") for i in range(4)] == [3, 3, 3, 3]
    assert by_id(root, "sensitivity-baseline-0") is not None and by_id(root, "sensitivity-baseline-1") is not None
    assert by_id(root, "sensitivity-baseline-2") is None  # one panel per technique
    # points are drawn in strength order although the file lists 0.9, 0.5, 0.7
    xs = [float(u.get("x")) for u in by_id(root, "sensitivity-curve-0").iter(f"{SVG}use")]
    assert xs == sorted(xs)


def test_pareto_plot_marks_front_chosen_and_budget():
    _, trials, search = synthetic_search_files()
    root = parse(plots.pareto_plot(trials, search))
    assert points(root, "pareto-meets") == 8 and points(root, "pareto-misses") == 2  # size <= 2000
    assert points(root, "pareto-front") == 4 and points(root, "pareto-chosen") == 1
    assert by_id(root, "pareto-budget") is not None


def test_pareto_plot_with_missing_optional_data():
    _, trials, search = synthetic_search_files()
    root = parse(plots.pareto_plot(trials))  # trials only: no search.json yet (search still running)
    assert points(root, "pareto-meets") + points(root, "pareto-misses") == 10
    assert points(root, "pareto-front") == 0 and points(root, "pareto-chosen") == 0
    latency = {**search, "objective": "latency", "chosen": 9, "pareto": [0, 9]}
    svg = plots.pareto_plot(trials, latency)  # trial 9 has no latency: left out, and said so
    root = parse(svg)
    assert points(root, "pareto-meets") + points(root, "pareto-misses") == 9
    assert points(root, "pareto-chosen") == 0 and points(root, "pareto-front") == 1
    assert by_id(root, "pareto-budget") is None  # no latency budget was set
    assert "1 trials without it not shown" in svg


def test_user_text_is_not_mathtext_and_style_is_isolated():
    import matplotlib

    matplotlib.rcParams["lines.linewidth"] = 7.0  # a user's setting must neither leak in nor be lost
    try:
        rows = [layer("price$usd$", (4, 4), sparsity=0.5)]
        svg = plots.sparsity_plot(rows, rows)
        assert "price$usd$" in svg  # drawn as typed, not parsed as $math$
        assert matplotlib.rcParams["lines.linewidth"] == 7.0
        assert plots.steps_plot(make_report()) == plots.steps_plot(make_report())  # deterministic
        assert "stroke-width: 7" not in plots.steps_plot(make_report())
    finally:
        matplotlib.rcdefaults()


def test_html_escapes_user_strings_and_ids_are_unique():
    rep = make_report(task=HOSTILE, note=HOSTILE)
    rep["final"]["layers"][-1]["name"] = HOSTILE
    rep["versions"]["torch"] = HOSTILE
    sensitivity, trials, search = synthetic_search_files(metric_name=HOSTILE)
    page = build_html(RunFiles(report=rep, sensitivity=sensitivity, trials=trials, search=search))
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;" in page and "&lt;img src=x" in page
    found = ids(page)
    assert len(found) == len(set(found)), "duplicate element ids across inline SVGs"
    for name in ("steps", "sparsity", "bits", "ranks", "sensitivity", "pareto"):
        assert f'id="plot-{name}"' in page
    # self-contained: every reference is to an element of the page itself
    assert all(ref.startswith("#") for ref in re.findall(r'(?:src|href)="([^"]*)"', page))
    assert re.search(r"url\((?!#)", page) is None


def test_html_without_layers_or_search_files():
    rep = make_report()
    rep["baseline"]["layers"], rep["final"]["layers"] = [], []
    page = build_html(RunFiles(report=rep))
    assert 'id="plot-steps"' in page
    for name in ("sparsity", "bits", "ranks", "sensitivity", "pareto"):
        assert f'id="plot-{name}"' not in page


def test_recipe_listing_loads_back_as_the_same_recipe():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from nncompress.core.recipe import describe_recipe, parse_recipe

    recipe = [
        {
            "kind": "magnitude-prune",
            "settings": {
                "sparsity": 0.9,
                "threshold": None,
                "exclude": ["fc3"],
                "scope": "global",
                "keep_first_conv": True,
            },
        },
        {"kind": "finetune", "settings": {"epochs": 0.5, "lr": 5e-4}},
    ]
    text = recipe_toml(recipe)
    assert "# threshold = null" in text and has_nulls(recipe)
    rebuilt = json.loads(json.dumps(describe_recipe(parse_recipe(tomllib.loads(text)))))
    assert rebuilt[0]["settings"]["exclude"] == ["fc3"] and rebuilt[1]["settings"]["lr"] == 5e-4
    exact = json.loads(json.dumps(describe_recipe(parse_recipe(json.loads(recipe_json(recipe))))))
    for mine, theirs in zip(recipe, exact):
        assert {k: theirs["settings"][k] for k in mine["settings"]} == mine["settings"]


def test_load_run_checks_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no report.json"):
        load_run(tmp_path)
    rep = make_report()
    (tmp_path / "report.json").write_text(json.dumps(rep))
    assert load_run(tmp_path).trials is None
    sensitivity, trials, search = synthetic_search_files()
    write_search_files(tmp_path, sensitivity, trials, search)
    files = load_run(tmp_path)
    assert len(files.trials) == 10 and files.search["chosen"] == 5
    # a kill mid-write leaves a last line without its newline: not a trial
    text = "".join(json.dumps(t) + "\n" for t in trials) + '{"trial": 10, "sta'
    assert len(parse_trials(text)) == 10
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        parse_trials(json.dumps(trials[0]) + "\n{oops\n" + json.dumps(trials[1]) + "\n")
    with pytest.raises(ValueError, match="line 1 lacks 'meets_budget'"):
        parse_trials(json.dumps({k: v for k, v in trials[0].items() if k != "meets_budget"}) + "\n")
    del search["chosen"]
    (tmp_path / "search.json").write_text(json.dumps(search))
    with pytest.raises(ValueError, match=r"search.json lacks 'chosen'"):
        load_run(tmp_path)


def test_render_html_is_atomic(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(make_report()))
    path = render_html(tmp_path)
    assert path == tmp_path / "report.html" and path.read_text().startswith("<!DOCTYPE html>")
    before = path.read_text()
    (tmp_path / "sensitivity.json").write_text('{"metric": {}, "curves": []}')  # malformed: no baseline_metric
    with pytest.raises(ValueError, match="baseline_metric"):
        render_html(tmp_path)
    assert path.read_text() == before  # the old page is untouched, and no temporary file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json", "sensitivity.json"]


def test_import_does_not_load_matplotlib():
    code = "import sys, nncompress, nncompress.report, nncompress.io.run; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_report_command_rewrites_the_page(tmp_path, capsys):
    from nncompress.cli.main import main

    (tmp_path / "report.json").write_text(json.dumps(make_report()))
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "size on disk" in out and out.rstrip().endswith(f"wrote {tmp_path / 'report.html'}")
    assert 'id="plot-ranks"' in (tmp_path / "report.html").read_text()
    (tmp_path / "search.json").write_text("{")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nncompress: error: ") and "search.json is not valid JSON" in err and err.count("\n") == 1
