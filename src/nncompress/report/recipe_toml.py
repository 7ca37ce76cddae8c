"""A report's recipe written back as a TOML recipe file, so the run can be repeated from the page."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal: strings, booleans, integers, floats, arrays and inline tables.

    Raises:
        ValueError: ``value`` has no TOML form (``None`` or another type).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-trip form; TOML accepts 0.5, 5e-04, 1e+20
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string uses the same escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(
        f"{value!r} ({type(value).__name__}) has no TOML form; accepted: str, bool, int, float, list, dict"
    )


def recipe_toml(recipe: Sequence[dict[str, Any]]) -> str:
    """The recipe (report.json's ``recipe``: ``[{"kind": ..., "settings": {...}}]``) as a recipe file.

    TOML has no null: a setting that was ``None`` becomes a comment, and leaving it out gives the
    step's default, which is not always ``None`` (see :func:`has_nulls`; the JSON form is exact).

    Example:
        >>> print(recipe_toml([{"kind": "magnitude-prune", "settings": {"sparsity": 0.9, "threshold": None}}]))
        [[steps]]
        kind = "magnitude-prune"
        sparsity = 0.9
        # threshold = null
        <BLANKLINE>
    """
    lines: list[str] = []
    for step in recipe:
        lines += ["[[steps]]", f"kind = {toml_value(step['kind'])}"]
        for key, value in step.get("settings", {}).items():
            name = key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)
            lines.append(f"# {name} = null" if value is None else f"{name} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def has_nulls(recipe: Sequence[dict[str, Any]]) -> bool:
    """Whether any setting is ``None``, so that the TOML form may not repeat the run exactly."""
    return any(v is None for step in recipe for v in step.get("settings", {}).values())


def recipe_json(recipe: Sequence[dict[str, Any]]) -> str:
    """The recipe as an exact JSON recipe file (``--recipe recipe.json``), nulls included."""
    steps = [{"kind": step["kind"], **step.get("settings", {})} for step in recipe]
    return json.dumps({"steps": steps}, indent=2) + "\n"
