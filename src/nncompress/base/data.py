"""The first batches of a data split, for calibration (observers, Hessians, activation statistics)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def as_args(inputs: Any) -> tuple[Any, ...]:
    """A batch's inputs as a tuple of positional arguments."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def first_batches(
    train: Iterable[Any], count: int, task_name: str = "", purpose: str = "int8 calibration"
) -> list[Any]:
    """The first ``count`` ``(inputs, targets)`` batches of ``train``; ValueError when it has none."""
    out = []
    for batch in train:
        out.append(batch)
        if len(out) >= count:
            break
    if not out:
        raise ValueError(
            f"{purpose} needs data: task {task_name!r} has no train batches (give the Task a non-empty train split)"
        )
    return out


def calibration_inputs(train: Iterable[Any], batches: int, task_name: str = "") -> list[tuple[Any, ...]]:
    """The inputs of the first ``batches`` train batches, each as a tuple of positional args."""
    return [as_args(batch[0]) for batch in first_batches(train, batches, task_name)]
