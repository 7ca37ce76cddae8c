"""Binary weights (``binarize``): XNOR-Net-style 1-bit hidden layers, trained then packed.

Training (BinaryConnect, Courbariaux et al. 2015; XNOR-Net, Rastegari et al. 2016): each hidden
Linear/Conv2d keeps float *latent* weights and computes with ``alpha * sign(w)``, alpha = mean |w|
per output channel (the L2-optimal scale for fixed signs). ``sign`` passes gradients straight
through where ``|w| <= 1`` and blocks them outside (the hardtanh STE); alpha is differentiated
normally. The first and last weight layers stay at higher precision (float, or ``edge_bits``
with LSQ fake-quant), as both papers do. After training every binary layer becomes a
``BinaryLinear`` / ``BinaryConv2d`` (``quantize/layers.py``): one bit per weight plus one alpha per
output channel, computing exactly what training simulated.

Binary weights cannot be zero: pruned weights of binarized layers become +-alpha (the step logs
how many); masks of the layers kept at higher precision stay applied.

Example:
    >>> fq = BinaryWeightFakeQuant()
    >>> fq(torch.tensor([[0.5, -1.5], [0.2, 0.0]])).tolist()
    [[1.0, -1.0], [0.10000000149011612, 0.10000000149011612]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.base.checks import check_bits
from nncompress.base.modules import edge_layers
from nncompress.base.settings import KDSettings, LayerSelection, TrainSettings, default
from nncompress.core.step import Step, StepContext, register_step
from nncompress.quantize.layers import binary_module
from nncompress.quantize.qat import (
    LSQWeightFakeQuant,
    convert_fake_quant,
    fake_quant_layer,
    plan_layers,
    train_simulated,
    weight_layers,
)
from nncompress.train import objective
from nncompress.train.loop import TrainConfig, train_config

BINARY = 1  # plan value of a binarized layer


class _SignSTE(torch.autograd.Function):
    """``+1`` where w >= 0 else ``-1`` (bit-exact); gradient passed where |w| <= 1, zero outside."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


def sign_ste(w: torch.Tensor) -> torch.Tensor:
    """Sign (0 maps to +1) with the clipped straight-through gradient of BinaryConnect.

    Example:
        >>> w = torch.tensor([0.5, -2.0], requires_grad=True)
        >>> sign_ste(w).sum().backward(); w.grad
        tensor([1., 0.])
    """
    return _SignSTE.apply(w)


