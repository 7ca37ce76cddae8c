"""Low-rank factorization steps: ``svd`` (Linear), ``tucker``, ``cp`` and ``spatial-svd`` (Conv2d).

Each step picks its layers (``layers`` / ``exclude`` names or regexes, as in the quantize steps),
chooses each layer's rank by its ``rank`` rule (``ranks.py``), skips layers where that rank is at
or above the break-even (the factors would not have fewer parameters and MACs than the layer)
and replaces the rest by a sequence of smaller plain layers (``layers.py``). Every decision goes
into ``ctx.log`` and so into the report's step notes: the rank chosen, the full rank, the
relative reconstruction error before any fine-tuning, parameters and MACs before and after, and
why a layer was skipped. Fine-tuning afterwards is the ``finetune`` or ``distill`` step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from nncompress.base.checks import NothingToDo, check_flag
from nncompress.base.modules import replace_module, skipped_layers, skipped_note, weight_layers
from nncompress.base.selection import check_patterns, is_excluded
from nncompress.base.settings import CalibrationSettings, KeepClassifier, KeepFirstConv, LayerPatterns
from nncompress.core.step import Step, StepContext, register_step
from nncompress.lowrank.layers import CP, Cost, LayerIO, LinearSVD, Method, SpatialSVD, Tucker2, layer_cost
from nncompress.lowrank.probe import input_grams, layer_io
from nncompress.lowrank.ranks import Rank, RankRule, break_even, choose_rank, describe_rank, parse_rank

FACTORIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)  # every layer type some method factorizes


def factorizable_layers(
    model: nn.Module,
    layer_type: type[nn.Module] | tuple[type[nn.Module], ...],
    *,
    layers: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    keep_first_conv: bool = False,
    keep_classifier: bool = False,
) -> dict[str, nn.Module]:
    """``{name: module}`` of the plain ``layer_type`` layers (a type or a tuple of types) selected:
    inside ``layers`` (names or regexes of the layers or their parents; empty: all), outside
    ``exclude``, minus the first convolution / last Linear when asked to keep them."""
    check_patterns(model, layers, "layers")
    check_patterns(model, exclude, "exclude")
    types = layer_type if isinstance(layer_type, tuple) else (layer_type,)
    found = weight_layers(model, FACTORIZABLE)
    convs = [n for n, m in found if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    linears = [n for n, m in found if isinstance(m, nn.Linear)]
    kept = {convs[0]} if keep_first_conv and convs else set()
    kept |= {linears[-1]} if keep_classifier and linears else set()
    return {
        n: m
        for n, m in found
        if type(m) in types and n not in kept and (not layers or is_excluded(n, layers)) and not is_excluded(n, exclude)
    }


def runnable_layers(
    method: Method, model: nn.Module, targets: dict[str, nn.Module], ctx: StepContext
) -> dict[str, LayerIO]:
    """``LayerIO`` of the targets ``method`` can factorize, measured on the task's single example;
    logs why the others are skipped (grouped convs, layers the forward pass does not call)."""
    io = layer_io(model, targets, ctx.task.single_example())
    out = {}
    for name, module in targets.items():
        reason = method.skip_reason(module) or (None if name in io else "not called by the model's forward")
        if reason:
            ctx.log.append(f"{method.kind}: skipped {name}: {reason}")
        else:
            out[name] = io[name]
    return out


@dataclass(frozen=True)
class LayerPlan:
    """A layer's chosen rank and what it costs, against the layer and the break-even rank."""

    name: str
    rank: Rank
    full: Rank | None  # None where the method has no full rank (CP)
    cost: Cost
    original: Cost
    break_even: Rank | None

    @property
    def pays(self) -> bool:
        return self.cost.below(self.original)

    def skipped(self, kind: str) -> str:
        """The log line of a layer left as it is because factorizing would not pay."""
        at = f" >= break-even {describe_rank(self.break_even)}" if self.break_even else ""
        return (
            f"{kind}: skipped {self.name}: rank {describe_rank(self.rank)}{at} "
            f"({self.cost.params:,} params / {self.cost.macs:,} MACs against the layer's "
            f"{self.original.params:,} / {self.original.macs:,})"
        )

    def done(self, kind: str, error: float) -> str:
        """The log line of a factorized layer: rank, reconstruction error, parameters and MACs."""
        full = f" of {describe_rank(self.full)}" if self.full else ""
        even = f" (break-even {describe_rank(self.break_even)})" if self.break_even else ""
        return (
            f"{kind}: {self.name} rank {describe_rank(self.rank)}{full}{even}, relative error {error:.4f}, "
            f"params {self.original.params:,} -> {self.cost.params:,}, "
            f"MACs {self.original.macs:,} -> {self.cost.macs:,}"
        )


