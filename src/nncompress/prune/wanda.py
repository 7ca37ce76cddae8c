"""Wanda one-shot pruning (Sun et al. 2024, "A Simple and Effective Pruning Approach for Large
Language Models"), and the settings every one-shot pruner shares (``OneShotPrune``: Wanda,
SparseGPT).

Wanda scores weight W_ij by |W_ij| * ||X_j||_2 (X_j: input feature j over the calibration tokens)
and, unlike global magnitude pruning, compares weights only within one output row (or within
each group of M inputs for N:M sparsity): large activations protect their weights, and every
output keeps the same share of its inputs. No weight is updated. Inputs are collected block by
block after the earlier layers were pruned (``core/sequential.py``); masks go into ``ctx.masks``
so later fine-tuning keeps the zeros.

Example:
    >>> w, norms = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([10.0, 1.0, 1.0, 1.0])
    >>> wanda_mask(w, norms, sparsity=0.5).tolist()
    [[True, False, False, True]]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from nncompress.base.checks import NothingToDo
from nncompress.base.settings import BlockCalibration, LinearSelection
from nncompress.core.sequential import (
    BlockRun,
    LayerGroup,
    LayerStats,
    calibration_batches,
    check_blocks_setting,
    run_sequential,
    select_linears,
)
from nncompress.core.step import Step, StepContext, register_step
from nncompress.prune import importance
from nncompress.prune.magnitude import apply_masks, check_fraction, demote_pruned, masked_fraction
from nncompress.prune.nm import nm_mask

DEFAULT_SPARSITY = 0.5


def parse_pattern(pattern: object) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"N:M"`` (keep N of every M consecutive inputs) -> (N, M)."""
    if pattern == "unstructured":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", pattern) if isinstance(pattern, str) else None
    if match is None or not 0 < int(match[1]) < int(match[2]):
        raise ValueError(
            f"pattern must be 'unstructured' or 'N:M' with 0 < N < M (keep N of every M inputs, e.g. '2:4'); "
            f"got {pattern!r}"
        )
    return int(match[1]), int(match[2])


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask dropping the ``round(sparsity * in)`` lowest scores of every output row."""
    k = round(sparsity * scores.shape[1])
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, scores.topk(k, dim=1, largest=False).indices, False)
    return keep


def wanda_mask(
    weight: torch.Tensor,
    norms: torch.Tensor,
    *,
    sparsity: float = DEFAULT_SPARSITY,
    nm: tuple[int, int] | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wanda keep-mask of a Linear weight (out, in) from its input norms ||X_j||_2 (in,).

    ``nm=(N, M)`` keeps the N best of every M consecutive inputs instead of a per-row share;
    weights already pruned (False in ``keep``) rank lowest, so they are pruned first.
    """
    scores = demote_pruned(importance.wanda(weight, norms), keep)
    return nm_mask(scores, *nm) if nm else row_mask(scores, sparsity)


@dataclass(frozen=True)
class OneShotPrune(LinearSelection, BlockCalibration, Step):
    """Settings shared by the one-shot pruners (not a step itself).

    Args:
        sparsity: fraction of each targeted layer's weights to zero, in [0, 1) (None: 0.5);
            unstructured only.
        pattern: ``"unstructured"`` or ``"N:M"`` (keep N of every M consecutive inputs of each
            output, e.g. ``"2:4"`` for sparse tensor cores). Layers whose input count M does not
            divide stay dense (a log line says which).
        layers: module names or full-match regexes to prune (empty: every plain Linear).
        exclude: names or regexes left dense.
        keep_classifier: leave the last Linear (LM head / classifier) dense.
        calibration_batches: train batches whose inputs calibrate (>= 1).
        blocks: the block list (None: found automatically; "" the whole model is one block).

    Example:
        >>> OneShotPrune(pattern="2:4").nm
        (2, 4)
    """

    sparsity: float | None = None
    pattern: str = "unstructured"

    needs: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        nm = parse_pattern(self.pattern)
        if nm is not None and self.sparsity is not None:
            raise ValueError(
                f"sparsity={self.sparsity!r} cannot be combined with pattern={self.pattern!r} "
                f"(N:M sets it: {1 - nm[0] / nm[1]:g}); leave sparsity unset"
            )
        if self.sparsity is not None:
            check_fraction("sparsity", self.sparsity)
        check_blocks_setting(self.blocks)

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) of an N:M pattern, None for unstructured."""
        return parse_pattern(self.pattern)

    @property
    def target_sparsity(self) -> float:
        """The fraction of weights each pruned layer loses."""
        nm = self.nm
        return 1 - nm[0] / nm[1] if nm else (DEFAULT_SPARSITY if self.sparsity is None else self.sparsity)

    def prune_layer(
        self, layer: nn.Linear, stats: LayerStats, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(new weight or None to keep it, keep-mask) of one layer; ``keep``: earlier mask."""
        raise NotImplementedError

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        nm = self.nm
        targets = select_linears(model, layers=self.layers, exclude=self.exclude, keep_classifier=self.keep_classifier)
        undivided = [n for n, m in targets.items() if nm is not None and m.in_features % nm[1]]
        for name in undivided:
            ctx.log.append(f"{self.kind}: left {name} dense: {targets.pop(name).in_features} inputs, M={nm[1]}")
        if not targets:  # a step that changes nothing is an error, not a success
            why = (
                f"every one has inputs M={nm[1]} does not divide" if undivided else "only the kept last Linear, or none"
            )
            raise NothingToDo(f"{self.kind}: no Linear layer to prune ({why})")
        pruned: dict[str, nn.Parameter] = {}

        def process(run: BlockRun, groups: list[LayerGroup]) -> None:
            for group in groups:
                for name in group.selected:
                    layer, key = group.module(name), f"{name}.weight"
                    old = ctx.masks.get(key)
                    old = old if old is not None and old.shape == layer.weight.shape else None
                    weight, keep = self.prune_layer(layer, group.stats[name], old)
                    if weight is not None:
                        with torch.no_grad():
                            layer.weight.copy_(weight)
                    apply_masks({key: layer.weight}, {key: keep}, ctx)
                    pruned[key] = layer.weight

        batches = calibration_batches(ctx, self.calibration_batches, self.kind)
        run_sequential(model, batches, process, select=targets, needs=self.needs, blocks=self.blocks, log=ctx.log)
        ctx.log.append(
            f"{self.kind} ({self.pattern}): {len(pruned)} Linear layers, "
            f"{masked_fraction(ctx.masks, pruned):.2%} of their weights zero"
        )
        return model


@register_step("wanda", family="prune")
@dataclass(frozen=True)
class WandaPrune(OneShotPrune):
    """Wanda one-shot pruning by |weight| x input norm, per output row (Sun et al. 2024).

    Drops the weights of least |W_ij| * ||X_j||_2 in each output row (or each group of M inputs
    for ``pattern="N:M"``); no weight update.

    Settings: see ``OneShotPrune`` (sparsity, pattern, layers, exclude, keep_classifier,
    calibration_batches, blocks).

    Example:
        >>> WandaPrune(sparsity=0.6)  # doctest: +ELLIPSIS
        WandaPrune(sparsity=0.6, pattern='unstructured', ...)
    """

    needs: ClassVar[tuple[str, ...]] = ("sq_sum",)

    def prune_layer(
        self, layer: nn.Linear, stats: LayerStats, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        return None, wanda_mask(layer.weight, stats.norms(), sparsity=self.target_sparsity, nm=self.nm, keep=keep)
