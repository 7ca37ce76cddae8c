"""W8A8 quantization of Linear layers, plain (``w8a8``) or after SmoothQuant smoothing
(``smoothquant``; Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models"); and the per-input-channel scale machinery AWQ shares.

Transformer activations have a few channels far larger than the rest, so one int8 scale per
token wastes almost all its levels on them. SmoothQuant divides input channel j by

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

and multiplies weight column j by it: the product is unchanged, and the difficulty migrates from
activations to weights. The division is folded into the op producing the input when that is
exact (the LayerNorm before q/k/v or fc1, the v projection before an attention output
projection: checked on calibration data, ``BlockRun.try_fold``); otherwise it stays an explicit
per-channel multiply in front of the layer (which a real int8 kernel fuses into activation
quantization).

Weights become int8 codes with one scale per output channel, packed (``QuantizedLinear``).
**Activations are fake-quantized**: rounded to the int8 grid (per token, dynamically, or per tensor
with a scale calibrated on the train split) and multiplied in float32. That simulates W8A8
accuracy exactly; it is not an int8 GEMM and is not faster than float32 on CPU.

Example:
    >>> smoothing_scales(torch.tensor([100.0, 1.0]), torch.tensor([1.0, 1.0]), 0.5).tolist()
    [10.0, 1.0]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from nncompress.base.settings import BlockCalibration, LinearSelection
from nncompress.core.sequential import (
    BlockRun,
    LayerGroup,
    calibration_batches,
    check_blocks_setting,
    no_targets,
    replace_linear,
    run_sequential,
    select_linears,
)
from nncompress.core.step import Step, StepContext, register_step
from nncompress.measure.flops import mark_reference_macs
from nncompress.quantize.int8 import dynamic_int8_linear
from nncompress.quantize.layers import quantize_weight_module
from nncompress.quantize.primitives import QuantSpec, compute_qparams, fake_quantize

ACT_MODES = ("token", "tensor", "dynamic")
FOLD_CHECK_CALLS = 2  # calibration calls compared when checking that a fold is exact
INT8 = QuantSpec(bits=8, symmetric=True, granularity="channel")  # weights: one scale per output channel

# --- pure maths ---------------------------------------------------------------------------------------


def smoothing_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``max|X_j|^alpha / max|W_j|^(1-alpha)`` (>= 1e-5).

    ``act_absmax`` (in,) over calibration tokens, ``weight_absmax`` (in,) over the output rows of
    every layer reading that input.
    """
    s = act_absmax.float().clamp(min=1e-5).pow(alpha) / weight_absmax.float().clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def fake_quant_int8(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` rounded to the symmetric int8 grid: per token (one scale per row of the last dim, from
    its max |x|) when ``scale`` is None, else with the given per-tensor scale. Straight-through
    gradients, so a fine-tune after it still trains.

    Example:
        >>> fake_quant_int8(torch.tensor([[1.0, 0.003]])).tolist()
        [[1.0, 0.0]]
    """
    if scale is not None:
        return fake_quantize(x, scale, torch.zeros((), dtype=torch.int32), QuantSpec(bits=8))
    rows = x.reshape(-1, x.shape[-1])  # (tokens, channels)
    s, z = compute_qparams(rows, QuantSpec(bits=8, granularity="channel"), "minmax")  # (tokens, 1)
    return fake_quantize(rows, s.to(x.dtype), z, QuantSpec(bits=8, granularity="channel")).reshape(x.shape)


# --- modules ---------------------------------------------------------------------------------------------


class ScaledInputLinear(nn.Module):
    """A packed Linear behind an explicit per-input-channel scale and, optionally, simulated int8
    activation quantization: ``layer(fake_quant_int8(x * inv_scale))``.

    ``inv_scale`` is the AWQ / SmoothQuant factor 1/s that could not be folded into the producer
    (None: folded, or none). ``act_mode`` ``"token"`` (dynamic per-token scales) or ``"tensor"``
    (the static ``act_scale``) fake-quantizes the activations; None leaves them float (AWQ).

    Example:
        >>> packed = quantize_weight_module(nn.Linear(4, 2), INT8)
        >>> ScaledInputLinear(packed, torch.full((4,), 0.5), act_mode="token")(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        layer: nn.Module,
        inv_scale: torch.Tensor | None = None,
        *,
        act_mode: str | None = None,
        act_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if act_mode not in (None, "token", "tensor"):
            raise ValueError(f"act_mode must be None, 'token' or 'tensor', got {act_mode!r}")
        if act_mode == "tensor" and act_scale is None:
            raise ValueError("act_mode='tensor' needs the calibrated act_scale")
        self.layer, self.act_mode = layer, act_mode
        self.register_buffer("inv_scale", None if inv_scale is None else inv_scale.detach().float().clone())
        self.register_buffer("act_scale", None if act_scale is None else act_scale.detach().float().reshape(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_scale is not None:
            x = x * self.inv_scale.to(x.dtype)
        if self.act_mode is not None:
            x = fake_quant_int8(x, self.act_scale if self.act_mode == "tensor" else None)
        return self.layer(x)

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies to its input (the packed weight times the input scale), decoded on
        access so model code that reads ``layer.weight`` (its dtype, its shape) still runs; never stored."""
        weight = self.layer.weight
        return weight if self.inv_scale is None else weight * self.inv_scale.to(weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        """The packed layer's bias (the input scale does not touch it)."""
        return self.layer.bias

    def extra_repr(self) -> str:
        act = f"int8 activations fake-quantized per {self.act_mode}" if self.act_mode else "float activations"
        return f"input scale={'explicit' if self.inv_scale is not None else 'folded/none'}, {act}"


# --- the steps -------------------------------------------------------------------------------------------


@register_step("w8a8", family="quantize")
@dataclass(frozen=True)
class W8A8Quantize(LinearSelection, BlockCalibration, Step):
    """W8A8 without smoothing; int8 packed weights, int8 activations fake-quantized (simulated).

    Weights: int8 codes, one scale per output channel, packed. Activations: *fake-quantized*
    (rounded to the int8 grid, matmul in float32; not an int8 kernel).

    The baseline SmoothQuant is compared against. Activation scales are dynamic per token
    (``act_mode="token"``) or one static per-tensor scale per layer calibrated on the train split
    (``"tensor"``). ``act_mode="dynamic"`` is not simulated: each Linear becomes a torch.ao
    dynamic int8 Linear (int8 GEMM; activations quantized per tensor at run time, on x86 with a
    7-bit range), so smoothing's effect on a real kernel can be measured.

    Args:
        act_mode: ``"token"``, ``"tensor"`` or ``"dynamic"``.
        layers: module names or full-match regexes to quantize (empty: every plain Linear).
        exclude: names or regexes left in float.
        keep_classifier: leave the last Linear (LM head / classifier) in float.
        calibration_batches: train batches for activation statistics (>= 1).
        blocks: the block list (None: found automatically; "" the whole model is one block).

    Example:
        >>> W8A8Quantize(act_mode="tensor")  # doctest: +ELLIPSIS
        W8A8Quantize(act_mode='tensor', ..., exclude=(), layers=(), keep_classifier=True, convs=True)
    """

    act_mode: str = "token"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.act_mode not in ACT_MODES:
            raise ValueError(f"act_mode must be one of {', '.join(ACT_MODES)}; got {self.act_mode!r}")
        check_blocks_setting(self.blocks)

    smooths: ClassVar[bool] = False

    def smoothing(self, group: LayerGroup) -> torch.Tensor | None:
        """The group's smoothing factors (None: no smoothing)."""
        return None

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        targets = select_linears(model, layers=self.layers, exclude=self.exclude, keep_classifier=self.keep_classifier)
        if no_targets(targets, self.kind, ctx):
            return model
        # torch.ao's dynamic Linears hide their matmuls from the MAC counter: record the float model's
        float_model = copy.deepcopy(model) if self.act_mode == "dynamic" else None
        folded: list[str] = []
        explicit: list[str] = []

        def process(run: BlockRun, groups: list[LayerGroup]) -> None:
            reference = run.forward(limit=FOLD_CHECK_CALLS) if self.smooths else []
            plans = []
            for group in groups:  # every fold first: each is checked against the float block
                s = self.smoothing(group)
                producer = run.try_fold(group, s, reference) if s is not None else None
                names = "/".join(group.selected)
                if producer is not None:
                    folded.append(f"{names} -> {producer}")
                elif s is not None:
                    explicit.append(names)
                plans.append((group, s, producer))
            for group, s, producer in plans:
                for name in group.selected:
                    self._quantize(run.model, name, group, s if producer is None else None, s)

        batches = calibration_batches(ctx, self.calibration_batches, self.kind)
        done = run_sequential(
            model,
            batches,
            process,
            select=targets,
            needs=("absmax",),
            true_sequential=False,
            blocks=self.blocks,
            log=ctx.log,
        )
        if folded:
            ctx.log.append(f"{self.kind}: smoothing folded for {', '.join(folded)}")
        if explicit:
            ctx.log.append(f"{self.kind}: smoothing applied by an explicit multiply for {', '.join(explicit)}")
        if float_model is not None:
            mark_reference_macs(model, float_model, ctx.task.single_example())
        if self.act_mode == "dynamic":
            what = "torch.ao dynamic int8 (int8 weights per channel, activations per tensor at run time, int8 GEMM)"
        else:
            what = (
                f"packed int8 weights (per channel) and int8 activations fake-quantized per {self.act_mode} "
                "(simulated, float32 matmul)"
            )
        ctx.log.append(f"{self.kind}: {len(done)} Linear layers with {what}")
        return model

    def _quantize(
        self, model: nn.Module, name: str, group: LayerGroup, explicit: torch.Tensor | None, s: torch.Tensor | None
    ) -> None:
        layer = group.module(name)
        if explicit is not None:  # not folded: this layer's columns take s, its input 1/s
            with torch.no_grad():
                layer.weight.mul_(explicit.to(layer.weight).reshape(1, -1))
        absmax = group.stats[name].absmax
        act_scale = None
        if self.act_mode == "tensor":  # one static scale: the largest smoothed input seen
            smoothed = absmax if s is None else absmax / s.to(absmax)
            act_scale = (smoothed.max() / 127).clamp(min=1e-8)
        inv = None if explicit is None else 1.0 / explicit
        if self.act_mode == "dynamic":  # a real int8 kernel (torch.ao dynamic Linear)
            new = dynamic_int8_linear(layer)
            replace_linear(model, name, new if inv is None else ScaledInputLinear(new, inv), layer)
            return
        packed = quantize_weight_module(layer, INT8, method="minmax")
        replace_linear(model, name, ScaledInputLinear(packed, inv, act_mode=self.act_mode, act_scale=act_scale), layer)


@register_step("smoothquant", family="quantize")
@dataclass(frozen=True)
class SmoothQuant(W8A8Quantize):
    """SmoothQuant W8A8 (Xiao et al. 2023); int8 activations fake-quantized (simulated).

    Smooths activation outliers into the weights, then int8 per-channel packed weights and int8
    activations *fake-quantized* (rounded to the int8 grid, matmul in float32; not an int8 kernel).

    Smoothing factors s_j = max|X_j|^alpha / max|W_j|^(1-alpha) per group of Linears reading one
    input, from calibration statistics; 1/s is folded into the producing LayerNorm (or Linear)
    when exact, else applied explicitly in front of the layer.

    Args:
        alpha: migration strength in [0, 1] (0.5 as in the paper; 0 leaves activations as they are).
        act_mode, layers, exclude, keep_classifier, calibration_batches, blocks: see ``W8A8Quantize``.

    Example:
        >>> SmoothQuant(alpha=0.6)  # doctest: +ELLIPSIS
        SmoothQuant(act_mode='token', alpha=0.6, ...)
    """

    alpha: float = 0.5
    smooths: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1] (SmoothQuant's migration strength), got {self.alpha!r}")

    def smoothing(self, group: LayerGroup) -> torch.Tensor | None:
        act = group.stats[group.selected[0]].absmax  # every layer of the group reads the same input
        weight = torch.stack([group.module(n).weight.detach().abs().amax(0) for n in group.selected]).amax(0)
        return smoothing_scales(act, weight.to(act), self.alpha)