class BinaryWeightFakeQuant(nn.Module):
    """Simulated XNOR-Net binary weight: ``alpha * sign(w)`` with alpha = mean |w| per output channel.

    Example:
        >>> BinaryWeightFakeQuant()(torch.randn(3, 4)).abs().unique(dim=1).shape[1]
        1
    """

    def weight_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """alpha per output channel, shaped (C, 1, ...) (differentiable in ``weight``)."""
        return weight.abs().mean(dim=tuple(range(1, weight.dim())), keepdim=True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.weight_scale(weight) * sign_ste(weight)

    def to_packed(self, layer: nn.Linear | nn.Conv2d) -> nn.Module:
        """A ``BinaryLinear`` / ``BinaryConv2d`` holding the signs and this quantizer's alphas."""
        return binary_module(layer, alpha=self.weight_scale(layer.weight.detach()).float())

    def extra_repr(self) -> str:
        return "1-bit, alpha = mean|w| per channel (simulated)"


def prepare_binary(model: nn.Module, plan: dict[str, int]) -> list[str]:
    """Put fake-quant layers in place: binary for plan value 1, LSQ for 2..8. Returns the binary layers.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> prepare_binary(m, {"0": 1})
        ['0']
    """
    binary = []
    for name, bits in plan.items():
        module = model.get_submodule(name)
        if bits == BINARY:
            weight_fq: nn.Module = BinaryWeightFakeQuant()
            binary.append(name)
        else:
            weight_fq = LSQWeightFakeQuant(module.weight, bits)
        model.set_submodule(name, fake_quant_layer(module, weight_fq))
    return binary


@register_step("binarize", family="quantize", produces="binary")
@dataclass(frozen=True)
class Binarize(TrainSettings, KDSettings, LayerSelection, Step):
    """Train hidden Linear/Conv2d layers with binary weights (XNOR-Net), then store 1 bit per weight.

    Args:
        epochs, lr, optimizer, weight_decay, max_steps: training length and optimizer (``train.fit``).
        distill: mix soft labels from ``ctx.teacher`` (the model before compression) into the loss
            (``kd_alpha``, ``kd_temperature`` as in ``qat``); without a teacher, the task loss alone.
        latent_clip: clamp latent float weights of binary layers to ``[-latent_clip, latent_clip]``
            after every step (BinaryConnect uses 1); None leaves them free.
        keep_first_conv, keep_classifier: leave the first Conv2d (the stem that sees the image) and
            the last Linear (the classifier) at ``edge_bits`` instead of binarizing them. An MLP has
            no conv: all its Linear layers but the classifier are hidden layers and get binarized
            (add the first one to ``exclude`` to keep it float).
        edge_bits: None (float, default) or bits in [2, 8] (LSQ-trained, packed) for those layers.
        exclude: module names or regexes (full match) left float, with their children.

    Example:
        >>> Binarize(epochs=3, edge_bits=8)  # doctest: +ELLIPSIS
        Binarize(latent_clip=None, edge_bits=8, exclude=(), ..., epochs=3.0, lr=0.0005, ...)
    """

    epochs: float = default(2.0)
    distill: bool = default(True)
    latent_clip: float | None = None
    edge_bits: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits("edge_bits", self.edge_bits, allow_none=True)
        c = self.latent_clip
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0):
            raise ValueError(f"latent_clip must be > 0 or None, got {c!r}")

    def config(self, seed: int) -> TrainConfig:
        return train_config(self, seed)

    def plan(self, model: nn.Module) -> dict[str, int]:
        """``{layer name: bits}``: 1 for binarized layers, ``edge_bits`` for kept ones (float ones omitted)."""
        keep = edge_layers(weight_layers(model), first_conv=self.keep_first_conv, classifier=self.keep_classifier)
        plan = plan_layers(model, BINARY, keep=keep, keep_bits=self.edge_bits, exclude=self.exclude)
        if BINARY not in plan.values():
            raise ValueError(f"{self.kind}: no hidden Linear or Conv2d layer left to binarize after exclusions")
        return plan  # type: ignore[return-value]

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        plan = self.plan(model)
        binary = prepare_binary(model, plan)
        # Masks of binarized layers cannot hold: a binary weight is never 0.
        lost = {f"{n}.weight" for n in binary} & set(ctx.masks)
        unpruned = sum(int((~ctx.masks[k].bool()).sum()) for k in lost)
        masks = {k: v for k, v in ctx.masks.items() if k not in lost}
        latent = [model.get_submodule(n).weight for n in binary]

        def clip(_: nn.Module) -> None:
            if self.latent_clip is not None:
                with torch.no_grad():
                    for w in latent:
                        w.clamp_(-self.latent_clip, self.latent_clip)

        loss = objective.step_loss(self, ctx)
        history = train_simulated(
            model, ctx, self.config(ctx.seed), masks=masks, loss_fn=loss, description=self.kind, after_step=clip
        )
        formats = convert_fake_quant(model)
        for name, text in formats.items():
            ctx.log.append(f"{name}: {text}")
        if unpruned:
            ctx.log.append(f"{self.kind}: {unpruned} pruned weights of binarized layers became +-alpha")
        teacher = objective.distill_note(self, ctx)
        ctx.log.append(
            f"{self.kind} ({teacher}): {len(binary)} layers 1-bit, {len(formats) - len(binary)} at "
            f"{self.edge_bits} bits, {history.steps} steps in {history.seconds:.1f}s, "
            f"last train loss {history.losses[-1]:.4f}"
        )
        return model
