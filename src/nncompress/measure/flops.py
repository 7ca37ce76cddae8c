"""MACs by running the model under PyTorch's own FLOP counter (torch.utils.flop_counter).

The counter covers matmul, linear, conv (all groups/strides), batched matmul and
scaled-dot-product attention; a multiply-accumulate is two FLOPs, so MACs = FLOPs / 2.
Element-wise work (activations, normalization, additions) is not counted, as is customary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nncompress.tasks.task import call_model


def count_macs(model: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``inputs`` (as batched)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call_model(model, inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def macs_by_module(model: nn.Module, inputs: Any) -> dict[str, int]:
    """MACs per leaf module name, for per-layer reports.

    The counter names modules by their path prefixed with the root's class name (or "Global"
    on older torch); the prefix is stripped so keys match ``named_modules()``.
    """
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
    return out
