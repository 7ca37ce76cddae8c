"""Unstructured magnitude pruning (Han et al. 2015): zero the smallest weights, keep a mask.

By percentage (``sparsity``) or by absolute ``threshold``; over all layers at once
(``scope="global"``) or each layer alone (``scope="layer"``). The artifact stores the
survivors sparsely, so the file shrinks with the sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nncompress.core.step import Step, StepContext, register_step
from nncompress.prune.targets import prunable_weights


@register_step("magnitude-prune", family="prune")
@dataclass(frozen=True)
class MagnitudePrune(Step):
    """Zero the weights of smallest magnitude in Linear and Conv layers.

    Args:
        sparsity: fraction of the targeted weights to zero, in [0, 1).
        threshold: instead of ``sparsity``, zero every weight with ``|w| < threshold``.
        scope: ``"global"`` ranks all targeted weights together; ``"layer"`` each layer alone.
        keep_first_conv: leave the first convolution dense (it is small and sensitive).
        keep_classifier: leave the last Linear layer dense.
        exclude: module names to leave dense.

    Example:
        >>> MagnitudePrune(sparsity=0.9, scope="global")
        MagnitudePrune(sparsity=0.9, threshold=None, scope='global', keep_first_conv=True, keep_classifier=True, exclude=())
    """

    sparsity: float | None = 0.5
    threshold: float | None = None
    scope: str = "global"
    keep_first_conv: bool = True
    keep_classifier: bool = True
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.threshold is None:
            if self.sparsity is None or not 0.0 <= self.sparsity < 1.0:
                raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        elif self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        targets = prunable_weights(
            model, keep_first_conv=self.keep_first_conv, keep_classifier=self.keep_classifier,
            exclude=self.exclude,
        )
        if not targets:
            raise ValueError("no Linear or Conv weights left to prune after exclusions")
        with torch.no_grad():
            if self.threshold is not None:
                thresholds = {name: self.threshold for name in targets}
            elif self.scope == "global":
                everything = torch.cat([w.detach().abs().flatten() for w in targets.values()])
                t = kth_smallest(everything, self.sparsity)
                thresholds = {name: t for name in targets}
            else:
                thresholds = {n: kth_smallest(w.detach().abs().flatten(), self.sparsity)
                              for n, w in targets.items()}
            for name, weight in targets.items():
                keep = weight.abs() > thresholds[name]
                old = ctx.masks.get(name)
                keep = keep & old if old is not None else keep
                weight.mul_(keep)
                ctx.masks[name] = keep
                ctx.log.append(f"{name}: {1 - keep.float().mean().item():.1%} zero")
        return model


def kth_smallest(values: torch.Tensor, fraction: float) -> float:
    """The magnitude below or at which ``fraction`` of ``values`` lie (0 keeps everything)."""
    k = int(round(fraction * values.numel()))
    if k <= 0:
        return -1.0  # nothing is <= -1 in absolute value: keep all
    return values.kthvalue(k).values.item()
