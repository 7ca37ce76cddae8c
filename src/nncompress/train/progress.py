"""Progress bars that appear on a terminal and stay silent in logs, tests and CI."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    """True when stderr is a terminal and NNCOMPRESS_PROGRESS is not 0."""
    setting = os.environ.get("NNCOMPRESS_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no")
    return sys.stderr.isatty()


def progress(total: int, desc: str) -> tqdm:
    """A tqdm bar (disabled when progress is off)."""
    return tqdm(total=total, desc=desc, disable=not progress_enabled(), leave=False)
