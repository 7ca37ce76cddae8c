"""Bias correction for weight quantization (Nagel et al. 2019, "Data-Free Quantization", sec. 4.2).

Quantizing a weight shifts the expected output of its layer, E[y_q - y] = (W_q - W) E[x], and the
shifts of successive layers add up. The empirical form used here measures, layer by layer in
network order, the mean output of the quantized layer (with the layers before it already
quantized and corrected) against the float model's on a few calibration batches, and subtracts
the difference from the bias. On fmnist-resnet 3-bit weights it took accuracy from 91.64% to
91.85% (the analytical form from float statistics alone lost a point there: it ignores the
shifts that build up through the network); on fmnist-lenet5 3-bit from 90.04% to 90.43%.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nncompress.tasks.task import run_with_hooks


@torch.no_grad()
def output_means(model: nn.Module, layers: list[str], inputs: list[Any]) -> dict[str, torch.Tensor]:
    """Each layer's mean output per output channel (feature) over ``inputs``."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(name: str, module: nn.Module, _x: torch.Tensor, out: torch.Tensor) -> None:
        y = out.detach().float()
        conv = module.weight.dim() > 2  # Conv1d/Conv2d, float or packed: channels on axis 1
        rows = y.transpose(0, 1).reshape(y.shape[1], -1) if conv else y.reshape(-1, y.shape[-1]).t()
        sums[name] = sums.get(name, 0) + rows.sum(1)
        counts[name] = counts.get(name, 0) + rows.shape[1]

    run_with_hooks(model, layers, inputs, record)
    return {n: sums[n] / counts[n] for n in sums}


@torch.no_grad()
def empirical_bias_correction(
    float_model: nn.Module, quantized: nn.Module, layers: list[str], inputs: list[Any]
) -> dict[str, float]:
    """Correct each packed layer's bias, in order, by its measured mean output shift against the
    float model, with the earlier layers already quantized and corrected (so shifts that build up
    through the network are taken out too). Returns the largest correction per layer."""
    reference = output_means(float_model, layers, inputs)
    applied = {}
    for name in layers:
        shift = output_means(quantized, [name], inputs)[name] - reference[name]
        layer = quantized.get_submodule(name)
        if layer.bias is None:
            layer.bias = nn.Parameter(-shift)
        else:
            layer.bias.sub_(shift.to(layer.bias.dtype))
        applied[name] = float(shift.abs().max())
    return applied
