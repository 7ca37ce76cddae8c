"""Parameter counts and byte sizes: counted from the tensors and from the artifact file on disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torch import nn


def _unique_parameters(model: nn.Module) -> list:
    return list(model.parameters())  # parameters() already skips tied duplicates


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (tied parameters counted once)."""
    return sum(p.numel() for p in _unique_parameters(model))


def count_nonzero(model: nn.Module) -> int:
    """Number of parameter elements that are not exactly zero."""
    return sum(int(p.detach().count_nonzero()) for p in _unique_parameters(model))


def dense_fp32_bytes(model: nn.Module) -> int:
    """Bytes the parameters would take stored dense in float32 (the uncompressed reference)."""
    return 4 * count_params(model)


def artifact_bytes(model: nn.Module) -> int:
    """Size of the model saved as an artifact, by writing it to a temporary file and stat-ing it."""
    from nncompress.io.artifact import save

    with tempfile.TemporaryDirectory(prefix="nncompress-size-") as tmp:
        path = save(model, Path(tmp) / "model.ncz")
        return os.path.getsize(path)
