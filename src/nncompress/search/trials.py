"""The trial log ``DIR/trials.jsonl``: one JSON object per finished trial, appended and fsynced
as it finishes, so a search killed midway keeps every trial it had finished.

A line cut short by a kill is not a trial: :func:`read_trials` skips it and
:func:`repair_log` removes it before new trials are appended.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nncompress.io.atomic import atomic_write_text
from nncompress.search.space import Params

TRIALS_NAME = "trials.jsonl"


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate (a line of trials.jsonl; ``metric`` is on the val split)."""

    trial: int
    stage: str
    params: Params
    metric: float
    size_bytes: int
    macs: int
    latency_ms: float | None
    meets_budget: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def append_trial(path: str | os.PathLike, trial: Trial) -> None:
    """Append ``trial`` as one line and fsync, so it survives the process being killed."""
    line = json.dumps(trial.to_dict(), sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _parse(lines: list[str]) -> tuple[list[Trial], bool]:
    """The trials of complete lines, and whether a cut-short or unreadable line was dropped."""
    trials, dropped = [], False
    for line in lines:
        if not line.endswith("\n"):
            dropped = True  # the write a kill interrupted
            continue
        try:
            trials.append(Trial.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"trial log line is not a trial ({e}): {line[:80]!r}") from e
    return trials, dropped


def read_trials(path: str | os.PathLike) -> list[Trial]:
    """The finished trials in ``path`` (none if it does not exist), in the order written."""
    p = Path(path)
    if not p.exists():
        return []
    return _parse(p.read_text(encoding="utf-8").splitlines(keepends=True))[0]


def repair_log(path: str | os.PathLike) -> list[Trial]:
    """Read the log, removing a last line cut short by a kill (rewritten atomically); returns the trials."""
    p = Path(path)
    if not p.exists():
        return []
    trials, dropped = _parse(p.read_text(encoding="utf-8").splitlines(keepends=True))
    if dropped:
        atomic_write_text(p, "".join(json.dumps(t.to_dict()) + "\n" for t in trials))
    return trials
