"""MACs by running the model under PyTorch's own FLOP counter (torch.utils.flop_counter).

The counter covers matmul, linear, conv (all groups/strides), batched matmul and
scaled-dot-product attention; a multiply-accumulate is two FLOPs, so MACs = FLOPs / 2.
Element-wise work (activations, normalization, additions) is not counted, as is customary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nncompress.tasks.task import call_model

# Set on a model whose kernels the counter cannot see (int8 kernels, ONNX Runtime): the MACs
# per sample of the float graph it was converted from; quantization changes the MACs' precision,
# not their number.
REFERENCE_MACS_ATTR = "reference_macs_per_sample"


def count_macs(model: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``inputs`` (as batched).

    A model that carries ``reference_macs_per_sample`` (set by converters to kernels the counter
    cannot see, fully or partly) is counted as that figure times the batch size.
    """
    reference = getattr(model, REFERENCE_MACS_ATTR, None)
    if reference:
        return int(reference) * _batch_size(inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call_model(model, inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def _batch_size(inputs: Any) -> int:
    first = inputs
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    if isinstance(first, Mapping) and first:  # dict, or a tokenizer's BatchEncoding
        first = next(iter(first.values()))
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1


def mark_reference_macs(converted: nn.Module, float_model: nn.Module, example: Any) -> nn.Module:
    """Record on ``converted`` the float model's MACs per sample (see ``REFERENCE_MACS_ATTR``)."""
    macs = count_macs(float_model, example) // _batch_size(example)
    setattr(converted, REFERENCE_MACS_ATTR, macs)
    if isinstance(converted, torch.fx.GraphModule):  # its deepcopy/pickle keep only these attributes
        converted.meta.setdefault("_user_preserved_attributes", {})[REFERENCE_MACS_ATTR] = macs
    return converted


def macs_by_module(model: nn.Module, inputs: Any) -> dict[str, int]:
    """MACs per leaf module name, for per-layer reports.

    The counter names modules by their path prefixed with the root's class name (or "Global"
    on older torch); the prefix is stripped so keys match ``named_modules()``.
    """
    return count_macs_by_module(model, inputs)[1]


def count_macs_by_module(model: nn.Module, inputs: Any) -> tuple[int, dict[str, int]]:
    """``count_macs`` and ``macs_by_module`` from one counted forward pass (a large model's pass is slow)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call_model(model, inputs)
    finally:
        model.train(was_training)
    leaves = {name for name, m in model.named_modules() if name and not list(m.children())}
    out = {}
    for key, counts in counter.get_flop_counts().items():
        _, _, path = key.partition(".")
        if path in leaves:
            out[path] = int(sum(counts.values())) // 2
    reference = getattr(model, REFERENCE_MACS_ATTR, None)
    total = int(reference) * _batch_size(inputs) if reference else int(counter.get_total_flops()) // 2
    return total, out
