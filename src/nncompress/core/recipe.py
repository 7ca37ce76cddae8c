"""Recipes: ordered lists of steps, in Python or in a TOML/JSON file.

A TOML recipe looks like::

    name = "prune-finetune"
    [[steps]]
    kind = "magnitude-prune"
    sparsity = 0.9
    [[steps]]
    kind = "finetune"
    epochs = 1
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nncompress.core.step import Step, step_from_dict

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
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"{source}: expected a non-empty list 'steps' of tables with a 'kind'")
    out = []
    for i, item in enumerate(steps):
        if not isinstance(item, dict):
            raise ValueError(f"{source}: step {i + 1} is not a table of settings")
        try:
            out.append(step_from_dict(item))
        except ValueError as e:
            raise ValueError(f"{source}: step {i + 1}: {e}") from e
    return out


def load_recipe(spec: str | Path) -> list[Step]:
    """Steps from a recipe file (.toml or .json) or the name of a shipped recipe."""
    path = Path(spec)
    if not path.is_file():
        shipped = builtin_recipes()
        if str(spec) in shipped:
            path = shipped[str(spec)]
        else:
            raise FileNotFoundError(
                f"no recipe file {spec}; give a .toml/.json path or a shipped recipe "
                f"({', '.join(shipped) or 'none'})"
            )
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}"
        ) from e
    return parse_recipe(data, source=str(path))


def describe_recipe(steps: Sequence[Step]) -> list[dict[str, Any]]:
    """The recipe as data, as written into reports and artifacts."""
    return [s.describe() for s in steps]
