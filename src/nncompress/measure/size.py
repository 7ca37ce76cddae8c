"""Parameter counts and byte sizes: counted from the tensors and from the artifact file on disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torch import nn


def stored_weight_counts(module: nn.Module) -> tuple[int, int] | None:
    """(elements, non-zeros) of the weights a module keeps outside ``nn.Parameter``s, or None.

    Quantized modules store weights as packed codes (buffers) or in packed-parameter objects;
    they are still the model's parameters. A module reports them through a method
    ``stored_weight_counts() -> (elements, non_zeros)``; torch.ao's int8 Conv/Linear are read
    directly.
    """
    method = getattr(module, "stored_weight_counts", None)
    if callable(method):
        return method()
    from nncompress.io.quantized import _is_packed_module

    if _is_packed_module(module):
        weight, bias = module._weight_bias()
        values = [weight.int_repr()] + ([bias.detach()] if bias is not None else [])
        return sum(v.numel() for v in values), sum(int(v.count_nonzero()) for v in values)
    return None


def _counts(model: nn.Module) -> tuple[int, int]:
    """(elements, non-zeros) of every parameter, stored-weight modules included, each counted once."""
    total = nonzero = 0
    seen: set[int] = set()
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        stored = stored_weight_counts(module)
        if stored is not None:
            total, nonzero = total + stored[0], nonzero + stored[1]
            skip.append(f"{name}." if name else "")
            continue
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
                nonzero += int(p.detach().count_nonzero())
    return total, nonzero


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (tied parameters counted once; packed/quantized weights
    counted as the elements they hold)."""
    return _counts(model)[0]


def count_nonzero(model: nn.Module) -> int:
    """Number of parameter elements that are not exactly zero."""
    return _counts(model)[1]


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
