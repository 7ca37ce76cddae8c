"""Bias correction for weight quantization (Nagel et al. 2019, "Data-Free Quantization", sec. 4.2).

Quantizing a weight shifts the expected output of its layer: E[y_q - y] = (W_q - W) E[x]. With
the input's mean measured on calibration data, subtracting that shift from the bias removes the
systematic part of the error (the part that survives averaging and biases the next layers).
For a convolution, E[x] is taken per input channel (borders where padding enters are ignored,
as in the paper).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nncompress.tasks.task import call_model


@torch.no_grad()
def input_means(model: nn.Module, layers: list[str], inputs: list[Any]) -> dict[str, torch.Tensor]:
    """Per-feature (Linear) or per-channel (Conv2d) mean of each layer's input over ``inputs``."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, conv: bool) -> Any:
        def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            flat = x.transpose(0, 1).reshape(x.shape[1], -1) if conv else x.reshape(-1, x.shape[-1]).t()
            sums[name] = sums.get(name, 0) + flat.sum(1)
            counts[name] = counts.get(name, 0) + flat.shape[1]

        return record

    handles = [
        model.get_submodule(n).register_forward_pre_hook(hook(n, isinstance(model.get_submodule(n), nn.Conv2d)))
        for n in layers
    ]
    was_training = model.training
    model.eval()
    try:
        for x in inputs:
            call_model(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / counts[n] for n in sums}


def output_shift(weight_error: torch.Tensor, mean: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """E[(W_q - W) x] per output channel, for a Linear (2-D) or grouped Conv2d (4-D) weight error."""
    if weight_error.dim() == 2:
        return weight_error @ mean
    out_channels, per_group = weight_error.shape[0], weight_error.shape[1]
    summed = weight_error.sum(dim=(2, 3)).reshape(groups, out_channels // groups, per_group)
    return torch.einsum("goc,gc->go", summed, mean.reshape(groups, per_group)).reshape(out_channels)


@torch.no_grad()
def correct_bias(packed: nn.Module, float_weight: torch.Tensor, mean: torch.Tensor) -> float:
    """Subtract the quantization's expected output shift from ``packed``'s bias (creating a bias
    when the layer had none); returns the largest correction applied."""
    error = packed.dequantized_weight() - float_weight.detach().float()
    shift = output_shift(error, mean, getattr(packed, "groups", 1))
    bias = getattr(packed, "bias", None)
    if bias is None:
        packed.bias = nn.Parameter(-shift)
    else:
        bias.sub_(shift.to(bias.dtype))
    return float(shift.abs().max())
