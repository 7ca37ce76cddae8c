"""Where nncompress keeps its caches (decoded datasets, trained reference checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "NNCOMPRESS_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$NNCOMPRESS_CACHE`` (default ``~/.cache/nncompress``) joined with ``parts``, created."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nncompress")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
