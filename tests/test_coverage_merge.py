"""benchmarks/coverage.py --merge: rerun cells replace the saved ones, the summary and the table follow."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def _coverage():
    spec = importlib.util.spec_from_file_location("coverage_bench", ROOT / "benchmarks" / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["coverage_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_merge_replaces_rerun_cells_and_recounts(tmp_path):
    cov = _coverage()
    rows = [
        {"model": "a", "cells": {"svd": {"status": "fail", "reason": "x"}, "onnx": {"status": "pass"}}},
        {"model": "b", "cells": {"svd": {"status": "pass"}, "onnx": {"status": "pass"}}},
    ]
    out = tmp_path / "coverage.json"
    out.write_text(json.dumps({"columns": ["svd", "onnx"], "settings": {"svd": {"rank": 0.5}}, "rows": rows}))
    rerun = [{"model": "a", "cells": {"svd": {"status": "pass"}}}]
    args = argparse.Namespace(why="a fix")
    merged, columns = cov.merge(out, rerun, ["svd"], args)
    data = json.loads(out.read_text())
    assert columns == ["svd", "onnx"] and merged[0]["cells"]["onnx"] == {"status": "pass"}
    assert data["rows"][0]["cells"]["svd"] == {"status": "pass"}
    assert data["summary"]["counts"] == {"pass": 4} and data["summary"]["pass_rate"] == 1.0
    assert data["settings"]["svd"] == cov.STEP_COLUMNS["svd"][1]
    assert data["reruns"][-1]["models"] == ["a"] and data["reruns"][-1]["why"] == "a fix"
    assert "4 pass, 0 partial, 0 fail of 4" in out.with_suffix(".md").read_text()
