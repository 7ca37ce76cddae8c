"""Reading a run folder for the HTML report: report.json, and the search files when present.

``report.json`` is the DESIGN.md report contract; ``sensitivity.json``, ``trials.jsonl`` and
``search.json`` are written by ``nncompress search`` (formats in the search module's docs). Each is
checked for the fields the report draws, so a malformed file fails with one line naming the file
and the field, not with a traceback from deep inside a plot.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_JSON, SENSITIVITY_JSON, TRIALS_JSONL, SEARCH_JSON = (
    "report.json",
    "sensitivity.json",
    "trials.jsonl",
    "search.json",
)


@dataclass(frozen=True)
class RunFiles:
    """A run folder's parsed files; the search files are ``None`` when the folder has none."""

    report: dict[str, Any]
    sensitivity: dict[str, Any] | None = None
    trials: list[dict[str, Any]] | None = None
    search: dict[str, Any] | None = None


def _require(data: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(repr(k) for k in missing)}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def check_report(data: Any, where: str = REPORT_JSON) -> dict[str, Any]:
    """``data`` if it has what the report draws: task, baseline and final figures, steps."""
    _require(data, ("task", "baseline", "final"), where)
    for side in ("baseline", "final"):
        _require(data[side], ("metric", "params", "nonzero_params", "size_bytes", "macs"), f"{where} {side}")
        _require(data[side]["metric"], ("name", "value"), f"{where} {side}.metric")
    for i, step in enumerate(data.get("steps", [])):
        _require(step, ("kind", "metric", "size_bytes"), f"{where} steps[{i}]")
    return data


def check_sensitivity(data: Any, where: str = SENSITIVITY_JSON) -> dict[str, Any]:
    """``data`` if it follows the sensitivity.json format (curves of points per layer and technique)."""
    _require(data, ("metric", "baseline_metric", "curves"), where)
    for i, curve in enumerate(data["curves"]):
        _require(curve, ("layer", "technique", "points"), f"{where} curves[{i}]")
        for j, point in enumerate(curve["points"]):
            _require(point, ("strength", "metric"), f"{where} curves[{i}].points[{j}]")
    return data


TRIAL_KEYS = ("trial", "params", "metric", "size_bytes", "macs", "latency_ms", "meets_budget")


def parse_trials(text: str, where: str = TRIALS_JSONL) -> list[dict[str, Any]]:
    """The trials of a trials.jsonl text. A last line without its newline is a write that a kill cut
    short (the log is appended line by line while the search runs) and is left out; any other
    unreadable line is an error."""
    lines = text.splitlines(keepends=True)
    trials = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not line.endswith("\n") and n == len(lines):
            break
        try:
            trial = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} line {n} is not JSON: {e}") from e
        _require(trial, TRIAL_KEYS, f"{where} line {n}")
        trials.append(trial)
    return trials


def check_search(data: Any, where: str = SEARCH_JSON) -> dict[str, Any]:
    """``data`` if it follows the search.json format (budget, objective, chosen and Pareto trial ids)."""
    _require(data, ("budget", "objective", "chosen", "pareto"), where)
    return data


def load_run(run_dir: str | os.PathLike) -> RunFiles:
    """Parse ``run_dir``'s report.json and whichever search files it holds.

    Raises:
        FileNotFoundError: the folder has no report.json.
        ValueError: a file is not valid JSON or lacks a field the report draws.
    """
    root = Path(run_dir)
    path = root / REPORT_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no report.json in {root} (give a folder written by `compress`, `demo` or `search`)")
    report = check_report(_read_json(path), str(path))
    sens = root / SENSITIVITY_JSON
    trials = root / TRIALS_JSONL
    search = root / SEARCH_JSON
    return RunFiles(
        report=report,
        sensitivity=check_sensitivity(_read_json(sens), str(sens)) if sens.is_file() else None,
        trials=parse_trials(trials.read_text(encoding="utf-8"), str(trials)) if trials.is_file() else None,
        search=check_search(_read_json(search), str(search)) if search.is_file() else None,
    )