def plan_layer(
    method: Method, name: str, module: nn.Module, rule: RankRule, io: LayerIO, gram: torch.Tensor | None = None
) -> LayerPlan:
    """The rank ``rule`` gives ``module`` and its cost, with the break-even rank."""
    full = method.full_rank(module)
    original = layer_cost(module, io)

    def cost(rank: Rank) -> Cost:
        return method.cost(module, rank, io)

    rank = choose_rank(rule, full, lambda: method.spectra(module, gram), lambda r: cost(r).params, original.params)
    even = break_even(lambda r: not cost(r).below(original), full)
    return LayerPlan(name, rank, full if method.has_full_rank else None, cost(rank), original, even)


def replace_layer(model: nn.Module, name: str, new: nn.Module, ctx: StepContext, kind: str) -> nn.Module:
    """Put the factorized ``new`` at ``name`` (in the old layer's train/eval mode); pruning masks of
    the replaced weight no longer apply."""
    new.train(model.get_submodule(name).training)
    stale = [k for k in ctx.masks if k.rpartition(".")[0] == name]
    for key in stale:
        del ctx.masks[key]
    if stale:
        ctx.log.append(f"{kind}: {name} was pruned; its mask is dropped (the factors are dense)")
    return replace_module(model, name, new)


@dataclass(frozen=True)
class Factorize(LayerPatterns, Step):
    """What the factorization steps share: the rank rule, layer selection and the apply loop.

    Not registered itself; each subclass names its ``method`` (``layers.METHODS``).
    """

    rank: int | float | str = 0.25

    method: ClassVar[Method]

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_rank(self.rank, self.method.rules)

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        """The layers this step would factorize (before the break-even check)."""
        return factorizable_layers(model, self.method.layer_types, layers=self.layers, exclude=self.exclude)

    def grams(self, model: nn.Module, names: list[str], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Calibration statistics per layer, for activation-aware methods (none here)."""
        return {}

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        rule = parse_rank(self.rank, self.method.rules)
        kind, layer_type = self.kind, "/".join(t.__name__ for t in self.method.layer_types)
        note = skipped_note(
            kind, [(n, t) for n, t in skipped_layers(model, FACTORIZABLE) if not is_excluded(n, self.exclude)]
        )
        if note:
            ctx.log.append(note)
        targets = self.targets(model)
        runnable = runnable_layers(self.method, model, targets, ctx) if targets else {}
        if not runnable:
            why = "none selected" if not targets else "every one skipped (see the notes above)"
            raise NothingToDo(
                f"{kind}: no {layer_type} layer to factorize ({why}; {len(targets)} candidate(s) "
                f"after layers/exclude{'/keep_classifier' if hasattr(self, 'keep_classifier') else ''})"
            )
        grams = self.grams(model, list(runnable), ctx)
        before = after = 0
        done = 0
        for name, io in runnable.items():
            module = model.get_submodule(name)
            plan = plan_layer(self.method, name, module, rule, io, grams.get(name))
            before += plan.original.params
            if not plan.pays:
                ctx.log.append(plan.skipped(kind))
                after += plan.original.params
                continue
            new, error = self.method.build(module, plan.rank, gram=grams.get(name), seed=ctx.seed)
            model = replace_layer(model, name, new, ctx, kind)
            ctx.log.append(plan.done(kind, error))
            after, done = after + plan.cost.params, done + 1
        if not done:
            raise NothingToDo(
                f"{kind}: factorized none of {len(runnable)} {layer_type} layer(s): every rank chosen "
                f"by rank={self.rank!r} is at or above the break-even (a lower rank would pay)"
            )
        ctx.log.append(
            f"{kind}: factorized {done} of {len(runnable)} {layer_type} layers; "
            f"their weights {before:,} -> {after:,} params"
        )
        return model


@register_step("svd", family="lowrank")
@dataclass(frozen=True)
class SVDFactorize(KeepClassifier, CalibrationSettings, Factorize):
    """Factorize Linear layers by truncated SVD: ``Linear(in, r, bias=False)`` then ``Linear(r, out)``.

    Args:
        rank: an integer, a fraction of the full rank ``min(in, out)`` in (0, 1], ``"energy:F"``,
            ``"error:E"``, ``"params:P"`` or ``"vbmf"`` (see ``nncompress.lowrank.ranks``).
        layers: module names or regexes (full match) to factorize, with their children; empty: all.
        exclude: module names or regexes left as they are.
        keep_classifier: leave the last Linear as it is (small and sensitive).
        activation_aware: minimize the layer's output error on ``calibration_batches`` train
            batches instead of the weight error (the Gram matrix of the inputs weights the SVD, as
            in ASVD / SVD-LLM); energy, error and VBMF ranks then read the weighted spectrum.
        convs: also split 1x1 Conv2d layers (a matrix over channels) into two 1x1 convs, so
            convolutional nets whose only Linear is the classifier have layers to factorize;
            larger and grouped kernels are named in the notes (``tucker`` / ``spatial-svd`` take
            them). Off by default.
        calibration_batches: train batches read when ``activation_aware`` (>= 1).

    Example:
        >>> SVDFactorize(rank="energy:0.9", activation_aware=True)  # doctest: +ELLIPSIS
        SVDFactorize(rank='energy:0.9', activation_aware=True, ...)
    """

    rank: int | float | str = 0.25
    activation_aware: bool = False
    convs: bool = False

    method: ClassVar[Method] = LinearSVD()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_flag("activation_aware", self.activation_aware)
        check_flag("convs", self.convs)

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        kinds = (nn.Linear, nn.Conv2d) if self.convs else nn.Linear
        return factorizable_layers(
            model, kinds, layers=self.layers, exclude=self.exclude, keep_classifier=self.keep_classifier
        )

    def grams(self, model: nn.Module, names: list[str], ctx: StepContext) -> dict[str, torch.Tensor]:
        names = [n for n in names if isinstance(model.get_submodule(n), nn.Linear)]  # 1x1 convs: weight SVD
        if not self.activation_aware or not names:
            return {}
        from nncompress.base.data import first_batches

        batches = first_batches(ctx.task.train, self.calibration_batches, ctx.task.name, "activation-aware svd")
        return input_grams(model, names, [b[0] for b in batches])


@dataclass(frozen=True)
class ConvFactorize(KeepFirstConv, Factorize):
    """The Conv2d factorization steps' shared setting: keep the first convolution (``KeepFirstConv``)."""

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        return factorizable_layers(
            model,
            self.method.layer_types,
            layers=self.layers,
            exclude=self.exclude,
            keep_first_conv=self.keep_first_conv,
        )


@register_step("tucker", family="lowrank")
@dataclass(frozen=True)
class TuckerFactorize(ConvFactorize):
    """Factorize Conv2d and Conv1d layers by Tucker-2 (Kim et al. 2016) into 1x1, kh x kw and 1x1 convolutions.

    The layers: 1x1 conv C_in -> r_in, kh x kw conv r_in -> r_out (the layer's stride, padding,
    dilation, padding mode), 1x1 conv r_out -> C_out (the bias); a Conv1d becomes three Conv1d.

    Args:
        rank: per channel mode: ``"vbmf"`` (Kim et al.'s choice, on each mode's unfolding), an
            integer (clipped to each mode's channels), a fraction of the channels in (0, 1],
            ``"energy:F"`` / ``"error:E"`` (per mode), or ``"params:P"`` (both modes at the same
            fraction, the largest within P of the layer's parameters).
        layers, exclude: module names or regexes to factorize / leave (empty ``layers``: all).
        keep_first_conv: leave the first convolution as it is (few input channels: it rarely pays).

    Grouped convolutions are skipped (logged).

    Example:
        >>> TuckerFactorize(rank="vbmf", exclude=("stem.0",)).rank
        'vbmf'
    """

    rank: int | float | str = "vbmf"

    method: ClassVar[Method] = Tucker2()


@register_step("cp", family="lowrank")
@dataclass(frozen=True)
class CPFactorize(ConvFactorize):
    """Factorize Conv2d layers by CP (Lebedev et al. 2015) into 1x1, kh x 1, 1 x kw and 1x1 convolutions.

    The layers: 1x1 conv C_in -> R, depthwise kh x 1, depthwise 1 x kw (the layer's stride,
    padding, dilation per axis), 1x1 conv R -> C_out (the bias).

    Args:
        rank: an integer R, or ``"params:P"``: the largest R within a fraction P of the layer's
            parameters (CP has no full rank to take a fraction of).
        layers, exclude: module names or regexes to factorize / leave (empty ``layers``: all).
        keep_first_conv: leave the first Conv2d as it is.

    CP by ALS is approximate even at high ranks and can be unstable to fine-tune (Lebedev et al.
    fine-tune at a small learning rate); grouped convolutions are skipped (logged).

    Example:
        >>> CPFactorize(rank=16).rank
        16
    """

    rank: int | float | str = "params:0.25"

    method: ClassVar[Method] = CP()


@register_step("spatial-svd", family="lowrank")
@dataclass(frozen=True)
class SpatialSVDFactorize(ConvFactorize):
    """Split Conv2d layers into a kh x 1 and a 1 x kw convolution by spatial SVD (Jaderberg et al. 2014).

    The kh x 1 conv maps C_in to r channels, the 1 x kw conv r to C_out: the truncated SVD of
    the kernel as a (C_in*kh, C_out*kw) matrix.

    Args:
        rank: an integer, a fraction of the full rank ``min(C_in*kh, C_out*kw)`` in (0, 1],
            ``"energy:F"``, ``"error:E"``, ``"params:P"`` or ``"vbmf"``.
        layers, exclude: module names or regexes to factorize / leave (empty ``layers``: all).
        keep_first_conv: leave the first Conv2d as it is.

    Grouped convolutions are skipped (logged).

    Example:
        >>> SpatialSVDFactorize(rank="energy:0.95", layers=("stages.*",)).layers
        ('stages.*',)
    """

    rank: int | float | str = 0.25

    method: ClassVar[Method] = SpatialSVD()


FACTORIZE_STEPS: dict[str, type[Factorize]] = {
    cls.method.kind: cls for cls in (SVDFactorize, TuckerFactorize, CPFactorize, SpatialSVDFactorize)
}
