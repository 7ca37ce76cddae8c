"""Low-rank factorization to a MACs or parameter budget: per-layer sensitivity, then ranks by knapsack.

Every candidate layer is factorized alone at each rank ``params:F`` for F in ``keep`` and the
increase of the task loss (or drop of the metric) on a few validation batches is recorded, the
other layers staying as they are. Summing these per-layer increases as the cost of a whole
assignment (the usual first-order model), the assignment of one candidate, or the unfactorized
layer, to every layer with the least summed increase and the model's MACs (or parameters) at
most ``target`` of the original is a multiple-choice knapsack: the one mixed-precision
quantization solves (``quantize.mixed.allocate_bits``), with each option's resource as its "bits".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

from torch import nn

from nncompress.base.checks import check_count
from nncompress.base.modules import replace_module
from nncompress.base.settings import LayerPatterns, LayerSelection
from nncompress.core.step import Step, StepContext, register_step
from nncompress.lowrank.layers import METHODS, Cost, Method, layer_cost
from nncompress.lowrank.ranks import RankRule, describe_rank
from nncompress.lowrank.steps import LayerPlan, factorizable_layers, plan_layer, replace_layer, runnable_layers
from nncompress.measure.flops import count_macs
from nncompress.measure.metric import evaluate, evaluate_loss
from nncompress.measure.size import count_params
from nncompress.quantize.mixed import allocate_bits

RESOURCES = ("macs", "params")
CRITERIA = ("loss", "metric")


class Candidate(NamedTuple):
    """One way to factorize a layer: its plan, the replacement module and its reconstruction error."""

    plan: LayerPlan
    module: nn.Module
    error: float


def _amount(cost: Cost, resource: str) -> int:
    return cost.macs if resource == "macs" else cost.params


@register_step("lowrank-budget", family="lowrank")
@dataclass(frozen=True)
class LowRankBudget(LayerPatterns, LayerSelection, Step):
    """Factorize layers at per-layer ranks that meet a MACs or parameter target with the least estimated loss.

    Args:
        target: the fraction of the model's MACs (``resource="macs"``) or parameters to keep, in (0, 1).
            Counted over the whole model; work outside the factorizable layers (attention
            products, the first conv and classifier when kept) counts against it unchanged.
        resource: ``"macs"`` (per sample, as ``measure.flops.count_macs`` counts them) or ``"params"``.
        keep: the candidate ranks of each layer, as fractions of its parameters (``params:F``).
        methods: the factorization of each layer type: ``"svd"`` for Linear and one of
            ``"tucker"``, ``"cp"``, ``"spatial-svd"`` for Conv2d.
        criterion: ``"loss"`` (increase of the task loss) or ``"metric"`` (worsening of the task metric,
            in its own direction: a drop of accuracy, a rise of perplexity)
            on ``val_batches`` validation batches.
        val_batches: validation batches each trial is scored on (>= 1).
        layers, exclude: module names or regexes to consider / leave (empty ``layers``: all).
        keep_first_conv, keep_classifier: leave the first Conv2d / last Linear as they are.

    Raises ValueError when the target cannot be met even at the smallest candidate ranks.

    Example:
        >>> LowRankBudget(target=0.4, methods=("svd", "spatial-svd"))  # doctest: +ELLIPSIS
        LowRankBudget(target=0.4, resource='macs', keep=(0.1, 0.25, 0.5), methods=('svd', 'spatial-svd'), ...)
    """

    target: float = 0.5
    resource: str = "macs"
    keep: tuple[float, ...] = (0.1, 0.25, 0.5)
    methods: tuple[str, ...] = ("svd", "tucker")
    criterion: str = "loss"
    val_batches: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)) or not 0 < self.target < 1:
            raise ValueError(
                f"target must be a fraction in (0, 1) of the model's {self.resource} to keep, got {self.target!r}"
            )
        if self.resource not in RESOURCES:
            raise ValueError(f"resource must be one of {', '.join(RESOURCES)}; got {self.resource!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}; got {self.criterion!r}")
        check_count("val_batches", self.val_batches)
        keep = tuple(self.keep)
        if not keep or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in keep):
            raise ValueError(f"keep must list fractions in (0, 1) of a layer's parameters, got {self.keep!r}")
        object.__setattr__(self, "keep", tuple(sorted({float(f) for f in keep})))
        self._check_methods(tuple(self.methods))
        object.__setattr__(self, "methods", tuple(self.methods))

    @staticmethod
    def _check_methods(methods: tuple[str, ...]) -> None:
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown:
            raise ValueError(f"methods must name factorizations among {', '.join(METHODS)}; got {methods!r}")
        types = [METHODS[m].layer_type for m in methods]
        if len(set(types)) != len(types):
            raise ValueError(
                f"methods may name one factorization per layer type (svd for Linear, one of "
                f"tucker/cp/spatial-svd for Conv2d); got {methods!r}"
            )

    def _candidates(self, method: Method, model: nn.Module, ctx: StepContext) -> dict[str, tuple[int, dict]]:
        """``{layer: (its own resource amount, {candidate amount: Candidate})}`` for one method."""
        targets = factorizable_layers(
            model,
            method.layer_type,
            layers=self.layers,
            exclude=self.exclude,
            keep_first_conv=self.keep_first_conv,
            keep_classifier=self.keep_classifier,
        )
        out = {}
        for name, io in (runnable_layers(method, model, targets, ctx) if targets else {}).items():
            module = model.get_submodule(name)
            options: dict[int, Candidate] = {}
            for fraction in self.keep:
                plan = plan_layer(method, name, module, RankRule("params", fraction), io)
                amount = _amount(plan.cost, self.resource)
                if plan.pays and amount not in options:
                    new, error = method.build(module, plan.rank, seed=ctx.seed)
                    options[amount] = Candidate(plan, new, error)
            if options:
                out[name] = (_amount(layer_cost(module, io), self.resource), options)
            else:
                ctx.log.append(f"{self.kind}: skipped {name}: no candidate rank is below break-even")
        return out

    def _scorer(self, ctx: StepContext) -> Callable[[nn.Module], float]:
        """``score(model)``, lower is better: the task loss, or the metric on the first val batches
        (negated for a higher-is-better metric such as accuracy, as is for perplexity)."""
        batches = list(islice(ctx.task.val, self.val_batches))
        if not batches:
            raise ValueError(f"{self.kind} scores layers on validation data: task {ctx.task.name!r} has no val batches")

        def score(model: nn.Module) -> float:
            if self.criterion == "loss":
                return evaluate_loss(model, batches, ctx.task.loss)
            value = evaluate(model, batches, ctx.task.metric_fn)
            return -value if ctx.task.higher_is_better else value  # lower score = better either way

        return score

    def _total(self, model: nn.Module, ctx: StepContext) -> int:
        return count_macs(model, ctx.task.single_example()) if self.resource == "macs" else count_params(model)

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        candidates: dict[str, tuple[int, dict]] = {}
        for kind in self.methods:
            candidates.update(self._candidates(METHODS[kind], model, ctx))
        total = self._total(model, ctx)
        if not candidates:
            ctx.log.append(f"{self.kind}: no layer to factorize")
            return model
        allowed = self.target * total - (total - sum(own for own, _ in candidates.values()))
        floor = sum(min(options) for _, options in candidates.values())
        if floor > allowed:
            reach = (total - sum(own for own, _ in candidates.values()) + floor) / total
            raise ValueError(
                f"{self.kind}: target={self.target} is out of reach: at the smallest candidate ranks "
                f"(keep={self.keep}) the model keeps {reach:.1%} of its {self.resource}; "
                "add smaller keep fractions, select more layers, or raise target"
            )
        sensitivity = self._sensitivity(model, candidates, ctx)
        chosen = allocate_bits(sensitivity, dict.fromkeys(sensitivity, 1), allowed / len(sensitivity))
        for name, amount in chosen.items():
            own, options = candidates[name]
            if amount == own:
                ctx.log.append(f"{self.kind}: kept {name} (least loss for the budget)")
                continue
            cand = options[amount]
            model = replace_layer(model, name, cand.module, ctx, self.kind)
            ctx.log.append(f"{cand.plan.done(self.kind, cand.error)}, sensitivity {sensitivity[name][amount]:+.4g}")
        after = self._total(model, ctx)
        ctx.log.append(
            f"{self.kind}: {self.resource} {total:,} -> {after:,} ({after / total:.1%} of the model, "
            f"target {self.target:.1%})"
        )
        return model

    def _sensitivity(
        self, model: nn.Module, candidates: dict[str, tuple[int, dict]], ctx: StepContext
    ) -> dict[str, dict[int, float]]:
        """``{layer: {amount: score increase}}`` with only that layer factorized (0 for the layer itself)."""
        score = self._scorer(ctx)
        base = score(model)
        out: dict[str, dict[int, float]] = {}
        for name, (own, options) in candidates.items():
            original = model.get_submodule(name)
            out[name] = {own: 0.0}
            try:
                for amount, cand in options.items():
                    replace_module(model, name, cand.module)
                    out[name][amount] = score(model) - base
            finally:
                replace_module(model, name, original)
            trials = ", ".join(f"rank {describe_rank(c.plan.rank)}: {out[name][a]:+.4g}" for a, c in options.items())
            ctx.log.append(f"{self.kind}: sensitivity of {name}: {trials}")
        return out
