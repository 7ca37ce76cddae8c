"""Mixed-precision weight quantization: per-layer sensitivity, then bits that meet a size budget.

Sensitivity of layer ``l`` at ``b`` bits: the increase of the task loss on a few calibration
batches (or, without labels, the outputs' mean squared error relative to their mean square) when
that layer alone has its weight quantized to ``b`` bits, the others staying float. Summing these
per-layer errors as the cost of a whole assignment is the usual first-order model (HAWQ, Dong et
al. 2019, uses Hessian traces in the same role). The assignment minimizing the summed cost with ``sum(bits * weights) <=
avg_bits * total weights`` is a multiple-choice knapsack, solved exactly by dynamic programming
over the budget in units of ``1 / resolution`` of its total.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.base.checks import check_bits
from nncompress.base.data import first_batches
from nncompress.base.settings import CalibrationSettings
from nncompress.core.step import Step, StepContext, register_step
from nncompress.quantize.primitives import QuantSpec, compute_qparams, fake_quantize
from nncompress.quantize.ptq import PackingSettings, WeightQuantize
from nncompress.tasks.task import call_model, primary_output

CRITERIA = ("loss", "output-mse")


def quantized_weight(weight: torch.Tensor, spec: QuantSpec, method: str) -> torch.Tensor:
    """``weight`` after quantize-dequantize at ``spec`` (what a packed layer would compute with)."""
    scale, zero_point = compute_qparams(weight, spec, method)
    return fake_quantize(weight.detach(), scale, zero_point, spec)


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    inputs: list[Any],
    layers: Iterable[str],
    bits_options: Iterable[int],
    spec_for_bits: Any,
    method: str = "mse",
    *,
    targets: list[torch.Tensor] | None = None,
    loss_fn: Any = None,
) -> dict[str, dict[int, float]]:
    """``{layer: {bits: error}}`` with only that layer quantized, over ``inputs``.

    The error is the increase of ``loss_fn(outputs, targets)`` when both are given (what the task
    scores), else the outputs' mean squared error relative to their mean square. ``spec_for_bits``
    gives the ``QuantSpec`` of each width. The model is restored after each trial (weights are
    swapped in place and put back).
    """
    was_training = model.training
    model.eval()
    reference = [primary_output(call_model(model, x)).float() for x in inputs]
    if targets is not None and loss_fn is not None:
        base = sum(float(loss_fn(r, t)) for r, t in zip(reference, targets))

        def error(outputs: list[torch.Tensor]) -> float:
            return (sum(float(loss_fn(o, t)) for o, t in zip(outputs, targets)) - base) / len(outputs)
    else:
        power = sum(float(r.pow(2).mean()) for r in reference) / len(reference) or 1.0

        def error(outputs: list[torch.Tensor]) -> float:
            return sum(float((o - r).pow(2).mean()) for o, r in zip(outputs, reference)) / len(outputs) / power

    out: dict[str, dict[int, float]] = {}
    try:
        for name in layers:
            weight = model.get_submodule(name).weight
            original = weight.detach().clone()
            out[name] = {}
            for bits in bits_options:
                weight.copy_(quantized_weight(original, spec_for_bits(bits), method))
                out[name][bits] = error([primary_output(call_model(model, x)).float() for x in inputs])
                weight.copy_(original)
    finally:
        model.train(was_training)
    return out


def allocate_bits(
    sensitivity: dict[str, dict[int, float]], sizes: dict[str, int], avg_bits: float, resolution: int = 4000
) -> dict[str, int]:
    """Bits per layer minimizing the summed sensitivity with ``sum(bits * sizes) <= avg_bits *
    sum(sizes)``: a multiple-choice knapsack solved by dynamic programming.

    Costs are counted above the all-smallest-widths assignment, on a grid of ``resolution``
    units of the budget left above it, each rounded up: the result always meets the budget, and
    it is optimal among assignments that stay ``len(layers)`` units under it.

    Raises ValueError when even the smallest widths exceed the budget.
    """
    names = list(sensitivity)
    total = sum(sizes[n] for n in names)
    floor_bits = {n: min(sensitivity[n]) for n in names}
    spare = avg_bits * total - sum(floor_bits[n] * sizes[n] for n in names)
    if spare < -1e-9:
        raise ValueError(
            f"avg_bits={avg_bits} is below what the smallest option gives "
            f"({(avg_bits * total - spare) / total:.3f} bits per weight); lower bits_options or raise avg_bits"
        )
    unit = max(spare, 1e-9) / resolution
    inf = float("inf")
    best = [0.0] + [inf] * resolution  # best[c]: least summed error using c spare units so far
    back: list[list[tuple[int, int] | None]] = []  # per layer: c -> (bits, c before this layer)
    for name in names:
        new: list[float] = [inf] * (resolution + 1)
        came: list[tuple[int, int] | None] = [None] * (resolution + 1)
        for bits, err in sorted(sensitivity[name].items()):
            cost = math.ceil((bits - floor_bits[name]) * sizes[name] / unit - 1e-9)
            for c in range(resolution - cost + 1):
                if best[c] + err < new[c + cost]:
                    new[c + cost], came[c + cost] = best[c] + err, (bits, c)
        best = new
        back.append(came)
    c = min(range(resolution + 1), key=lambda i: best[i])
    chosen: dict[str, int] = {}
    for name, came in zip(reversed(names), reversed(back)):
        bits, c = came[c]  # type: ignore[misc]
        chosen[name] = bits
    return {n: chosen[n] for n in names}


@register_step("mixed-precision", family="quantize")
@dataclass(frozen=True)
class MixedPrecisionQuantize(PackingSettings, CalibrationSettings, Step):
    """Weight-only PTQ with per-layer bits chosen by sensitivity to meet an average bit budget.

    Each candidate layer is quantized alone at every width in ``bits_options`` and the output
    error on ``calibration_batches`` train batches is recorded; an exact knapsack then picks the
    widths of least summed error with at most ``avg_bits`` bits per weight on average (counting
    the quantized layers' weights; the first conv and classifier stay float as in
    ``weight-quantize``). The result is a ``weight-quantize`` with those ``layer_bits``.

    Args:
        avg_bits: the budget, average bits per quantized weight (e.g. 4.5 or 3).
        bits_options: widths a layer may get, each in [2, 8].
        calibration_batches: train batches used to measure sensitivity (>= 1).
        criterion: ``"loss"`` (increase of the task loss on those batches, with their labels) or
            ``"output-mse"`` (relative error of the outputs; needs no labels).
        granularity, group_size, symmetric, method, keep_first_conv, keep_classifier, exclude,
            rest_bits: the ``PackingSettings`` block, as in ``weight-quantize``.

    Example:
        >>> MixedPrecisionQuantize(avg_bits=3.5, bits_options=(2, 3, 4, 8)).avg_bits
        3.5
    """

    avg_bits: float = 4.0
    bits_options: tuple[int, ...] = (2, 3, 4, 8)
    criterion: str = "loss"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(
            self, "bits_options", tuple(sorted({check_bits("bits_options", b) for b in self.bits_options}))
        )
        if not self.bits_options:
            raise ValueError("bits_options must name at least one width in [2, 8]")
        if isinstance(self.avg_bits, bool) or not isinstance(self.avg_bits, (int, float)):
            raise ValueError(f"avg_bits must be a number, got {self.avg_bits!r}")
        if not min(self.bits_options) <= self.avg_bits:
            raise ValueError(
                f"avg_bits={self.avg_bits} is below the smallest of bits_options {self.bits_options}; "
                "add a smaller width or raise avg_bits"
            )
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}; got {self.criterion!r}")

    def weight_quantize(self, layer_bits: dict[str, int]) -> WeightQuantize:
        """The ``weight-quantize`` step with these per-layer bits and this step's other settings."""
        return WeightQuantize(
            bits=max(self.bits_options),
            granularity=self.granularity,
            group_size=self.group_size,
            symmetric=self.symmetric,
            method=self.method,
            keep_first_conv=self.keep_first_conv,
            keep_classifier=self.keep_classifier,
            exclude=self.exclude,
            layer_bits=tuple((f"{re.escape(n)}", b) for n, b in layer_bits.items()),
            rest_bits=self.rest_bits,
        )

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        base = self.weight_quantize({})
        layers = list(base.plan(model))  # validates exclusions and group sizes first
        batches = first_batches(ctx.task.train, self.calibration_batches, ctx.task.name, "mixed-precision")
        inputs, targets = [b[0] for b in batches], [b[1] for b in batches]
        by_loss = {"targets": targets, "loss_fn": ctx.task.loss} if self.criterion == "loss" else {}
        sensitivity = layer_sensitivity(model, inputs, layers, self.bits_options, base.spec, self.method, **by_loss)
        sizes = {n: model.get_submodule(n).weight.numel() for n in layers}
        chosen = allocate_bits(sensitivity, sizes, float(self.avg_bits))
        average = sum(chosen[n] * sizes[n] for n in layers) / sum(sizes.values())
        ctx.log.append(
            f"mixed-precision: {average:.2f} bits per weight on average (budget {self.avg_bits}); "
            + ", ".join(f"{n}={b}" for n, b in chosen.items())
        )
        return self.weight_quantize(chosen).apply(model, ctx)
