"""Unstructured pruning (Han et al. 2015): zero the individual weights of lowest importance.

Importance is pluggable (``prune/criteria/``, one class per criterion): magnitude (L1 or L2), LAMP, first-order Taylor
(gradients of the task loss), Wanda (|w| times input-feature norms) or random. Prune a percentage
(``sparsity``) or below an absolute score ``threshold``; over all layers at once
(``scope="global"``) or each alone (``scope="layer"``); with per-layer overrides
(``layer_sparsity``). Masks go into ``ctx.masks`` (ANDed with earlier ones) so that later
training keeps pruned weights at zero; the artifact stores the survivors sparsely.

The helpers here (``weight_scores``, ``keep_top``, ``apply_masks``) are reused by the N:M,
gradual, iterative and lottery-ticket steps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from nncompress.base.settings import CalibrationSettings, LayerSelection
from nncompress.core.step import Step, StepContext, register_step
from nncompress.prune.criteria import get_criterion
from nncompress.prune.targets import prunable_weights, recurrent_note

MAGNITUDE_CRITERIA = ("magnitude", "l1", "l2")
SCOPES = ("global", "layer")
DEFAULT_SPARSITY = 0.5


@register_step("unstructured-prune", family="prune")
@dataclass(frozen=True)
class UnstructuredPrune(LayerSelection, CalibrationSettings, Step):
    """Zero the least important individual weights of Linear and Conv layers and of LSTM/GRU gate matrices.

    Args:
        sparsity: fraction of the targeted weights to zero, in [0, 1). Counts weights pruned by
            earlier steps, so pruning a 50%-sparse model to 0.8 zeroes 30% more. None: 0.5, unless
            ``threshold`` is given.
        threshold: instead of ``sparsity``, zero every weight whose score is below it (a finite
            number >= 0; giving both is an error).
        scope: ``"global"`` ranks all targeted weights together; ``"layer"`` each layer alone.
        keep_first_conv: leave the first convolution dense (it is small and sensitive).
        keep_classifier: leave the last Linear layer dense.
        exclude: module names or regexes (full match) left dense, with their children.
        criterion: ``"magnitude"``/``"l1"`` (|w|), ``"l2"`` (w^2), ``"lamp"`` (w^2 rescaled per layer,
            for ``scope="global"``), ``"taylor"`` (|w dL/dw|),
            ``"wanda"`` (|w| * input norm) or ``"random"``. Taylor and Wanda read
            ``calibration_batches`` batches of the task's train split.
        layer_sparsity: ``(module name or regex, sparsity)`` pairs; a matching layer is pruned
            alone to that sparsity (first match wins), the rest as ``scope`` says.
        calibration_batches: batches used by the data-driven criteria.

    Example:
        >>> UnstructuredPrune(sparsity=0.8, criterion="wanda")  # doctest: +ELLIPSIS
        UnstructuredPrune(sparsity=0.8, ..., criterion='wanda', layer_sparsity=(), ...)
    """

    exclusive = (("threshold", "sparsity"),)

    sparsity: float | None = None
    threshold: float | None = None
    scope: str = "global"
    criterion: str = "magnitude"
    layer_sparsity: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold is None and self.sparsity is None:
            object.__setattr__(self, "sparsity", DEFAULT_SPARSITY)
        if self.threshold is None:
            check_fraction("sparsity", self.sparsity)
        elif self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        get_criterion(self.criterion)
        object.__setattr__(self, "layer_sparsity", normalize_overrides(self.layer_sparsity))

    def targets(self, model: nn.Module, ctx: StepContext | None = None) -> dict[str, nn.Parameter]:
        """The weights this step may prune, by parameter name (LSTM/GRU gate matrices included,
        unless the criterion reads layer inputs: then they are named in ``ctx``'s notes)."""
        recurrent, note = recurrent_note(model, self.criterion, self.exclude, self.kind)
        if note and ctx is not None:
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
        return targets

    def keep_masks(
        self, model: nn.Module, ctx: StepContext, targets: Mapping[str, nn.Parameter]
    ) -> dict[str, torch.Tensor]:
        """Boolean keep-masks for ``targets`` (weights masked out in ``ctx.masks`` stay out)."""
        scores = weight_scores(model, targets, self.criterion, ctx, self.calibration_batches)
        scores = {n: demote_pruned(s, ctx.masks.get(n)) for n, s in scores.items()}
        overrides = match_overrides(list(scores), self.layer_sparsity)
        keep: dict[str, torch.Tensor] = {}
        for name, sparsity in overrides.items():
            keep.update(keep_top({name: scores[name]}, sparsity))
        rest = {n: s for n, s in scores.items() if n not in overrides}
        if self.threshold is not None:
            keep.update({n: s >= self.threshold for n, s in rest.items()})
        elif self.scope == "global" and rest:
            keep.update(keep_top(rest, self.sparsity))
        else:
            for name, s in rest.items():
                keep.update(keep_top({name: s}, self.sparsity))
        return keep

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        targets = self.targets(model, ctx)
        apply_masks(targets, self.keep_masks(model, ctx, targets), ctx)
        for name in targets:
            ctx.log.append(f"{name}: {1 - ctx.masks[name].float().mean().item():.1%} zero")
        ctx.log.append(
            f"{self.kind} ({self.criterion}): {masked_fraction(ctx.masks, targets):.2%} of targeted weights zero"
        )
        return model


@register_step("magnitude-prune", family="prune")
@dataclass(frozen=True)
class MagnitudePrune(UnstructuredPrune):
    """Zero the weights of smallest magnitude in Linear and Conv layers.

    The same settings as ``UnstructuredPrune``, with ``criterion`` limited to ``"magnitude"``,
    ``"l1"`` or ``"l2"`` (for percentages all three rank weights identically).

    Example:
        >>> MagnitudePrune(sparsity=0.9, scope="global")  # doctest: +ELLIPSIS
        MagnitudePrune(sparsity=0.9, threshold=None, scope='global', ...)
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.criterion not in MAGNITUDE_CRITERIA:
            raise ValueError(
                f"MagnitudePrune's criterion must be one of "
                f"{', '.join(MAGNITUDE_CRITERIA)}; got {self.criterion!r} "
                f"(use UnstructuredPrune for other criteria)"
            )


def check_fraction(name: str, value: float | None) -> None:
    """Raise ValueError unless ``value`` is a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def normalize_overrides(pairs: object) -> tuple[tuple[str, float], ...]:
    """``layer_sparsity`` as a tuple of (pattern, sparsity); accepts a dict or lists (TOML)."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)  # type: ignore[call-overload]
    out = []
    for item in items:
        if isinstance(item, str) or len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(f"layer_sparsity entries must be (module name or regex, sparsity) pairs, got {item!r}")
        pattern, sparsity = item
        check_fraction(f"layer_sparsity[{pattern!r}]", sparsity)
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"layer_sparsity pattern {pattern!r} is not a valid regex: {e}") from e
        out.append((pattern, float(sparsity)))
    return tuple(out)


def match_overrides(names: list[str], overrides: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """``{param name: sparsity}`` for targets whose module name fully matches a pattern."""
    matched: dict[str, float] = {}
    for pattern, sparsity in overrides:
        hits = [n for n in names if re.fullmatch(pattern, module_name(n))]
        if not hits:
            raise ValueError(
                f"layer_sparsity pattern {pattern!r} matches no pruned layer; "
                f"layers: {', '.join(module_name(n) for n in names)}"
            )
        for name in hits:
            matched.setdefault(name, sparsity)
    return matched


def module_name(param_name: str) -> str:
    """``"blocks.0.fc1.weight"`` -> ``"blocks.0.fc1"``."""
    return param_name.rpartition(".")[0]


def weight_scores(
    model: nn.Module,
    targets: Mapping[str, nn.Parameter],
    criterion: str,
    ctx: StepContext,
    batches: int,
) -> dict[str, torch.Tensor]:
    """Importance of every weight of ``targets`` under ``criterion`` (``prune/criteria``; higher = keep)."""
    was_training = model.training
    try:
        return get_criterion(criterion).weight_scores(model, targets, ctx, batches)
    finally:
        model.train(was_training)


def demote_pruned(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scores with already-pruned entries set to -1, below every criterion's range (>= 0)."""
    if mask is None or mask.shape != scores.shape:
        return scores
    return scores.masked_fill(~mask.to(scores.device), -1.0)


def keep_top(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks that drop exactly ``round(sparsity * N)`` lowest scores, ranked over all tensors.

    Exact counts (not a threshold) so ties cannot overshoot the target sparsity.
    """
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    k = round(sparsity * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        keep[flat.topk(k, largest=False, sorted=False).indices] = False
    parts = keep.split([s.numel() for s in scores.values()])
    return {n: part.view(s.shape) for (n, s), part in zip(scores.items(), parts)}


def apply_masks(targets: Mapping[str, nn.Parameter], keep: Mapping[str, torch.Tensor], ctx: StepContext) -> None:
    """AND ``keep`` into ``ctx.masks`` and zero the weights it drops."""
    with torch.no_grad():
        for name, mask in keep.items():
            weight = targets[name]
            mask = mask.to(weight.device)
            old = ctx.masks.get(name)
            if old is not None and old.shape == mask.shape:
                mask = mask & old.to(mask.device)
            weight.mul_(mask)
            ctx.masks[name] = mask


def masked_fraction(masks: Mapping[str, torch.Tensor], names: Mapping[str, object]) -> float:
    """Fraction of the entries of ``masks[names]`` that are pruned (False)."""
    total = sum(masks[n].numel() for n in names)
    kept = sum(int(masks[n].sum()) for n in names)
    return 1.0 - kept / max(1, total)
