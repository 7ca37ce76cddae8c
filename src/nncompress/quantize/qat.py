"""Quantization-aware training (``qat``): train with simulated low-bit weights, then pack them for real.

During training every targeted ``nn.Linear`` / ``nn.Conv2d`` becomes a ``FakeQuantLinear`` /
``FakeQuantConv2d``: the same float parameters (same names, so pruning masks still apply), with a
weight fake-quantizer (and optionally an input fake-quantizer) in front of the float op. Fake-quant
is a *training device*: it only simulates the rounding in float32. The product is made afterwards by
``convert_fake_quant``, which replaces each fake-quant layer with a packed ``QuantizedLinear`` /
``QuantizedConv2d`` (``quantize/layers.py``) built with the scales learned in training, so the
artifact holds ``bits``-bit codes and its outputs equal the fake-quant model's.

Weight fake-quantizers (per output channel, symmetric, 2..8 bits):

- ``"lsq"`` (Esser et al. 2020, "Learned Step Size Quantization"): a learned step per output channel,
  initialised to ``2 * mean|w| / sqrt(Qp)``, whose gradient is scaled by ``g = 1 / sqrt(N * Qp)``
  with N the weights per output channel (the paper's per-tensor N, taken per channel).
- ``"ste"``: the scale is recomputed from the current weights at every step (min-max or MSE range,
  ``compute_qparams``) and rounding passes gradients straight through (zero where clipped).

Input fake-quantizers (``act_bits``, per tensor): unsigned when the first batch they see is
non-negative (post-ReLU inputs), else signed; an LSQ step (method ``"lsq"``) or an EMA of the
min / max (method ``"ste"``). Packed layers take float inputs, so a layer trained with input
fake-quant keeps its (frozen) input fake-quantizer in front of it after conversion
(``FakeQuantInputPacked``): the artifact reproduces the trained numerics, and an integer runtime
reads the activation scale from it.

Example:
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> prepare_fake_quant(model, {"0": 4, "2": 4}, method="lsq")  # doctest: +ELLIPSIS
    Sequential(...)
    >>> convert_fake_quant(model)["0"]
    'int-symmetric 4-bit per-channel'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.base.checks import check_bits
from nncompress.base.modules import edge_layers
from nncompress.base.modules import weight_layers as base_weight_layers
from nncompress.base.selection import check_patterns, is_excluded
from nncompress.base.settings import KDSettings, LayerSelection, TrainSettings, default
from nncompress.core.step import Step, StepContext, register_step
from nncompress.quantize.layers import quantize_weight_module
from nncompress.quantize.primitives import QPARAM_METHODS, QuantSpec, compute_qparams, fake_quantize, qparams_from_range
from nncompress.train import objective
from nncompress.train.loop import TrainConfig, TrainHistory, fit, train_config
from nncompress.train.masks import mask_hooks

QAT_METHODS = ("lsq", "ste")
MIN_STEP = 1e-8  # floor of learned steps: a step must stay > 0 (an all-zero channel has mean|w| = 0)


# --- checks ---------------------------------------------------------------------------------------


def check_method(method: object) -> str:
    """Raise ValueError unless ``method`` is ``"lsq"`` or ``"ste"``."""
    if method not in QAT_METHODS:
        raise ValueError(f"method must be one of {', '.join(QAT_METHODS)}; got {method!r}")
    return method  # type: ignore[return-value]


# --- gradient helpers -----------------------------------------------------------------------------


class _GradScale(torch.autograd.Function):
    """Identity forward (bit-exact), gradient multiplied by ``g`` backward (LSQ's step-size scaling)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, g: float) -> torch.Tensor:
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.g, None


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """``x`` unchanged, with its gradient scaled by ``g``.

    Example:
        >>> s = torch.tensor(2.0, requires_grad=True)
        >>> grad_scale(s, 0.5).backward(); s.grad
        tensor(0.5000)
    """
    return _GradScale.apply(x, g)


def _channel_shape(weight: torch.Tensor) -> tuple[int, ...]:
    """(C, 1, ..., 1): one value per output channel, broadcastable against the weight."""
    return (weight.shape[0],) + (1,) * (weight.dim() - 1)


# --- weight fake-quantizers -------------------------------------------------------------------------


class LSQWeightFakeQuant(nn.Module):
    """Simulated per-channel symmetric quantization with a learned step size (LSQ, Esser et al. 2020).

    Example:
        >>> fq = LSQWeightFakeQuant(torch.randn(8, 16), bits=4)
        >>> fq(torch.randn(8, 16)).shape, fq.step.shape
        (torch.Size([8, 16]), torch.Size([8, 1]))
    """

    def __init__(self, weight: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.spec = QuantSpec(bits=bits, symmetric=True, granularity="channel")
        w = weight.detach().float()
        mean_abs = w.abs().reshape(w.shape[0], -1).mean(1).reshape(_channel_shape(w))
        init = (2 * mean_abs / math.sqrt(self.spec.qmax)).clamp(min=MIN_STEP)
        self.step = nn.Parameter(init.to(weight.device))
        self.grad_factor = 1.0 / math.sqrt(w[0].numel() * self.spec.qmax)  # g = 1 / sqrt(N * Qp)

    def weight_scale(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The step per output channel used in forward (the learned one, floored at MIN_STEP)."""
        return self.step.clamp(min=MIN_STEP)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = grad_scale(self.weight_scale(), self.grad_factor)
        return fake_quantize(weight, scale, torch.zeros((), dtype=torch.int32), self.spec)

    def to_packed(self, layer: nn.Linear | nn.Conv2d) -> nn.Module:
        """The packed layer holding ``layer``'s weight on this quantizer's grid."""
        return quantize_weight_module(layer, self.spec, scale=self.weight_scale().detach().float())

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, per-channel, learned step (simulated)"


class STEWeightFakeQuant(nn.Module):
    """Simulated per-channel symmetric quantization; scale recomputed from the weights each call, STE rounding.

    Example:
        >>> STEWeightFakeQuant(bits=3)(torch.randn(4, 5)).shape
        torch.Size([4, 5])
    """

    def __init__(self, bits: int, range_method: str = "minmax") -> None:
        super().__init__()
        if range_method not in QPARAM_METHODS:
            raise ValueError(f"range_method must be one of {', '.join(QPARAM_METHODS)}; got {range_method!r}")
        self.spec = QuantSpec(bits=bits, symmetric=True, granularity="channel")
        self.range_method = range_method

    def weight_scale(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The scale per output channel for ``weight`` (no gradient flows to it)."""
        if weight is None:
            raise ValueError("STEWeightFakeQuant.weight_scale needs the weight")
        return compute_qparams(weight.detach(), self.spec, self.range_method)[0]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = self.weight_scale(weight).to(weight.device)
        return fake_quantize(weight, scale, torch.zeros((), dtype=torch.int32), self.spec)

    def to_packed(self, layer: nn.Linear | nn.Conv2d) -> nn.Module:
        return quantize_weight_module(layer, self.spec, scale=self.weight_scale(layer.weight).float())

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, per-channel, {self.range_method} range each step (simulated)"


# --- activation fake-quantizer ---------------------------------------------------------------------


class ActivationFakeQuant(nn.Module):
    """Simulated per-tensor quantization of a layer's input: LSQ step or EMA min-max range.

    Signedness is decided by the first batch: non-negative inputs (after ReLU) get the unsigned
    range ``[0, 2^b - 1]``, others the symmetric signed one. The LSQ step starts at
    ``2 * mean|x| / sqrt(Qp)`` with gradient scale ``1 / sqrt(N * Qp)``, N the values per sample.

    Example:
        >>> fq = ActivationFakeQuant(bits=8, method="ema")
        >>> bool(fq(torch.rand(2, 3)).min() >= 0), bool(fq.signed)
        (True, False)
    """

    def __init__(self, bits: int, method: str = "lsq", momentum: float = 0.1) -> None:
        super().__init__()
        if method not in ("lsq", "ema"):
            raise ValueError(f"activation method must be 'lsq' or 'ema'; got {method!r}")
        self.bits, self.method, self.momentum = bits, method, momentum
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed", torch.tensor(False))
        if method == "lsq":
            self.step = nn.Parameter(torch.tensor(1.0))
        else:
            self.register_buffer("lo", torch.tensor(0.0))
            self.register_buffer("hi", torch.tensor(0.0))

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(bits=self.bits, symmetric=bool(self.signed))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        self.signed.fill_(bool(x.min() < 0))
        if self.method == "lsq":
            self.step.fill_(max(2 * x.abs().mean().item() / math.sqrt(self.spec.qmax), MIN_STEP))
        else:
            self.lo.fill_(x.min().item())
            self.hi.fill_(x.max().item())
        self.initialized.fill_(True)

    def scale_and_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current (scale, zero point); the zero point is 0 in both ranges."""
        if self.method == "lsq":
            return self.step.clamp(min=MIN_STEP), torch.zeros((), dtype=torch.int32)
        lo = self.lo if bool(self.signed) else torch.zeros_like(self.lo)
        return qparams_from_range(lo, self.hi, self.spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self._initialize(x)
        elif self.method == "ema" and self.training:
            with torch.no_grad():
                self.lo.lerp_(x.detach().min().float(), self.momentum)
                self.hi.lerp_(x.detach().max().float(), self.momentum)
        scale, zero_point = self.scale_and_zero_point()
        if self.method == "lsq":
            g = 1.0 / math.sqrt(max(1, x[0].numel()) * self.spec.qmax)
            scale = grad_scale(scale, g)
        return fake_quantize(x, scale.to(x.device), zero_point.to(x.device), self.spec)

    def extra_repr(self) -> str:
        sign = "signed" if bool(self.signed) else "unsigned"
        return f"bits={self.bits}, {self.method}, {sign} (simulated)"


# --- fake-quant layers ----------------------------------------------------------------------------


class _FakeQuantCompute:
    """What the fake-quant Linear and Conv2d share: the simulated weight and the forward pass."""

    weight: nn.Parameter
    weight_fake_quant: nn.Module
    input_fake_quant: nn.Module | None

    def _compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def simulated_weight(self) -> torch.Tensor:
        """The weight as the packed layer will store it (float32, on the quantization grid)."""
        return self.weight_fake_quant(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_fake_quant is not None:
            x = self.input_fake_quant(x)
        return self._compute(x, self.simulated_weight())


class FakeQuantLinear(_FakeQuantCompute, nn.Linear):
    """``nn.Linear`` computing with its fake-quantized weight (and input): a QAT training device.

    Holds the very same ``weight`` / ``bias`` parameters as the layer it replaces.

    Example:
        >>> layer = fake_quant_layer(nn.Linear(4, 2), STEWeightFakeQuant(bits=4))
        >>> layer(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    def _compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)


class FakeQuantConv2d(_FakeQuantCompute, nn.Conv2d):
    """``nn.Conv2d`` computing with its fake-quantized weight (and input): a QAT training device.

    Example:
        >>> layer = fake_quant_layer(nn.Conv2d(1, 2, 3), STEWeightFakeQuant(bits=4))
        >>> layer(torch.randn(1, 1, 5, 5)).shape
        torch.Size([1, 2, 3, 3])
    """

    def _compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, weight, self.bias)


FAKE_QUANT_LAYERS = (FakeQuantLinear, FakeQuantConv2d)


def _shell(module: nn.Linear | nn.Conv2d, linear: type, conv: type) -> nn.Module:
    """A new ``linear`` / ``conv`` instance with ``module``'s geometry and the same parameter objects."""
    has_bias = module.bias is not None
    if isinstance(module, nn.Linear):
        new = linear(module.in_features, module.out_features, bias=has_bias, device="meta")
    else:
        new = conv(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=has_bias,
            padding_mode=module.padding_mode,
            device="meta",
        )
    new.weight = module.weight
    new.bias = module.bias
    new.train(module.training)
    return new


def fake_quant_layer(
    module: nn.Linear | nn.Conv2d, weight_fake_quant: nn.Module, input_fake_quant: nn.Module | None = None
) -> nn.Module:
    """A ``FakeQuantLinear`` / ``FakeQuantConv2d`` sharing ``module``'s parameters.

    Example:
        >>> fake_quant_layer(nn.Linear(4, 2), STEWeightFakeQuant(bits=2)).weight.shape
        torch.Size([2, 4])
    """
    if type(module) not in (nn.Linear, nn.Conv2d):
        raise ValueError(f"fake-quant wraps nn.Linear or nn.Conv2d, got {type(module).__name__}")
    new = _shell(module, FakeQuantLinear, FakeQuantConv2d)
    new.weight_fake_quant = weight_fake_quant.to(module.weight.device)
    new.input_fake_quant = None if input_fake_quant is None else input_fake_quant.to(module.weight.device)
    return new


class FakeQuantInputPacked(nn.Module):
    """A packed weight layer whose input is fake-quantized (activations simulated, frozen after QAT).

    Example:
        >>> packed = quantize_weight_module(nn.Linear(4, 2), QuantSpec(bits=4, granularity="channel"))
        >>> FakeQuantInputPacked(ActivationFakeQuant(8, "ema"), packed)(torch.rand(1, 4)).shape
        torch.Size([1, 2])
    """

    def __init__(self, input_fake_quant: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.input_fake_quant, self.layer = input_fake_quant, layer
        for p in input_fake_quant.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.input_fake_quant(x))


# --- model surgery ---------------------------------------------------------------------------------


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every plain ``nn.Linear`` / zero-padded ``nn.Conv2d`` (what the packed layers
    run), in definition order."""
    return [(n, m) for n, m in base_weight_layers(model) if getattr(m, "padding_mode", "zeros") == "zeros"]


def plan_layers(
    model: nn.Module,
    bits: int,
    *,
    keep: set[str],
    keep_bits: int | None,
    exclude: tuple[str, ...],
) -> dict[str, int | None]:
    """``{layer name: bits}`` for the layers to train quantized; ``keep`` layers get ``keep_bits``
    (None: they are left float and out of the plan)."""
    check_patterns(model, exclude, "exclude", list_layers=weight_layers)
    plan: dict[str, int | None] = {}
    for name, _ in weight_layers(model):
        if is_excluded(name, exclude):
            continue
        if name in keep:
            if keep_bits is not None:
                plan[name] = keep_bits
            continue
        plan[name] = bits
    return plan


def prepare_fake_quant(
    model: nn.Module,
    plan: dict[str, int],
    *,
    method: str = "lsq",
    act_bits: int | None = None,
    range_method: str = "minmax",
) -> nn.Module:
    """Replace the layers named in ``plan`` by fake-quant layers (in place) and return ``model``.

    Example:
        >>> m = prepare_fake_quant(nn.Sequential(nn.Linear(4, 4)), {"0": 3}, method="ste")
        >>> type(m[0]).__name__
        'FakeQuantLinear'
    """
    check_method(method)
    for name, bits in plan.items():
        module = model.get_submodule(name)
        check_bits(f"bits of {name!r}", bits)
        if method == "lsq":
            weight_fq: nn.Module = LSQWeightFakeQuant(module.weight, bits)
        else:
            weight_fq = STEWeightFakeQuant(bits, range_method)
        input_fq = None if act_bits is None else ActivationFakeQuant(act_bits, "lsq" if method == "lsq" else "ema")
        model.set_submodule(name, fake_quant_layer(module, weight_fq, input_fq))
    return model


def plain_layer(layer: nn.Module) -> nn.Module:
    """A plain ``nn.Linear`` / ``nn.Conv2d`` sharing a fake-quant layer's parameters."""
    return _shell(layer, nn.Linear, nn.Conv2d)


def convert_fake_quant(model: nn.Module) -> dict[str, str]:
    """Replace every fake-quant layer of ``model`` by its packed module (in place).

    Each weight fake-quantizer packs with its own (learned) scales, so outputs are unchanged.
    Returns ``{layer name: "format bits granularity"}``.

    Example:
        >>> m = prepare_fake_quant(nn.Sequential(nn.Linear(4, 4)), {"0": 3})
        >>> convert_fake_quant(m)
        {'0': 'int-symmetric 3-bit per-channel'}
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, FAKE_QUANT_LAYERS)]
    out: dict[str, str] = {}
    for name, layer in found:
        with torch.no_grad():
            packed = layer.weight_fake_quant.to_packed(plain_layer(layer))
        info = packed.describe()
        out[name] = f"{info['format']} {info['bits']}-bit per-{info['granularity']}"
        if layer.input_fake_quant is not None:
            packed = FakeQuantInputPacked(layer.input_fake_quant, packed)
            out[name] += f", input fake-quant {layer.input_fake_quant.bits}-bit"
        model.set_submodule(name, packed)
    return out


# --- training ------------------------------------------------------------------------------------


def train_simulated(
    model: nn.Module,
    ctx: StepContext,
    config: TrainConfig,
    *,
    masks: dict[str, torch.Tensor],
    loss_fn: Callable[[nn.Module, Any, torch.Tensor], torch.Tensor],
    description: str,
    after_step: Callable[[nn.Module], None] | None = None,
) -> TrainHistory:
    """``fit`` with ``masks`` kept fixed (pruned weights get no gradient and stay zero)."""
    before, keep_zero = mask_hooks(model, masks)

    def after(m: nn.Module) -> None:
        keep_zero(m)
        if after_step is not None:
            after_step(m)

    return fit(
        model, ctx.task.train, config, loss_fn=loss_fn, before_step=before, after_step=after, description=description
    )


@register_step("qat", family="quantize")
@dataclass(frozen=True)
class QuantizationAwareTraining(TrainSettings, KDSettings, LayerSelection, Step):
    """Quantization-aware training of Linear/Conv2d weights, then real packing at the learned scales.

    Trains with fake-quant (simulated) per-channel symmetric weights and, with ``act_bits``,
    simulated input activations; then each layer becomes a packed ``QuantizedLinear`` /
    ``QuantizedConv2d`` whose scales are the trained ones (LSQ step = scale, zero point 0), so the
    artifact stores ``bits`` bits per weight and computes what training saw.

    Args:
        bits: weight bits in [2, 8].
        method: ``"lsq"`` (learned step per channel, Esser et al. 2020) or ``"ste"`` (range from the
            weights each step, ``ste_range`` min-max or MSE; straight-through rounding).
        act_bits: bits of simulated input activations in [2, 8], or None (float activations).
        epochs, lr, optimizer, weight_decay, max_steps: training length and optimizer (``train.fit``).
            The small default lr suits fine-tuning a trained model (LSQ-4 on fmnist-resnet, half an epoch:
            92.72% at 1e-5, 92.66% at 3e-5; 92.57% at 1e-4 for a full epoch);
            with AdamW, LSQ's gradient scale does not change the step sizes' updates (it does with SGD).
        distill: mix soft labels from ``ctx.teacher`` (the model before compression) into the loss,
            ``kd_alpha * T^2 KL + (1 - kd_alpha) * task loss`` with ``T = kd_temperature``; without
            a teacher the task loss alone is used.
        keep_first_conv, keep_classifier: the first Conv2d and the last Linear get ``edge_bits``
            (default None: they stay float, as in ``weight-quantize``).
        edge_bits: bits in [2, 8] for those kept layers, or None for float.
        exclude: module names or regexes (full match) left float, with their children.
        ste_range: ``"minmax"`` or ``"mse"``: how ``method="ste"`` picks each step's range.

    Pruning masks in ``ctx.masks`` stay applied through training; pruned weights quantize to 0.

    Example:
        >>> QuantizationAwareTraining(bits=4, method="lsq", epochs=2)  # doctest: +ELLIPSIS
        QuantizationAwareTraining(bits=4, method='lsq', act_bits=None, ..., epochs=2.0, lr=1e-05, ...)
    """

    bits: int = 4
    method: str = "lsq"
    act_bits: int | None = None
    lr: float = default(1e-5)
    distill: bool = default(True)
    edge_bits: int | None = None
    ste_range: str = "minmax"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits("bits", self.bits)
        check_method(self.method)
        check_bits("act_bits", self.act_bits, allow_none=True)
        check_bits("edge_bits", self.edge_bits, allow_none=True)
        if self.ste_range not in QPARAM_METHODS:
            raise ValueError(f"ste_range must be one of {', '.join(QPARAM_METHODS)}; got {self.ste_range!r}")

    def config(self, seed: int) -> TrainConfig:
        return train_config(self, seed)

    def plan(self, model: nn.Module) -> dict[str, int]:
        """``{layer name: bits}`` this step trains and packs; raises ValueError when it is empty."""
        keep = edge_layers(weight_layers(model), first_conv=self.keep_first_conv, classifier=self.keep_classifier)
        plan = plan_layers(model, self.bits, keep=keep, keep_bits=self.edge_bits, exclude=self.exclude)
        if not plan:
            raise ValueError(f"{self.kind}: no Linear or Conv2d layer left to quantize after exclusions")
        return plan  # type: ignore[return-value]

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        plan = self.plan(model)
        prepare_fake_quant(model, plan, method=self.method, act_bits=self.act_bits, range_method=self.ste_range)
        loss = objective.step_loss(self, ctx)
        history = train_simulated(
            model, ctx, self.config(ctx.seed), masks=ctx.masks, loss_fn=loss, description=self.kind
        )
        formats = convert_fake_quant(model)
        for name, text in formats.items():
            ctx.log.append(f"{name}: {text}")
        teacher = objective.distill_note(self, ctx)
        ctx.log.append(
            f"{self.kind} ({self.method}, {self.bits}-bit weights, "
            f"{'float' if self.act_bits is None else f'{self.act_bits}-bit'} activations, {teacher}): "
            f"{len(formats)} layers packed, {history.steps} steps in {history.seconds:.1f}s, "
            f"last train loss {history.losses[-1]:.4f}"
        )
        return model
