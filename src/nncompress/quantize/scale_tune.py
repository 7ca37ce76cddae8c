"""Scale tuning: recover a weight-quantized model by distillation into its step sizes, codes frozen.

After one-shot quantization (RTN, GPTQ, AWQ...) every packed layer computes ``(codes - zero) * scale``.
Training only the scales (and, by default, the normalization gains) against the model before
compression recovers much of the loss at no cost in bytes: the codes, zero points and file layout stay
as they were (PEQA, Kim et al. 2023; EfficientQAT's end-to-end stage, Chen et al. 2024).

Every trained tensor is parametrized multiplicatively, ``value = value0 * exp(g)`` with ``g`` starting
at 0, so one learning rate means the same relative change for a step size of 1e-3 and a gain of 2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from nncompress.base.checks import NothingToDo
from nncompress.base.settings import SoftLabels, TrainSettings
from nncompress.core.step import INT_CODES, Step, StepContext, register_step
from nncompress.quantize.gptq import PackedEmbedding
from nncompress.quantize.layers import _scale_storage, _UniformCodes
from nncompress.quantize.primitives import _apply
from nncompress.train.loop import fit, train_config
from nncompress.train.objective import training_loss

# class names holding one of these are norms whose weight gets a gain (LayerNorm2d, T5LayerNorm, LlamaRMSNorm...);
# BatchNorm is left out, as the docstring says, and all run in eval mode: no running statistics move
NORM_CLASS_PARTS = ("LayerNorm", "RMSNorm", "GroupNorm")


class TrainableScales(nn.Module):
    """A packed uniform layer whose weight is ``(codes - zero) * scale0 * exp(gain)``, differentiable in ``gain``."""

    def __init__(self, layer: _UniformCodes) -> None:
        super().__init__()
        self.layer = layer
        centered = _apply(layer.codes().float(), layer.spec, lambda v, z: v - z, layer.zero_points().float())
        self.register_buffer("centered", centered.to(layer.packed.device))
        self.register_buffer("scale0", layer.scale.detach().float().clone())
        self.gain = nn.Parameter(torch.zeros_like(self.scale0))

    def scale(self) -> torch.Tensor:
        """The current step sizes, shaped like the layer's ``scale``."""
        return self.scale0 * torch.exp(self.gain)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the codes decode to with the current step sizes (differentiable)."""
        return _apply(self.centered, self.layer.spec, lambda v, s: v * s, self.scale())

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.layer.bias
        weight = self.dequantized_weight()
        return self.layer._run(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @torch.no_grad()
    def fold(self) -> None:
        """Write the trained step sizes into the layer's ``scale`` buffer (a new buffer: caches see it)."""
        old = self.layer.scale.dtype  # float16 stays float16 where every scale still fits it
        self.layer.scale = _scale_storage(self.scale(), None if old == torch.float16 else old)

    def largest_change(self) -> float:
        """The largest relative change of a step size so far."""
        return float((torch.exp(self.gain.detach()) - 1).abs().max())


class _Gain(nn.Module):
    """Parametrization ``w -> w * exp(g)`` with a trainable ``g`` of w's shape, starting at 0."""

    def __init__(self, like: torch.Tensor) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.zeros_like(like))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * torch.exp(self.gain)


class _EvalMode(nn.Module):
    """Runs the wrapped model in eval mode while the trainer calls ``train()``: dropout off, batch
    statistics and any running state exactly as deployed."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> _EvalMode:
        self.training = mode
        self.model.eval()
        return self

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - whatever the model takes and returns
        return self.model(*args, **kwargs)


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return any(part in name for part in NORM_CLASS_PARTS) and isinstance(getattr(module, "weight", None), nn.Parameter)


@contextlib.contextmanager
def trainable_scales(model: nn.Module, norms: bool) -> Iterator[tuple[list[TrainableScales], list[nn.Parameter]]]:
    """Swap every packed uniform layer for a :class:`TrainableScales` and give norm weights a gain,
    yielding both sets of trainable gains. On a normal exit what was trained is folded into the
    layers and norms; on an error the model gets back exactly what it had. Either way its structure
    is restored."""
    swapped: list[tuple[nn.Module, str, TrainableScales]] = []
    by_layer: dict[int, TrainableScales] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _UniformCodes):
                if id(child) not in by_layer:
                    by_layer[id(child)] = TrainableScales(child)
                setattr(parent, name, by_layer[id(child)])
                swapped.append((parent, name, by_layer[id(child)]))
    tables = [m for m in model.modules() if isinstance(m, PackedEmbedding) and id(m.table) in by_layer]
    for emb in tables:  # a tied embedding reads the head's trained scales too
        emb.table = by_layer[id(emb.table)]
    normed = [m for m in model.modules() if norms and _is_norm(m)]
    gains = [_Gain(m.weight) for m in normed]
    for module, gain in zip(normed, gains, strict=True):
        parametrize.register_parametrization(module, "weight", gain)
    trained = False
    try:
        yield list(by_layer.values()), [g.gain for g in gains]
        for tuned in by_layer.values():
            tuned.fold()
        trained = True
    finally:
        for parent, name, tuned in swapped:
            setattr(parent, name, tuned.layer)
        for emb in tables:
            emb.table = emb.table.layer
        for module in normed:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=trained)


@register_step("scale-tune", family="quantize", accepts=(INT_CODES,))
@dataclass(frozen=True)
class TuneScales(SoftLabels, TrainSettings, Step):
    """Distill the model before compression into the step sizes of the packed codes (codes frozen).

    Trains one gain per scale (per group or channel) of every uniform packed layer, and per element of
    every LayerNorm / RMSNorm / GroupNorm weight when ``norms`` is set, on the task's train split with
    the loss ``kd_alpha * T^2 KL(teacher || model) + (1 - kd_alpha) * task loss``. The model runs in
    eval mode throughout. Size is unchanged; a model with no packed uniform layer is refused.

    Example:
        >>> TuneScales(epochs=2, lr=1e-3)  # doctest: +ELLIPSIS
        TuneScales(norms=True, epochs=2.0, lr=0.001, ..., kd_alpha=1.0, kd_temperature=1.0)
    """

    epochs: float = 1.0
    lr: float = 1e-3
    kd_alpha: float = 1.0
    kd_temperature: float = 1.0
    norms: bool = True

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        if not any(isinstance(m, _UniformCodes) for m in model.modules()):
            raise NothingToDo(
                "scale-tune found no packed uniform layer to tune: run it after a weight quantization "
                "step (rtn, gptq, awq, hqq, weight-quantize)"
            )
        loss = training_loss(ctx, alpha=self.kd_alpha, temperature=self.kd_temperature, who=self.kind)
        flags = {id(p): p.requires_grad for p in model.parameters()}
        try:
            with trainable_scales(model, self.norms) as (tuned, norm_gains):
                for p in model.parameters():
                    p.requires_grad_(False)
                for p in [t.gain for t in tuned] + norm_gains:
                    p.requires_grad_(True)
                history = fit(
                    _EvalMode(model), ctx.task.train, train_config(self, ctx.seed), loss_fn=loss, description=self.kind
                )
        finally:
            for p in model.parameters():  # the norms' weights are new parameters: trainable, as they were
                p.requires_grad_(flags.get(id(p), True))
        change = max(t.largest_change() for t in tuned)
        ctx.log.append(
            f"{self.kind}: {len(tuned)} layers' scales and {len(norm_gains)} norms trained, {history.steps} steps "
            f"in {history.seconds:.1f}s, last loss {history.losses[-1]:.4f}, largest scale change {100 * change:.1f}%"
        )
        return model
