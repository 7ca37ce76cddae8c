"""The global switch between fast kernels and the reference (dequantized float32) path.

``NNCOMPRESS_KERNELS=reference`` (or ``off``) in the environment forces the reference path for the
whole process; ``auto`` (the default) lets each packed layer run on the fastest kernel that claims
it. ``use_kernels(False)`` overrides the environment, either for the rest of the process or, used
as a context manager, inside the ``with`` block only (like ``torch.set_grad_enabled``).

Example:
    >>> with use_kernels(False):
    ...     kernels_enabled()
    False
"""

from __future__ import annotations

import functools
import os
from types import TracebackType

ENV_VAR = "NNCOMPRESS_KERNELS"
ON_VALUES = ("", "auto", "1", "on", "kernels")
OFF_VALUES = ("reference", "off", "0")

_override: list[bool | None] = [None]  # set by use_kernels; None: follow the environment


def _from_env() -> bool:
    return _parse(os.environ.get(ENV_VAR, ""))


@functools.lru_cache(maxsize=8)
def _parse(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ON_VALUES:
        return True
    if value in OFF_VALUES:
        return False
    accepted = ", ".join(repr(v) for v in ("auto", "reference"))
    raise ValueError(f"{ENV_VAR}={value!r} is not understood; accepted: {accepted} (or on/off, 1/0)")


def kernels_enabled() -> bool:
    """True when packed layers may run on fast kernels (the switch, else the environment)."""
    override = _override[0]
    return _from_env() if override is None else override


class use_kernels:  # noqa: N801 (a function-like switch, as torch.set_grad_enabled)
    """Enable or disable the fast kernels: for the process, or inside a ``with`` block.

    Args:
        enabled: False forces every packed layer onto the reference path; True lets kernels run.

    Example:
        >>> use_kernels(False)  # doctest: +ELLIPSIS
        <...use_kernels object at ...>
        >>> kernels_enabled()
        False
        >>> _ = use_kernels(True)
    """

    def __init__(self, enabled: bool = True) -> None:
        if not isinstance(enabled, bool):
            raise ValueError(f"use_kernels takes True or False, got {enabled!r}")
        self._previous = _override[0]
        _override[0] = enabled

    def __enter__(self) -> use_kernels:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        _override[0] = self._previous
