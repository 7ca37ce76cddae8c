"""Layer patterns (``exclude``, ``layers``): one meaning for every step.

A pattern is an exact module name, or a regular expression that fully matches a module name. A
pattern selects the module it matches **and all of that module's children**: ``exclude=("layer1",)``
leaves ``layer1.0.conv1`` alone, as does ``exclude=(r"layer\\d",)``. Patterns are checked against the
model before any work: one that names no module is a ValueError listing the layers.

Example:
    >>> is_excluded("layer1.0.conv1", ("layer1",)), is_excluded("layer10", ("layer1",))
    (True, False)
    >>> is_excluded("blocks.3.fc1", (r"blocks\\.\\d\\.fc\\d",))
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from nncompress.base.modules import weight_layers


def normalize_patterns(value: object, setting: str) -> tuple[str, ...]:
    """A tuple of valid patterns from a string or a list of strings; ValueError for anything else."""
    if isinstance(value, str):
        items: tuple[object, ...] = (value,)
    else:
        try:
            items = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            accepted = "module names or regexes (a string or a list of them)"
            raise ValueError(f"{setting} takes {accepted}, got {value!r}") from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{setting} takes module names or regexes (non-empty strings), got {item!r}")
        try:
            re.compile(item)
        except re.error as e:
            raise ValueError(f"{setting} entry {item!r} is not a valid regex: {e}") from e
    return items  # type: ignore[return-value]


def matches(name: str, pattern: str) -> bool:
    """True when ``name`` equals ``pattern`` or fully matches it as a regex."""
    return name == pattern or re.fullmatch(pattern, name) is not None


def is_excluded(name: str, patterns: tuple[str, ...]) -> bool:
    """True when ``name`` or one of its parents equals or fully matches a pattern."""
    if not patterns:
        return False
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(matches(p, pat) for p in prefixes for pat in patterns)


def check_patterns(
    model: nn.Module,
    patterns: tuple[str, ...],
    setting: str,
    *,
    list_layers: Callable[[nn.Module], list[tuple[str, nn.Module]]] = weight_layers,
    parameters: bool = False,
) -> None:
    """Raise ValueError for a name/regex that names no module of ``model`` (the error lists ``list_layers``);
    with ``parameters``, a parameter name (``cls_token``) counts too."""
    names = [n for n, _ in model.named_modules() if n]
    if parameters:
        names += [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if any(matches(n, pattern) for n in names):
            continue
        layers = ", ".join(n for n, _ in list_layers(model))
        raise ValueError(f"{setting} entry {pattern!r} names no module (exact name or regex); layers are: {layers}")


def select(
    layers: list[tuple[str, nn.Module]], *, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> list[tuple[str, nn.Module]]:
    """The ``layers`` inside ``include`` (empty: all) and outside ``exclude``, in order."""
    return [(n, m) for n, m in layers if (not include or is_excluded(n, include)) and not is_excluded(n, exclude)]


def matched_modules(model: nn.Module, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The outermost module names ``patterns`` select (a selected module's children are implied), for
    code that takes plain names with name-or-prefix meaning (torch.ao's qconfig mapping, ONNX nodes)."""
    chosen: list[str] = []
    for name, _ in model.named_modules():
        if name and is_excluded(name, patterns) and not any(name.startswith(c + ".") for c in chosen):
            chosen.append(name)
    return tuple(chosen)
