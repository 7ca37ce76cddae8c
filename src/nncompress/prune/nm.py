"""N:M semi-structured sparsity (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"):
in every group of M consecutive weights along the input dimension keep the N most important.

2:4 is what NVIDIA Ampere-and-later sparse tensor cores run at up to twice the dense speed.
A Linear weight (out, in) is grouped along each row; a Conv weight (out, in, kh, kw) along each
filter flattened to in*kh*kw. Layers whose row length is not a multiple of M are left dense
(a log line says which).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nncompress.base.checks import check_count
from nncompress.base.settings import CalibrationSettings, LayerSelection
from nncompress.core.step import Step, StepContext, register_step
from nncompress.prune.criteria import get_criterion
from nncompress.prune.magnitude import apply_masks, demote_pruned, masked_fraction, weight_scores
from nncompress.prune.targets import prunable_weights, recurrent_note


@register_step("nm-prune", family="prune")
@dataclass(frozen=True)
class NMPrune(LayerSelection, CalibrationSettings, Step):
    """Keep the ``n`` highest-scoring weights in every group of ``m`` along the input dimension.

    Args:
        n: weights kept per group, 1 <= n < m.
        m: group size (consecutive inputs of one output row / flattened filter).
        criterion: an importance criterion (``"magnitude"``, ``"wanda"``, ``"taylor"``, ...;
            see ``UnstructuredPrune``).
        keep_first_conv: leave the first convolution dense.
        keep_classifier: leave the last Linear layer dense.
        exclude: module names or regexes (full match) left dense, with their children.
        calibration_batches: train batches read by the data-driven criteria.

    Example:
        >>> NMPrune(n=2, m=4, criterion="wanda")  # doctest: +ELLIPSIS
        NMPrune(n=2, m=4, criterion='wanda', ...)
    """

    n: int = 2
    m: int = 4
    criterion: str = "magnitude"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("n", self.n)
        check_count("m", self.m, minimum=2)
        if self.n >= self.m:
            raise ValueError(f"n must be smaller than m (n:m sparsity keeps n of every m), got n={self.n}, m={self.m}")
        get_criterion(self.criterion)

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        recurrent, note = recurrent_note(model, self.criterion, self.exclude, self.kind)
        if note:
            ctx.log.append(note)
        targets = prunable_weights(
            model,
            keep_first_conv=self.keep_first_conv,
            keep_classifier=self.keep_classifier,
            exclude=self.exclude,
            recurrent=recurrent,
        )
        if not targets:
            raise ValueError("no Linear, Conv, LSTM or GRU weights left to prune after exclusions")
        eligible = {}
        for name, w in targets.items():
            row = w[0].numel()
            if row % self.m:
                ctx.log.append(
                    f"nm-prune: left {name} dense: its {row} inputs per output are not a multiple of m={self.m}"
                )
            else:
                eligible[name] = w
        if not eligible:
            ctx.log.append("nm-prune: no layer could be pruned")
            return model
        scores = weight_scores(model, eligible, self.criterion, ctx, self.calibration_batches)
        keep = {n: nm_mask(demote_pruned(s, ctx.masks.get(n)), self.n, self.m) for n, s in scores.items()}
        apply_masks(eligible, keep, ctx)
        ctx.log.append(
            f"nm-prune {self.n}:{self.m} ({self.criterion}) on {len(eligible)} layers: "
            f"{masked_fraction(ctx.masks, eligible):.2%} of their weights zero"
        )
        return model


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the ``n`` largest of every ``m`` consecutive scores of each output row.

    ``scores`` has the weight's shape (out, ...); rows are flattened (Conv: in*kh*kw) and must
    have a length divisible by ``m``.
    """
    rows = scores.reshape(scores.shape[0], -1)  # (out, in*kh*kw)
    if rows.shape[1] % m:
        raise ValueError(f"row length {rows.shape[1]} is not a multiple of m={m}")
    groups = rows.reshape(rows.shape[0], -1, m)  # (out, groups, m)
    top = groups.topk(n, dim=-1).indices  # (out, groups, n)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(scores.shape)
