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


def layer_stats(model: nn.Module) -> list[dict]:
    """Per-layer figures of each module owning a ``weight`` (Linear, Conv, norm, embedding...).

    One row per module: name, type, weight shape, its parameters (weight and bias), non-zeros,
    and the weight's sparsity — the per-layer table of the report. Tied weights are listed once.
    """
    rows, seen = [], set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or id(weight) in seen:
            continue
        seen.add(id(weight))
        own = list(module.parameters(recurse=False))
        w = weight.detach()
        rows.append({
            "name": name or "(model)",
            "type": type(module).__name__,
            "shape": list(w.shape),
            "params": sum(p.numel() for p in own),
            "nonzero_params": sum(int(p.detach().count_nonzero()) for p in own),
            "weight_sparsity": 1.0 - int(w.count_nonzero()) / max(1, w.numel()),
        })
    return rows
