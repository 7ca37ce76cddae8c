"""Importance maths: pure tensor functions that score weights (higher = keep), plus the hooks that
gather the statistics the data-driven criteria need (gradients, input norms). The criteria
themselves, one class each, are in ``prune/criteria/``.

- magnitude: |w|^p (Han et al. 2015); L1 with p=1, L2 (squared) with p=2.
- taylor: |w * dL/dw| accumulated over batches (Molchanov et al. 2019, first-order Taylor).
- wanda: |w_ij| * ||x_j||_2 over calibration inputs (Sun et al. 2024).
- lamp: w^2 over the sum of w^2 of the layer's weights at least as large (Lee et al. 2021).
- random: uniform noise, the control every criterion must beat.
Structured criteria reduce element scores over a group (a filter, a neuron) with ``reduce_groups``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from nncompress.tasks.task import call_model


def magnitude(weight: torch.Tensor, p: int = 1) -> torch.Tensor:
    """|w|^p, elementwise."""
    return weight.detach().abs().pow(p)


def lamp(weight: torch.Tensor) -> torch.Tensor:
    """LAMP scores: w_u^2 / sum of w_v^2 over the layer's v with |w_v| >= |w_u| (ties by sort order).

    Within a layer the order is magnitude's; across layers the scores are comparable, and each
    layer's largest weight scores 1, so a global cut never empties a layer.
    """
    squares = weight.detach().float().pow(2).flatten()
    ascending, order = squares.sort()
    remaining = ascending.flip(0).cumsum(0).flip(0)  # sum of this and every larger square
    scores = torch.empty_like(squares)
    scores[order] = ascending / remaining.clamp_min(torch.finfo(squares.dtype).tiny)
    return scores.view(weight.shape)


def taylor(weight: torch.Tensor, grad_accum: torch.Tensor) -> torch.Tensor:
    """|w * g| with ``grad_accum`` the gradient summed over calibration batches."""
    return (weight.detach() * grad_accum).abs()


def wanda(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """|W| scaled by the L2 norm of each input feature (Linear: (out, in); Conv: per in-channel)."""
    w = weight.detach().abs()
    if input_norm.numel() != w.shape[1]:
        raise ValueError(f"input_norm has {input_norm.numel()} entries, weight has {w.shape[1]} inputs")
    shape = [1, -1] + [1] * (w.dim() - 2)
    return w * input_norm.reshape(shape).to(w.dtype)


def random_scores(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random scores: the control."""
    return torch.rand(weight.shape, generator=generator)


def reduce_groups(scores: torch.Tensor, dim: int = 0, reduce: str = "sum") -> torch.Tensor:
    """One score per slice along ``dim`` (per output neuron/filter with dim=0)."""
    moved = scores.movedim(dim, 0).reshape(scores.shape[dim], -1)
    if reduce == "sum":
        return moved.sum(1)
    if reduce == "mean":
        return moved.mean(1)
    if reduce == "max":
        return moved.amax(1)
    if reduce == "l2":
        return moved.pow(2).sum(1).sqrt()
    raise ValueError(f"reduce must be 'sum', 'mean', 'max' or 'l2', got {reduce!r}")


def collect_input_norms(
    model: nn.Module,
    modules: dict[str, nn.Module],
    batches: Iterable[tuple[Any, Any]],
    max_batches: int = 8,
) -> dict[str, torch.Tensor]:
    """L2 norm over calibration samples of each input feature/channel of each given module."""
    sums: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, _out: Any) -> None:
            x = args[0].detach().float()
            if isinstance(module, nn.Linear):
                sq = x.reshape(-1, x.shape[-1]).pow(2).sum(0)  # (..., in) -> (in,)
            else:
                sq = x.transpose(0, 1).reshape(x.shape[1], -1).pow(2).sum(1)  # (N, C, ...) -> (C,)
            sums[name] = sums.get(name, 0) + sq

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    model.eval()
    try:
        with torch.no_grad():
            for i, (inputs, _) in enumerate(batches):
                if i >= max_batches:
                    break
                call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: s.sqrt() for n, s in sums.items()}


def collect_gradients(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: Iterable[tuple[Any, Any]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_batches: int = 8,
) -> dict[str, torch.Tensor]:
    """Gradients of the loss summed over a few batches, for Taylor importance."""
    accum = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for i, (inputs, targets) in enumerate(batches):
            if i >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            loss_fn(call_model(model, inputs), targets).backward()
            for n, p in params.items():
                if p.grad is not None:
                    accum[n] += p.grad.detach()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return accum
