"""Convolutions seen as the matrices they multiply, for the steps written for Linear layers.

A Conv1d/Conv2d with ``groups=1`` computes, at every output position, ``W.reshape(out, -1) @ patch``,
where ``patch`` is the input window flattened as ``(in_channels, *kernel)``. ``ConvAsLinear`` runs a
convolution exactly that way (``F.unfold``, then an ``nn.Linear`` holding the reshaped weight), so
the one-shot steps built on ``nn.Linear`` (RTN, GPTQ, AWQ, HQQ, W8A8/SmoothQuant, Wanda, SparseGPT:
the ``LinearSelection`` steps) calibrate and compress conv layers with their own maths: the
Linear's inputs are the conv's patches, its Hessian is the patches' second moment (as in the GPTQ
and SparseGPT papers' ResNet experiments), its input channels are ``(channel, ky, kx)`` taps.

``apply_step`` wraps a step's ``apply``: eligible convs become ``ConvAsLinear`` before the step
(masks from earlier pruning follow them), and after it every wrapper turns back into a conv layer:

- a float ``nn.Linear`` (pruned or not) into the ``nn.Conv1d``/``nn.Conv2d`` it came from, with its
  weight reshaped (zeros kept) and the masks renamed back;
- a packed Linear into its conv twin through the converters registered in ``CONV_TWINS``
  (``quantize`` registers ``QuantizedLinear`` -> ``QuantizedConv2d``/``QuantizedConv1d``; the codes
  are the same, since both group a row's weights in the same flattened order);
- anything else (AWQ/SmoothQuant's Linear behind an input scale, which no conv reproduces: the
  scale is per tap, not per channel) stays a ``ConvAsLinear``, named in the step's notes.

Depthwise and grouped convs are not single matrices and stay as they are (named in the notes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.base.modules import replace_module

ConvLayer = nn.Conv1d | nn.Conv2d
# packed Linear class -> converter (the packed Linear, the conv it stands for) -> the packed conv
CONV_TWINS: dict[type[nn.Module], Callable[[nn.Module, ConvLayer], nn.Module]] = {}


def register_conv_twin(linear_cls: type[nn.Module]) -> Callable:
    """Decorator: register how a packed ``linear_cls`` made from a ``ConvAsLinear`` becomes a conv layer."""

    def add(fn: Callable[[nn.Module, ConvLayer], nn.Module]) -> Callable[[nn.Module, ConvLayer], nn.Module]:
        CONV_TWINS[linear_cls] = fn
        return fn

    return add


def eligible(module: nn.Module) -> bool:
    """A plain Conv1d/Conv2d that is one matrix product per position (groups 1, zero padding)."""
    return type(module) in (nn.Conv1d, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def _pair(value: Any, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


class ConvAsLinear(nn.Module):
    """A Conv1d/Conv2d (groups 1) run as ``nn.Linear`` on its unfolded input patches: same outputs."""

    def __init__(self, conv: ConvLayer) -> None:
        super().__init__()
        if not eligible(conv):
            raise ValueError(f"ConvAsLinear needs a Conv1d/Conv2d with groups=1 and zero padding, got {conv}")
        self.dims = 1 if isinstance(conv, nn.Conv1d) else 2
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = _pair(conv.kernel_size, self.dims)
        self.stride = _pair(conv.stride, self.dims)
        self.dilation = _pair(conv.dilation, self.dims)
        self.padding: str | tuple[int, ...] = (
            conv.padding if isinstance(conv.padding, str) else _pair(conv.padding, self.dims)
        )
        weight = conv.weight.detach()
        self.linear = nn.Linear(
            weight[0].numel(), self.out_channels, bias=conv.bias is not None, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            self.linear.weight.copy_(weight.reshape(self.out_channels, -1))
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias.detach())
        self.linear.weight.requires_grad_(conv.weight.requires_grad)

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The input with 'same' padding applied by hand (it may be uneven), and the padding left to unfold."""
        if self.padding == "valid":
            return x, (0,) * self.dims
        if self.padding == "same":
            pads: list[int] = []
            for k, d in zip(reversed(self.kernel_size), reversed(self.dilation)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return F.pad(x, pads), (0,) * self.dims
        return x, self.padding  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == self.dims + 1
        x = x.unsqueeze(0) if unbatched else x
        x, padding = self._padded(x)
        if self.dims == 1:  # a 1-D conv is a 2-D one over a height of 1
            x = x.unsqueeze(2)
            kernel, stride, dilation, padding = (
                (1, *self.kernel_size),
                (1, *self.stride),
                (1, *self.dilation),
                (0, *padding),
            )
        else:
            kernel, stride, dilation = self.kernel_size, self.stride, self.dilation
        sizes = [
            math.floor((n + 2 * p - d * (k - 1) - 1) / s + 1)
            for n, p, d, k, s in zip(x.shape[2:], padding, dilation, kernel, stride)
        ]
        patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C*k, L)
        out = self.linear(patches.transpose(1, 2)).transpose(1, 2)  # (B, out, L)
        out = out.reshape(out.shape[0], self.out_channels, *sizes[-self.dims :])
        return out.squeeze(0) if unbatched else out

    def conv(self, weight: torch.Tensor | None = None) -> ConvLayer:
        """The conv layer this stands for, with ``weight`` (default: the Linear's, reshaped) and its bias."""
        cls = nn.Conv1d if self.dims == 1 else nn.Conv2d
        source = self.linear.weight if weight is None else weight
        conv = cls(
            self.in_channels,
            self.out_channels,
            self.kernel_size,  # type: ignore[arg-type]
            stride=self.stride,  # type: ignore[arg-type]
            padding=self.padding,  # type: ignore[arg-type]
            dilation=self.dilation,  # type: ignore[arg-type]
            bias=getattr(self.linear, "bias", None) is not None,
            device=source.device,
            dtype=source.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(source.detach().reshape(conv.weight.shape))
            bias = getattr(self.linear, "bias", None)
            if isinstance(bias, torch.Tensor):
                conv.bias.copy_(bias.detach())
        return conv

    def extra_repr(self) -> str:
        return (
            f"conv{self.dims}d {self.in_channels}->{self.out_channels}, kernel {self.kernel_size}, stride {self.stride}"
        )


def convs_to_linears(model: nn.Module, masks: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Replace every eligible conv below ``model``'s root by a ``ConvAsLinear`` (its mask follows as
    ``name.linear.weight``); returns the wrapped names and the names of grouped convs left as they are."""
    wrapped, grouped = [], []
    for name, module in list(model.named_modules()):
        if not name or type(module) not in (nn.Conv1d, nn.Conv2d):
            continue
        if not eligible(module):
            grouped.append(name)
            continue
        wrapper = ConvAsLinear(module)
        replace_module(model, name, wrapper)
        key = f"{name}.weight"
        if key in masks:
            masks[f"{name}.linear.weight"] = masks.pop(key).reshape(wrapper.linear.weight.shape)
        wrapped.append(name)
    return wrapped, grouped


def restore_convs(model: nn.Module, names: list[str], masks: dict[str, Any]) -> list[str]:
    """Turn the ``ConvAsLinear`` wrappers at ``names`` back into conv layers; returns those that stay wrapped."""
    kept = []
    modules = dict(model.named_modules())
    for name in names:
        wrapper = modules.get(name)
        if not isinstance(wrapper, ConvAsLinear):
            continue
        inner = wrapper.linear
        if type(inner) is nn.Linear:
            conv = wrapper.conv()
            key = f"{name}.linear.weight"
            if key in masks:
                masks[f"{name}.weight"] = masks.pop(key).reshape(conv.weight.shape)
        elif type(inner) in CONV_TWINS:
            conv = CONV_TWINS[type(inner)](inner, wrapper.conv(inner.weight.detach()))
        else:
            kept.append(name)
            continue
        replace_module(model, name, conv)
    return kept


def wrapped_note(kind: str, wrapped: list[str], grouped: list[str], kept: list[str]) -> list[str]:
    """The step's log lines about the convs it saw as matrices, skipped, or left wrapped."""
    notes = []
    if wrapped:
        notes.append(
            f"{kind}: {len(wrapped)} conv layer(s) compressed as the matrices they multiply (unfolded patches)"
        )
    if grouped:
        shown = ", ".join(grouped[:8]) + (f" and {len(grouped) - 8} more" if len(grouped) > 8 else "")
        notes.append(f"{kind}: grouped/depthwise convs left as they are (not one matrix): {shown}")
    if kept:
        notes.append(
            f"{kind}: {', '.join(kept[:8])} stay ConvAsLinear (unfolded patches x a packed Linear): "
            "their input scale is per tap, which no conv layer reproduces"
        )
    return notes


def apply_step(step: Any, model: nn.Module, ctx: Any) -> nn.Module:
    """``step.apply(model, ctx)``; for a step on Linear layers (``LinearSelection``, with ``convs`` on),
    its convs seen as Linears during the step and turned back into conv layers after it."""
    from nncompress.base.settings import LinearSelection

    if not isinstance(step, LinearSelection) or not getattr(step, "convs", False):
        return step.apply(model, ctx)
    wrapped, grouped = convs_to_linears(model, ctx.masks)
    try:
        model = step.apply(model, ctx)
    finally:
        kept = restore_convs(model, wrapped, ctx.masks)
    ctx.log.extend(wrapped_note(step.kind, wrapped, grouped if wrapped else [], kept))
    return model
