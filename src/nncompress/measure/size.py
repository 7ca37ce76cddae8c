"""Parameter counts and byte sizes: counted from the tensors and from the artifact file on disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
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
    from nncompress.io.quantized import is_dynamic_int8_rnn, is_torch_ao_packed

    if is_torch_ao_packed(module):
        weight, bias = module._weight_bias()
        values = [weight.int_repr()] + ([bias.detach()] if bias is not None else [])
    elif is_dynamic_int8_rnn(module):  # per-gate int8 matrices and float biases, in cell-params objects
        found = module._weight_bias()
        values = [w.int_repr() for w in found["weight"].values()]
        values += [b.detach() for b in found["bias"].values() if b is not None]
    else:
        return None
    return sum(v.numel() for v in values), sum(int(v.count_nonzero()) for v in values)


def tensor_nonzero(t: torch.Tensor) -> int:
    """Non-zero elements of ``t``; tensor subclasses without ``count_nonzero`` (torchao's
    quantized weights) are counted on their ``dequantize()``d values."""
    t = t.detach()
    try:
        return int(t.count_nonzero())
    except (NotImplementedError, RuntimeError, TypeError):
        if callable(getattr(t, "dequantize", None)):
            return int(t.dequantize().count_nonzero())
        raise


def stored_weight_numel(module: nn.Module) -> int | None:
    """Elements of the weights a module keeps outside ``nn.Parameter``s (``stored_weight_counts``'s
    first figure), without decoding them where the module says its size: a packed layer's
    ``_weight_numel()`` plus its bias. None for an ordinary module."""
    numel = getattr(module, "_weight_numel", None)
    if callable(getattr(module, "stored_weight_counts", None)) and callable(numel):
        bias = getattr(module, "bias", None)
        return int(numel()) + (bias.numel() if isinstance(bias, torch.Tensor) else 0)
    counts = stored_weight_counts(module)
    return None if counts is None else counts[0]


def _counts(model: nn.Module, nonzero: bool = True) -> tuple[int, int]:
    """(elements, non-zeros) of every parameter, stored-weight modules included, each counted once;
    with ``nonzero=False`` the second figure is 0 and packed weights are not decoded to count it."""
    total = nonzeros = 0
    seen: set[int] = set()
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        stored = stored_weight_counts(module) if nonzero else (stored_weight_numel(module), 0)
        if stored is not None and stored[0] is not None:
            total, nonzeros = total + stored[0], nonzeros + stored[1]
            skip.append(f"{name}." if name else "")
            continue
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
                nonzeros += tensor_nonzero(p) if nonzero else 0
    return total, nonzeros


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (tied parameters counted once; packed/quantized weights
    counted as the elements they hold, without decoding them)."""
    return _counts(model, nonzero=False)[0]


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


# every per-layer row carries these keys (measure.table and report.json read them)
LAYER_DEFAULTS: dict[str, Any] = {"format": None, "bits": None, "granularity": None, "group_size": None}


def _dtype_format(dtype: torch.dtype) -> dict[str, Any]:
    """Format and bits of a weight stored plainly in ``dtype`` (``torch.float16`` -> float16, 16)."""
    return {"format": str(dtype).removeprefix("torch."), "bits": dtype.itemsize * 8}


def _sparsity(weight: torch.Tensor) -> float:
    """Fraction of the weight's elements that are exactly zero."""
    return 1.0 - tensor_nonzero(weight) / max(1, weight.numel())


def _row(name: str, module: nn.Module, weight: torch.Tensor, counts: tuple[int, int], **fmt: Any) -> dict[str, Any]:
    """One row of the per-layer table: ``fmt`` gives format, bits and (for quantized weights) granularity."""
    return {
        "name": name or "(model)",
        "type": type(module).__name__,
        "shape": list(weight.shape),
        "params": counts[0],
        "nonzero_params": counts[1],
        "weight_sparsity": _sparsity(weight),
        **LAYER_DEFAULTS,
        **fmt,
    }


def _prefixed(path: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows a module reported about itself, named from the model's root and with every layer key."""
    return [{**LAYER_DEFAULTS, **row, "name": f"{path}.{row['name']}" if path else row["name"]} for row in rows]


def _kernel_name(module: nn.Module) -> str | None:
    """The fast kernel that runs a packed layer on this machine (None: decoded to float32)."""
    from nncompress.runtime import kernel_choice  # lazy: the runtime layer sits above measure

    choice = kernel_choice(module)
    return choice.name if choice is not None else None


def _stored_rows(name: str, module: nn.Module) -> list[dict[str, Any]] | None:
    """Rows of a module whose weights are not ``nn.Parameter``s, or None for an ordinary module.

    Three kinds: modules with ``layer_rows()`` (an ONNX Runtime graph: one row per weighted node),
    packed layers with ``describe()`` and ``dequantized_weight()`` (quantize/layers.py), and
    torch.ao int8 modules (weights in packed params).
    """
    method = getattr(module, "layer_rows", None)
    if callable(method):
        return _prefixed(name, method())
    if callable(getattr(module, "describe", None)) and callable(getattr(module, "dequantized_weight", None)):
        counts = stored_weight_counts(module)
        assert counts is not None, f"{type(module).__name__} has describe() but no stored_weight_counts()"
        fmt = {**module.describe(), "kernel": _kernel_name(module)}
        return [_row(name, module, module.dequantized_weight(), counts, **fmt)]
    from nncompress.io.quantized import is_torch_ao_packed

    if is_torch_ao_packed(module):
        weight = module._weight_bias()[0]
        channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        fmt = {"format": "int8", "bits": 8, "granularity": "channel" if channel else "tensor"}
        return [_row(name, module, weight.dequantize(), stored_weight_counts(module), **fmt)]
    return None


def layer_stats(model: nn.Module) -> list[dict]:
    """Per-layer figures of each module owning a weight (Linear, Conv, norm, embedding, quantized...).

    One row per layer: name, type, weight shape, its parameters (weight and bias), non-zeros, the
    weight's sparsity, and how the weight is stored: ``format`` (float32, float16, bfloat16, int8,
    int-symmetric, uint-affine, codebook, binary), ``bits`` per weight, ``granularity`` and
    ``group_size`` of quantization scales (None for float weights) — the per-layer table of the
    report. Tied weights are listed once; modules inside a quantized module are not listed apart.
    """
    rows, seen, skip = [], set(), []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        stored = _stored_rows(name, module)
        if stored is not None:
            rows += stored
            skip.append(f"{name}." if name else "")
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or id(weight) in seen:
            continue
        seen.add(id(weight))
        own = list(module.parameters(recurse=False))
        counts = sum(p.numel() for p in own), sum(tensor_nonzero(p) for p in own)
        rows.append(_row(name, module, weight.detach(), counts, **_dtype_format(weight.dtype)))
    return rows
