"""README.md's results block is exactly what benchmarks/readme_results.py makes of the committed JSON,
and the peer table's winner rule picks what its docstring says."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def readme_results():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("readme_results")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_readme_block_matches_the_committed_json(readme_results):
    text = readme_results.README.read_text()
    assert readme_results.BEGIN in text and readme_results.END in text
    expected = readme_results.replace_block(text, readme_results.generate())
    assert text == expected, "README.md's results block is stale: run python benchmarks/readme_results.py"


def test_replace_block_swaps_only_the_inside(readme_results):
    b, e = readme_results.BEGIN, readme_results.END
    assert readme_results.replace_block(f"top\n{b}\nold\n{e}\nbottom\n", "new") == f"top\n{b}\nnew\n{e}\nbottom\n"
    with pytest.raises(ValueError, match="results:begin"):
        readme_results.replace_block(f"{e}\n{b}\n", "new")  # markers out of order
    with pytest.raises(ValueError, match="results:begin"):
        readme_results.replace_block("no markers here", "new")


def _row(tool: str, headline: str, accuracy: float, size: int, latency: float) -> dict:
    side = {
        "metric": {"name": "accuracy", "value": accuracy, "higher_is_better": True},
        "size_bytes": size,
        "latency_ms": latency,
        "macs": 1,
    }
    return {
        "task": "t",
        "technique": "x",
        "headline": headline,
        "tool": tool,
        "method": "m",
        "baseline": dict(side),
        "result": side,
    }


@pytest.mark.parametrize(
    ("headline", "winner"),
    [
        ("metric", "b"),  # best accuracy (0.910 beats 0.906), whatever its size
        ("latency", "c"),  # 0.906 is within 0.5 points of 0.910: the fastest of the two
        ("size", "a"),  # smallest file within 0.5 points; "d" is smaller but 2 points worse
    ],
)
def test_mark_winners_follows_the_headline(readme_results, headline, winner):
    from peers._table import mark_winners  # benchmarks/ is on sys.path through the fixture

    rows = [
        _row("a", headline, 0.9060, 100, 2.0),
        _row("b", headline, 0.9100, 300, 3.0),
        _row("c", headline, 0.9060, 200, 1.0),
        _row("d", headline, 0.8900, 50, 0.5),
    ]
    mark_winners(rows)
    assert [r["tool"] for r in rows if r["wins"]] == [winner]


def test_metric_tie_goes_to_the_smaller_file(readme_results):
    from peers._table import mark_winners

    rows = [_row("big", "metric", 0.9100, 300, 1.0), _row("small", "metric", 0.9098, 100, 1.0)]
    mark_winners(rows)
    assert [r["tool"] for r in rows if r["wins"]] == ["small"]


def test_deep_compression_table_picks_the_smallest_peer_at_no_lower_metric(readme_results):
    base = {"metric": {"name": "accuracy", "value": 0.9111}}
    ours = {
        "task": "t",
        "baseline": base,
        "result": {"metric": {"name": "accuracy", "value": 0.9070}, "size_bytes": 7000, "dense_fp32_bytes": 246824},
        "settings": {
            "reloaded_metric": 0.9070,
            "seed_metrics": {"0": 0.9070, "1": 0.9050, "2": 0.9090},
            "paper_mnist": {"model": "LeNet-5", "x_smaller": 39, "error_before": 0.0080, "error_after": 0.0074},
        },
    }
    peers = [
        _row("small-but-worse", "size", 0.9000, 5000, 1.0),
        _row("big", "size", 0.9100, 70000, 1.0),
        _row("smaller", "size", 0.9080, 60000, 1.0),
        _row("nncompress", "size", 0.9110, 1000, 1.0),
    ]
    table = readme_results.deep_compression_markdown([ours], peers)
    row = table.splitlines()[2]
    assert "35.3× (7,000 B)" in row and "(−0.41)" in row and "39×, +0.06" in row
    assert "90.70% ± 0.20 (3 seeds)" in row
    assert "smaller `m`: 58.6 KB (4.1×)" in row  # not the worse peer, not our own row
    assert "none in peers.json" in readme_results.deep_compression_markdown([ours], []).splitlines()[2]
