"""Pruning schedules: reach a high sparsity in small steps while training recovers in between.

- ``GradualPrune`` ("gradual-prune"): the cubic ramp of Zhu & Gupta 2017 ("To prune, or not to
  prune"), s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, updated every ``frequency``
  optimizer steps *during* one fine-tuning run, then training on with the masks fixed.
- ``IterativePrune`` ("iterative-prune"): ``rounds`` rounds of (prune to the next sparsity on a
  geometric or linear path, then a short fine-tune), as in Han et al. 2015.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from nncompress.base.checks import check_choice, check_count
from nncompress.base.settings import CalibrationSettings, KDSettings, LayerSelection, TrainSettings
from nncompress.core.step import Step, StepContext, register_step
from nncompress.prune.criteria import get_criterion
from nncompress.prune.magnitude import SCOPES, UnstructuredPrune, apply_masks, check_fraction, masked_fraction
from nncompress.train.best import BestOnValidation
from nncompress.train.loop import LossFn, TrainConfig, TrainHistory, fit, total_steps, train_config
from nncompress.train.masks import mask_hooks
from nncompress.train.objective import distill_note, step_loss, task_loss

PATHS = ("geometric", "linear")


def cubic_sparsity(step: int, *, initial: float, final: float, begin: int, end: int, power: float = 3.0) -> float:
    """Zhu & Gupta's target sparsity at optimizer step ``step``, ramping over [begin, end].

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (end - t0))^power, held at s_i before ``begin``
    and at s_f from ``end`` on (a zero-length ramp jumps straight to s_f).

    Example:
        >>> cubic_sparsity(25, initial=0.0, final=0.8, begin=0, end=100)
        0.4625
    """
    if end < begin:
        raise ValueError(f"end ({end}) must not be before begin ({begin})")
    if step >= end:
        return final
    progress = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return final + (initial - final) * (1.0 - progress) ** power


def prune_points(begin: int, end: int, frequency: int) -> list[int]:
    """Steps at which the masks are updated: begin, begin + frequency, ..., and always end."""
    return sorted(set(range(begin, end, frequency)) | {end})


def round_sparsities(final: float, rounds: int, path: str) -> list[float]:
    """Sparsity after each of ``rounds`` rounds, ending exactly at ``final``.

    ``"geometric"`` prunes the same fraction of the survivors each round,
    1 - (1 - s_f)^(r/R); ``"linear"`` adds the same fraction of all weights, s_f * r/R.

    Example:
        >>> round_sparsities(0.75, 2, "geometric")
        [0.5, 0.75]
    """
    if path == "geometric":
        return [1.0 - (1.0 - final) ** (r / rounds) if r < rounds else final for r in range(1, rounds + 1)]
    if path == "linear":
        return [final * r / rounds for r in range(1, rounds + 1)]
    raise ValueError(f"path must be one of {', '.join(PATHS)}; got {path!r}")


def train_masked(
    model: nn.Module,
    ctx: StepContext,
    config: TrainConfig,
    description: str,
    after: Callable[[nn.Module], None] | None = None,
    loss_fn: LossFn | None = None,
) -> TrainHistory:
    """``fit`` on the task's train split with ``ctx.masks`` held fixed, on ``loss_fn`` (default: the
    task's loss); ``after`` runs last."""
    before_step, after_step = mask_hooks(model, ctx.masks)

    def after_all(m: nn.Module) -> None:
        after_step(m)
        if after is not None:
            after(m)

    return fit(
        model,
        ctx.task.train,
        config,
        loss_fn=loss_fn or task_loss(ctx.task),
        before_step=before_step,
        after_step=after_all,
        description=description,
    )


def make_pruner(step: Any, sparsity: float) -> UnstructuredPrune:
    """An ``UnstructuredPrune`` with a schedule step's targeting and scoring settings."""
    return UnstructuredPrune(
        sparsity=sparsity,
        scope=step.scope,
        criterion=step.criterion,
        keep_first_conv=step.keep_first_conv,
        keep_classifier=step.keep_classifier,
        exclude=step.exclude,
        calibration_batches=step.calibration_batches,
    )


@dataclass(frozen=True, kw_only=True)
class ScheduledPruneSettings(TrainSettings, KDSettings, LayerSelection, CalibrationSettings):
    """The settings block of the steps that prune while training: what to prune and how to score it
    (``criterion``, ``scope`` and the layer selection, as in ``UnstructuredPrune``), the training run
    and optional distillation."""

    criterion: str = "magnitude"
    scope: str = "global"

    def __post_init__(self) -> None:
        super().__post_init__()
        get_criterion(self.criterion)
        check_choice("scope", self.scope, SCOPES)


