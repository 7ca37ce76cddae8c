"""Keeping pruning masks through training: zero masked gradients, re-zero masked weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def mask_hooks(
    model: nn.Module, masks: dict[str, torch.Tensor]
) -> tuple[Callable[[nn.Module], None], Callable[[nn.Module], None]]:
    """(before_step, after_step) hooks for fit(): masked weights get no gradient and stay zero.

    Both are needed: zeroing gradients alone is not enough with weight decay or Adam's momentum.
    """
    params = dict(model.named_parameters())
    pairs = [
        (params[name], mask) for name, mask in masks.items() if name in params and params[name].shape == mask.shape
    ]

    def before(_: nn.Module) -> None:
        for p, mask in pairs:
            if p.grad is not None:
                p.grad.mul_(mask)

    def after(_: nn.Module) -> None:
        with torch.no_grad():
            for p, mask in pairs:
                p.mul_(mask)

    return before, after
