"""Recipes: ordered lists of steps, in Python or in a TOML/JSON file.

A TOML recipe looks like::

    name = "prune-finetune"
    [[steps]]
    kind = "magnitude-prune"
    sparsity = 0.9
    [[steps]]
    kind = "finetune"
    epochs = 1

Ordering rules: every step declares the weight formats it can start from (``Step.accepts``) and
the one it leaves (``Step.produces``; see ``core/step.py``). ``check_order`` walks the recipe and
refuses, in one line naming both steps, e.g. pruning, factorizing, k-means or fine-tuning after a
step that packed the weights into low-bit codes or int8 kernels. Loading a recipe and
``compress()`` both check it before any slow work.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nncompress.core.step import FLOAT, STEPS, WEIGHT_FORMATS, Step, builtin_steps, step_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "recipes"


def builtin_recipes() -> dict[str, Path]:
    """Shipped recipes by name (file stem)."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.toml"))}


def parse_recipe(data: dict[str, Any], source: str = "recipe") -> list[Step]:
    """Steps from a parsed recipe document (``{"steps": [{kind: ..., ...}, ...]}``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: the top level must be a table with a list 'steps', got a {type(data).__name__}")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"{source}: expected a non-empty list 'steps' of tables with a 'kind'")
    out = []
    for i, item in enumerate(steps):
        if not isinstance(item, dict):
            raise ValueError(f"{source}: step {i + 1} is not a table of settings")
        if not isinstance(item.get("kind"), str):
            raise ValueError(
                f"{source}: step {i + 1}: 'kind' must be a step name (a string, see `nncompress steps`), "
                f"got {item.get('kind')!r}"
            )
        try:
            out.append(step_from_dict(item))
        except ValueError as e:
            raise ValueError(f"{source}: step {i + 1}: {e}") from e
    check_order(out, source)
    return out


def steps_accepting(fmt: str) -> list[str]:
    """Kinds of the registered steps that can start from weights in format ``fmt``."""
    builtin_steps()
    return sorted(kind for kind, cls in STEPS.items() if fmt in cls.accepts)


def check_order(steps: Sequence[Step], source: str = "recipe") -> None:
    """Raise ValueError when a step cannot start from the weight format that an earlier step left.

    Example:
        >>> from nncompress.prune import MagnitudePrune
        >>> from nncompress.quantize.kmeans import KMeansQuantize
        >>> check_order([MagnitudePrune(sparsity=0.9), KMeansQuantize()])  # fine: nothing raised
        >>> check_order([KMeansQuantize(), MagnitudePrune(sparsity=0.9)])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: recipe: step 2 'magnitude-prune' cannot follow step 1 'kmeans-quantize': ...
    """
    fmt, last, last_index = FLOAT, None, 0
    for i, step in enumerate(steps, start=1):
        if fmt not in step.accepts and last is not None:
            allowed = steps_accepting(fmt)
            after = ", ".join(allowed) if allowed else f"none ({last.kind} must be the last step that changes weights)"
            raise ValueError(
                f"{source}: step {i} {step.kind!r} cannot follow step {last_index} {last.kind!r}: "
                f"{last.kind} leaves {fmt} weights ({WEIGHT_FORMATS[fmt].description}) and {step.kind} "
                f"accepts {' or '.join(sorted(step.accepts))} weights; steps accepted after {last.kind}: {after}"
            )
        if step.produces is not None:
            fmt, last, last_index = step.produces, step, i


def load_recipe(spec: str | Path) -> list[Step]:
    """Steps from a recipe file (.toml or .json) or the name of a shipped recipe."""
    path = Path(spec)
    if not path.is_file():
        shipped = builtin_recipes()
        if str(spec) in shipped:
            path = shipped[str(spec)]
        else:
            raise FileNotFoundError(
                f"no recipe file {spec}; give a .toml/.json path or a shipped recipe ({', '.join(shipped) or 'none'})"
            )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save the recipe as UTF-8") from e
    except OSError as e:
        raise ValueError(f"{path} cannot be read: {e.strerror or e}") from e
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from e
    return parse_recipe(data, source=str(path))


def describe_recipe(steps: Sequence[Step]) -> list[dict[str, Any]]:
    """The recipe as data, as written into reports and artifacts."""
    return [s.describe() for s in steps]