@register_step("gradual-prune", family="prune")
@dataclass(frozen=True)
class GradualPrune(ScheduledPruneSettings, Step):
    """Prune while fine-tuning, along Zhu & Gupta's cubic ramp, then train on with masks fixed.

    Args:
        sparsity: final sparsity s_f of the targeted weights, in [0, 1).
        initial_sparsity: s_i, applied when the ramp begins.
        frequency: optimizer steps between mask updates (dt).
        begin, end: where the ramp starts and reaches s_f, as fractions of the training steps;
            the steps after ``end`` fine-tune the final sparse model.
        keep_best: evaluate on the validation split at each epoch's end once the ramp is done and
            return the best of those checkpoints (same masks), not the last.
        criterion, scope, layer selection, training run, distillation: ``ScheduledPruneSettings``.

    Example:
        >>> GradualPrune(sparsity=0.9, frequency=50, epochs=4)  # doctest: +ELLIPSIS
        GradualPrune(sparsity=0.9, initial_sparsity=0.0, frequency=50, ...)
    """

    sparsity: float = 0.9
    initial_sparsity: float = 0.0
    frequency: int = 10
    begin: float = 0.0
    end: float = 0.75
    keep_best: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("sparsity", self.sparsity)
        check_fraction("initial_sparsity", self.initial_sparsity)
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity ({self.initial_sparsity}) must not exceed sparsity ({self.sparsity})")
        check_count("frequency", self.frequency)
        if not 0.0 <= self.begin <= self.end <= 1.0:
            raise ValueError(
                f"need 0 <= begin <= end <= 1 (fractions of the training steps), got begin={self.begin}, end={self.end}"
            )

    def config(self, seed: int) -> TrainConfig:
        return train_config(self, seed)

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        pruner = make_pruner(self, self.initial_sparsity)
        targets = pruner.targets(model)
        config = self.config(ctx.seed)
        total = total_steps(ctx.task.train, config)
        t0, t1 = int(self.begin * total), int(self.end * total)
        points = set(prune_points(t0, t1, self.frequency))

        def prune_at(step: int) -> None:
            s = cubic_sparsity(step, initial=self.initial_sparsity, final=self.sparsity, begin=t0, end=t1)
            apply_masks(targets, replace(pruner, sparsity=s).keep_masks(model, ctx, targets), ctx)
            ctx.log.append(f"gradual-prune step {step}: target {s:.4f}, {masked_fraction(ctx.masks, targets):.4f} zero")

        if 0 in points:
            prune_at(0)
        hooks = list(mask_hooks(model, ctx.masks))
        done = 0
        best = BestOnValidation(ctx.task) if self.keep_best else None
        per_epoch = len(ctx.task.train) if hasattr(ctx.task.train, "__len__") else total  # type: ignore[arg-type]

        def after(m: nn.Module) -> None:
            nonlocal done
            hooks[1](m)
            done += 1
            if done in points:
                prune_at(done)
                hooks[:] = mask_hooks(model, ctx.masks)  # the hooks hold the mask tensors
            if best is not None and done >= t1 and (done % per_epoch == 0 or done == total):
                best.check(m, done)

        history = fit(
            model,
            ctx.task.train,
            config,
            loss_fn=step_loss(self, ctx),
            before_step=lambda m: hooks[0](m),
            after_step=after,
            description="gradual-prune",
        )
        ctx.log.append(
            f"gradual-prune: {history.steps} steps, ramp {t0}..{t1} every "
            f"{self.frequency}, {distill_note(self, ctx)}, last loss {history.losses[-1]:.4f}"
        )
        if best is not None:
            best.restore(model)
            ctx.log.append(f"gradual-prune: kept the {best.describe()}")
        return model


@register_step("iterative-prune", family="prune")
@dataclass(frozen=True)
class IterativePrune(ScheduledPruneSettings, Step):
    """Prune in ``rounds`` rounds, each followed by a short fine-tune with the masks fixed.

    Args:
        sparsity: final sparsity of the targeted weights, in [0, 1).
        rounds: number of prune-then-fine-tune rounds.
        path: ``"geometric"`` (the same fraction of survivors each round) or ``"linear"``.
        criterion, scope, layer selection, each round's training run, distillation:
            ``ScheduledPruneSettings``.

    Example:
        >>> IterativePrune(sparsity=0.9, rounds=3, path="geometric")  # doctest: +ELLIPSIS
        IterativePrune(sparsity=0.9, rounds=3, path='geometric', ...)
    """

    sparsity: float = 0.9
    rounds: int = 3
    path: str = "geometric"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("sparsity", self.sparsity)
        check_count("rounds", self.rounds)
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}; got {self.path!r}")

    def config(self, seed: int) -> TrainConfig:
        return train_config(self, seed)

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        pruner = make_pruner(self, self.sparsity)
        targets = pruner.targets(model)
        for r, s in enumerate(round_sparsities(self.sparsity, self.rounds, self.path), start=1):
            keep = replace(pruner, sparsity=s).keep_masks(model, ctx, targets)
            apply_masks(targets, keep, ctx)
            history = train_masked(
                model, ctx, self.config(ctx.seed), f"iterative-prune {r}", loss_fn=step_loss(self, ctx)
            )
            ctx.log.append(
                f"iterative-prune round {r}: target {s:.4f}, "
                f"{masked_fraction(ctx.masks, targets):.4f} zero, {distill_note(self, ctx)}, "
                f"last loss {history.losses[-1]:.4f}"
            )
        return model
