"""SparseGPT one-shot pruning (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can
Be Accurately Pruned in One-Shot").

Optimal Brain Surgeon, made tractable the GPTQ way: columns of a Linear's weight are visited in
order and, after a column's pruned weights are zeroed, its error is spread over the columns not
yet visited through the inverse Hessian H^-1 (H = 2 X^T X / rows; its upper Cholesky factor, as in
``quantize/gptq.py``), so the kept weights compensate. The mask is chosen adaptively per block
of ``block_size`` columns, by the OBS saliency w^2 / [H^-1]_jj^2, on weights already updated by
the earlier blocks; for N:M, per group of M columns. Here each block prunes the count that
keeps the running total at exactly round(sparsity * weights).

Example:
    >>> w, x = torch.randn(4, 16), torch.randn(64, 16)
    >>> w_new, keep = sparsegpt_prune(w, 2 * x.T @ x / 64, sparsity=0.5)
    >>> int(keep.sum()), bool((w_new[~keep] == 0).all())
    (32, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from nncompress.base.checks import check_count
from nncompress.core.sequential import LayerStats
from nncompress.core.step import register_step
from nncompress.prune.wanda import DEFAULT_SPARSITY, OneShotPrune
from nncompress.quantize.gptq import check_percdamp, inverse_hessian_cholesky, prepare_hessian


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float = DEFAULT_SPARSITY,
    nm: tuple[int, int] | None = None,
    percdamp: float = 0.01,
    block_size: int = 128,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one Linear weight (out, in) given H of its inputs (in, in).

    Args:
        sparsity: fraction to prune (unstructured).
        nm: (N, M): keep N of every M consecutive inputs instead; M must divide ``block_size``.
        percdamp: Hessian dampening as a fraction of its mean diagonal.
        block_size: columns per mask choice and lazy update.
        keep: an earlier keep-mask; its pruned weights are pruned first.

    Returns:
        (new weight, keep-mask): pruned entries exactly 0, the others updated to compensate.
    """
    if nm is not None and block_size % nm[1]:
        raise ValueError(f"block_size {block_size} must be a multiple of M={nm[1]}")
    w, h = prepare_hessian(weight, hessian)
    rows, cols = w.shape
    hinv = inverse_hessian_cholesky(h, percdamp)
    prune = torch.zeros_like(w, dtype=torch.bool)
    forced = ~keep.to(w.device) if keep is not None else None
    done = 0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        d = hinv1.diagonal()
        err1 = torch.zeros_like(w1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)  # True: pruned
        if nm is None:  # this block's share, so the running total stays exact
            k = round(sparsity * rows * i2) - done
            saliency = _saliency(w1, d, forced, i1, i2)
            if k > 0:
                mask1.view(-1)[saliency.flatten().topk(k, largest=False).indices] = True
            done += k
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                j = slice(i, i + nm[1])
                saliency = _saliency(w1[:, j], d[j], forced, i1 + i, i1 + i + nm[1])
                mask1[:, j].scatter_(1, saliency.topk(nm[1] - nm[0], dim=1, largest=False).indices, True)
            q = w1[:, i].masked_fill(mask1[:, i], 0.0)
            err = (w1[:, i] - q) / d[i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]  # the kept weights compensate
            w1[:, i], err1[:, i] = q, err  # exactly 0 where pruned (not 0 up to rounding)
        w[:, i1:i2], prune[:, i1:i2] = w1, mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w.to(weight.dtype), ~prune


def _saliency(w: torch.Tensor, d: torch.Tensor, forced: torch.Tensor | None, c1: int, c2: int) -> torch.Tensor:
    """OBS saliency w^2 / [H^-1]_jj^2 (columns c1:c2), -1 where an earlier mask already pruned."""
    s = w.square() / d.square()[None, :]
    return s if forced is None else s.masked_fill(forced[:, c1:c2], -1.0)


@register_step("sparsegpt", family="prune")
@dataclass(frozen=True)
class SparseGPTPrune(OneShotPrune):
    """SparseGPT one-shot pruning with inverse-Hessian weight updates (Frantar & Alistarh 2023).

    OBS-style column-by-column pruning with error compensation, masks chosen per block of
    ``block_size`` columns (unstructured) or per M columns (``pattern="N:M"``).

    Args:
        sparsity, pattern, layers, exclude, keep_classifier, calibration_batches, blocks: see
            ``OneShotPrune``.
        percdamp: Hessian dampening as a fraction of its mean diagonal, in (0, 1].
        block_size: columns per mask choice and lazy update (128 as in the paper); a multiple of M.

    Example:
        >>> SparseGPTPrune(pattern="2:4")  # doctest: +ELLIPSIS
        SparseGPTPrune(sparsity=None, pattern='2:4', percdamp=0.01, block_size=128, ...)
    """

    percdamp: float = 0.01
    block_size: int = 128

    needs: ClassVar[tuple[str, ...]] = ("hessian",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_percdamp(self.percdamp)
        check_count("block_size", self.block_size)
        nm = self.nm
        if nm is not None and self.block_size % nm[1]:
            raise ValueError(
                f"block_size must be a multiple of M={nm[1]} for pattern {self.pattern!r}, got {self.block_size}"
            )

    def prune_layer(
        self, layer: nn.Linear, stats: LayerStats, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        return sparsegpt_prune(
            layer.weight,
            stats.hessian(),
            sparsity=self.target_sparsity,
            nm=self.nm,
            percdamp=self.percdamp,
            block_size=self.block_size,
            keep=keep,
        )
