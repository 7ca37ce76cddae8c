"""One-line ValueErrors for bad settings: each names the setting, the value, and what is accepted.

Example:
    >>> check_count("rounds", 3)
    3
    >>> check_bits("bits", 1)
    Traceback (most recent call last):
    ...
    ValueError: bits must be an integer in [2, 8], got 1 (1 bit: use the 'binarize' step)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

FLOAT_BITS = 32  # a per-layer bits value that keeps the layer in float


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """Raise ValueError unless ``value`` is an integer >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_flag(name: str, value: Any) -> bool:
    """Raise ValueError unless ``value`` is True or False (not "yes", "no", 0 or 1)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_number(
    name: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float:
    """Raise ValueError unless ``value`` is a finite real number (bools refused) within the bounds;
    ``low_open`` makes the lower bound strict."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = ""
        if low is not None:
            bounds += f" {'>' if low_open else '>='} {low:g}"
        if high is not None:
            bounds += (" and" if low is not None else "") + f" <= {high:g}"
        wanted = f"a number{bounds}" if bounds else "a finite number"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return float(value)


def check_bits(name: str, bits: Any, *, allow_float: bool = False, allow_none: bool = False) -> int | None:
    """Raise ValueError unless ``bits`` is an integer in [2, 8]; ``allow_float`` also accepts 32 (keep
    the layer float) and ``allow_none`` accepts None (float)."""
    if bits is None and allow_none:
        return None
    is_int = not isinstance(bits, bool) and isinstance(bits, int)
    ok = is_int and (2 <= bits <= 8 or (allow_float and bits == FLOAT_BITS))
    if not ok:
        extra = " or 32 (keep float)" if allow_float else ""
        extra += " or None (float)" if allow_none else ""
        hint = " (1 bit: use the 'binarize' step)" if bits in (0, 1) and not isinstance(bits, bool) else ""
        raise ValueError(f"{name} must be an integer in [2, 8]{extra}, got {bits!r}{hint}")
    return bits


def check_choice(name: str, value: Any, accepted: Iterable[Any]) -> Any:
    """Raise ValueError unless ``value`` is one of ``accepted``."""
    accepted = tuple(accepted)
    if isinstance(value, (list, dict, set)) or value not in accepted:
        raise ValueError(f"{name}={value!r} is not supported; accepted: {', '.join(map(repr, accepted))}")
    return value


class NothingToDo(ValueError):
    """A step found nothing it can change in this model; the message names why (which layer kinds it
    handles, which it found). A step that changes nothing is an error, never a silent success."""
