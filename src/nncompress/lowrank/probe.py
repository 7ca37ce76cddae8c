"""What factorization needs to know from running the model: each layer's input/output sizes (for
MACs) and, for activation-aware SVD, the Gram matrix of each Linear's inputs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from nncompress.lowrank.layers import LayerIO
from nncompress.tasks.task import run_with_hooks


def _sizes(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """(input, output) per-sample sizes: (H, W) of a conv, (L, 1) of a Conv1d, (positions, 1) of a Linear."""
    if isinstance(module, nn.Conv2d):
        return (x.shape[-2], x.shape[-1]), (out.shape[-2], out.shape[-1])
    if isinstance(module, nn.Conv1d):
        return (x.shape[-1], 1), (out.shape[-1], 1)
    batch = x.shape[0] if x.dim() > 1 else 1
    positions = x.numel() // x.shape[-1] // batch
    return (positions, 1), (positions, 1)


def layer_io(model: nn.Module, names: Iterable[str], example: Any) -> dict[str, LayerIO]:
    """``LayerIO`` of each named layer on ``example`` (a batch of one: sizes are per sample).

    Layers the forward pass does not call are missing from the result.
    """
    seen: dict[str, LayerIO] = {}

    def hook(name: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        if name in seen:
            seen[name] = seen[name]._replace(calls=seen[name].calls + 1)
        else:
            seen[name] = LayerIO(*_sizes(module, x, out))

    run_with_hooks(model, names, [example], hook)
    return seen


def input_grams(model: nn.Module, names: Iterable[str], batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """``X^T X`` (in, in), float64, of each named Linear's inputs over ``batches`` (every position of
    every sample is a row of X)."""
    grams: dict[str, torch.Tensor] = {}

    def hook(name: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)  # (positions, in)
        grams[name] = grams.get(name, 0) + rows.T @ rows

    run_with_hooks(model, names, batches, hook)
    return grams
