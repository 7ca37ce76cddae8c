"""Lottery tickets: iterative magnitude pruning with rewinding.

Frankle & Carbin 2019 ("The Lottery Ticket Hypothesis") reset the surviving weights to their
initial values theta_0 after each round; Frankle et al. 2020 ("Linear Mode Connectivity and the
Lottery Ticket Hypothesis") rewind instead to theta_k, the weights after k training steps, which
is what makes tickets work for deeper networks.

The step starts from a re-initialization of the model (seeded by ``ctx.seed``), so it discards
the weights it is given and keeps only the architecture (and any masks from earlier steps).
Each trained round is recorded in ``ctx.log`` as a line ``lottery-ticket {json}``; the
report keeps it in the step's notes and ``lottery_rounds`` parses it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from nncompress.base.checks import check_count
from nncompress.base.settings import LayerSelection, TrainSettings, default
from nncompress.core.step import Step, StepContext, register_step
from nncompress.measure.metric import evaluate
from nncompress.prune.magnitude import SCOPES, MagnitudePrune, apply_masks, masked_fraction
from nncompress.prune.schedule import train_config, train_masked

LOG_PREFIX = "lottery-ticket "
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LotteryRound:
    """One trained round: its index r, the targeted weights' sparsity, the val metric."""

    round: int
    sparsity: float
    metric: float
    trained: bool = True


@register_step("lottery-ticket", family="prune")
@dataclass(frozen=True)
class LotteryTicket(TrainSettings, LayerSelection, Step):
    """Find a sparse trainable subnetwork by iterative magnitude pruning with rewinding.

    Round 0 trains the re-initialized dense model; each of ``rounds`` rounds then prunes
    ``rate`` of the remaining targeted weights (by magnitude), rewinds the survivors to theta_0
    (or theta_k) and trains again, so round r runs at sparsity 1 - (1 - rate)^r.

    Args:
        rounds: pruning rounds R (R + 1 trainings).
        rate: fraction of the surviving weights pruned per round, in (0, 1).
        epochs, lr, optimizer, weight_decay, max_steps: each training run (``TrainSettings``).
        rewind_steps: k; 0 rewinds to the initialization, k > 0 to the weights after k steps
            of round 0's training.
        scope: ``"global"`` magnitude ranking over all targeted layers, or ``"layer"``.
        train_final: train the final ticket; False returns it rewound, untrained.
        keep_first_conv, keep_classifier, exclude: which weights to prune (``LayerSelection``).

    Example:
        >>> LotteryTicket(rounds=5, rate=0.2, rewind_steps=100)  # doctest: +ELLIPSIS
        LotteryTicket(rounds=5, rate=0.2, rewind_steps=100, ..., epochs=1.0, lr=0.001, ...)
    """

    rounds: int = 3
    rate: float = 0.2
    lr: float = default(1e-3)
    rewind_steps: int = 0
    scope: str = "global"
    train_final: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("rounds", self.rounds)
        if not isinstance(self.rate, (int, float)) or not 0.0 < self.rate < 1.0:
            raise ValueError(f"rate must be in (0, 1), got {self.rate!r}")
        check_count("rewind_steps", self.rewind_steps, minimum=0)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")

    def sparsity_after(self, r: int) -> float:
        """Target sparsity after ``r`` rounds: 1 - (1 - rate)^r."""
        return 1.0 - (1.0 - self.rate) ** r

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        pruner = MagnitudePrune(
            sparsity=0.0,
            scope=self.scope,
            exclude=self.exclude,
            keep_first_conv=self.keep_first_conv,
            keep_classifier=self.keep_classifier,
        )
        targets = pruner.targets(model)
        reinitialize(model, ctx.seed)
        apply_masks(targets, {n: torch.ones_like(w, dtype=torch.bool) for n, w in targets.items()}, ctx)
        rewind_point = self.train_round(model, ctx, targets, 0)
        for r in range(1, self.rounds + 1):
            keep = replace(pruner, sparsity=self.sparsity_after(r)).keep_masks(model, ctx, targets)
            apply_masks(targets, keep, ctx)
            rewind(model, rewind_point, ctx.masks)
            if r < self.rounds or self.train_final:
                self.train_round(model, ctx, targets, r)
            else:
                record(ctx, model, targets, r, trained=False)
        return model

    def train_round(self, model: nn.Module, ctx: StepContext, targets: Mapping[str, nn.Parameter], r: int) -> State:
        """Train one round and log it; return the rewind point (theta_0, or theta_k in round 0)."""
        start = snapshot(model) if r == 0 else {}  # only round 0 sets the rewind point
        k = self.rewind_steps if r == 0 else 0
        taken: list[State] = []
        steps = 0

        def after(m: nn.Module) -> None:
            nonlocal steps
            steps += 1
            if steps == k:
                taken.append(snapshot(m))

        train_masked(model, ctx, train_config(self, ctx.seed), f"lottery-ticket round {r}", after=after)
        if k and not taken:
            raise ValueError(
                f"rewind_steps={k} is more than the {steps} steps of a training "
                f"round; lower it or train longer (epochs, max_steps)"
            )
        record(ctx, model, targets, r, trained=True)
        return taken[0] if taken else start


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter of modules that define ``reset_parameters`` (theta_0 for ``seed``).

    Parameters held outside such modules (e.g. a ViT's class token) keep their values.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return model


def snapshot(model: nn.Module) -> State:
    """A detached copy of the state dict (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rewind(model: nn.Module, state: State, masks: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` and zero the masked-out weights: survivors get their rewind values."""
    model.load_state_dict(state)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name in params and params[name].shape == mask.shape:
                params[name].mul_(mask)


def record(
    ctx: StepContext, model: nn.Module, targets: Mapping[str, nn.Parameter], r: int, *, trained: bool
) -> LotteryRound:
    """Evaluate on the val split and log the round as ``lottery-ticket {json}``."""
    entry = LotteryRound(
        round=r,
        sparsity=masked_fraction(ctx.masks, targets),
        metric=evaluate(model, ctx.task.val, ctx.task.metric_fn),
        trained=trained,
    )
    ctx.log.append(LOG_PREFIX + json.dumps(asdict(entry)))
    return entry


def lottery_rounds(log: Iterable[str]) -> list[LotteryRound]:
    """The rounds recorded in a step's log lines (``ctx.log`` or a report's step notes).

    Example:
        >>> lottery_rounds(['lottery-ticket {"round": 1, "sparsity": 0.2, "metric": 0.9}'])
        [LotteryRound(round=1, sparsity=0.2, metric=0.9, trained=True)]
    """
    return [LotteryRound(**json.loads(line[len(LOG_PREFIX) :])) for line in log if line.startswith(LOG_PREFIX)]
