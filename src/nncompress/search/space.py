"""The search space: which layers a search may compress, with which techniques, and how a
candidate (per-layer settings) becomes a recipe of registered steps.

A candidate's ``params`` map a layer to the techniques applied to it and their strength:
``{"stages.2.0.conv2": {"lowrank": 0.5, "quantize": 4}}``. Techniques run in a fixed order,
low-rank factorization, then unstructured magnitude pruning, then weight-only quantization, so a
factorized layer's factors are what gets pruned and packed. Strengths: ``prune`` a sparsity in
(0, 1), ``quantize`` bits in [2, 8], ``lowrank`` the fraction of the layer's parameters the
factors keep (rank rule ``params:F``).

Example:
    >>> space = SearchSpace(sparsities=(0.5, 0.8), bits=(8, 4))
    >>> space.levels("quantize")
    (8, 4)
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from nncompress.base.checks import check_bits
from nncompress.base.modules import weight_layers
from nncompress.core.step import Step, StepContext, builtin_steps
from nncompress.lowrank.layers import METHODS
from nncompress.prune.magnitude import MagnitudePrune, check_fraction
from nncompress.quantize.ptq import WeightQuantize
from nncompress.tasks.task import Task

TECHNIQUES = ("lowrank", "prune", "quantize")  # also the order in which they are applied
Params = dict[str, dict[str, float]]


@dataclass(frozen=True)
class SearchSpace:
    """Per-layer options a search may pick, and the fixed settings of each technique.

    Args:
        techniques: any of ``"prune"``, ``"quantize"``, ``"lowrank"``.
        sparsities: unstructured magnitude-pruning levels, each in (0, 1).
        bits: weight-only quantization widths, each in [2, 8].
        ranks: low-rank levels, fractions in (0, 1) of a layer's parameters kept by its factors.
        granularity, method: quantization scales per ``"channel"`` or ``"tensor"``, ranges by
            ``"mse"`` or ``"minmax"`` (as in ``weight-quantize``).
        finetune_steps: optimizer steps of fine-tuning after compressing each candidate (0: none).
    """

    techniques: tuple[str, ...] = TECHNIQUES
    sparsities: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9)
    bits: tuple[int, ...] = (8, 6, 5, 4, 3, 2)
    ranks: tuple[float, ...] = (0.75, 0.5, 0.3, 0.15)
    granularity: str = "channel"
    method: str = "mse"
    finetune_steps: int = 0

    def __post_init__(self) -> None:
        unknown = [t for t in self.techniques if t not in TECHNIQUES]
        if not self.techniques or unknown:
            raise ValueError(f"techniques must name some of {', '.join(TECHNIQUES)}; got {self.techniques!r}")
        object.__setattr__(self, "techniques", tuple(t for t in TECHNIQUES if t in self.techniques))
        for s in self.sparsities:
            check_fraction("sparsities entry", s)
            if s == 0:
                raise ValueError("sparsities entries must be in (0, 1); 0 is the layer left dense")
        for b in self.bits:
            check_bits("bits entry", b)
        for r in self.ranks:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
                raise ValueError(f"ranks entries must be fractions in (0, 1) of a layer's parameters, got {r!r}")
        object.__setattr__(self, "sparsities", tuple(sorted({float(s) for s in self.sparsities})))
        object.__setattr__(self, "bits", tuple(sorted(set(self.bits), reverse=True)))
        object.__setattr__(self, "ranks", tuple(sorted({float(r) for r in self.ranks}, reverse=True)))
        WeightQuantize(granularity=self.granularity, method=self.method)  # validates both
        if self.granularity == "group":
            raise ValueError("granularity must be 'channel' or 'tensor' (group sizes differ between layers)")
        if isinstance(self.finetune_steps, bool) or not isinstance(self.finetune_steps, int) or self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be an integer >= 0, got {self.finetune_steps!r}")

    def levels(self, technique: str) -> tuple[float, ...]:
        """The strengths of ``technique``, from mildest to strongest."""
        return {"prune": self.sparsities, "quantize": self.bits, "lowrank": self.ranks}[technique]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lowrank_method(module: nn.Module) -> str | None:
    """The factorization used for ``module``: ``svd`` (Linear), ``tucker`` (k x k conv),
    ``spatial-svd`` (1 x 1 conv), or None when none applies (grouped convs)."""
    for kind in ("svd", "tucker", "spatial-svd"):
        method = METHODS[kind]
        if type(module) is method.layer_type and method.skip_reason(module) is None:
            return kind
    return None


def search_layers(model: nn.Module) -> dict[str, str | None]:
    """``{layer: low-rank method or None}`` of the Linear/Conv2d layers a search may compress:
    all but the first conv and the classifier, which every technique keeps by default (small
    and sensitive)."""
    layers = weight_layers(model)
    convs = [n for n, m in layers if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    kept = set(convs[:1]) | set(linears[-1:])
    return {n: lowrank_method(m) for n, m in layers if n not in kept}


def canonical(params: Mapping[str, Mapping[str, float]]) -> Params:
    """``params`` with empty layers dropped, layers sorted, techniques in application order,
    bits as ints: equal candidates compare (and serialize) equal."""
    out: Params = {}
    for layer in sorted(params):
        entry = {t: params[layer][t] for t in TECHNIQUES if t in params[layer]}
        if "quantize" in entry:
            entry["quantize"] = int(entry["quantize"])
        if entry:
            out[layer] = entry
    return out


def params_key(params: Mapping[str, Mapping[str, float]]) -> str:
    """A stable string of a candidate (for de-duplication and resume checks)."""
    return json.dumps(canonical(params), sort_keys=True)


def check_params(params: Mapping[str, Mapping[str, float]], layers: Mapping[str, str | None]) -> None:
    """Raise ValueError for an unknown layer or technique, or a strength out of range."""
    for layer, entry in params.items():
        if layer not in layers:
            raise ValueError(f"layer {layer!r} is not searchable; layers: {', '.join(layers)}")
        for technique, strength in entry.items():
            if technique not in TECHNIQUES:
                raise ValueError(f"technique {technique!r} of layer {layer!r}; accepted: {', '.join(TECHNIQUES)}")
            if technique == "lowrank" and layers[layer] is None:
                raise ValueError(f"layer {layer!r} cannot be factorized (no low-rank method applies)")
            if technique == "quantize":
                check_bits(f"quantize bits of {layer!r}", strength)
            elif not 0 < strength < 1:
                raise ValueError(f"{technique} strength of {layer!r} must be in (0, 1), got {strength!r}")


def _pattern(layer: str) -> str:
    """A regex for the layer or, once factorized, its factor layers (``layer.0``, ``layer.1``...)."""
    return rf"{re.escape(layer)}(?:\.\d+)?"


def recipe_for(
    params: Mapping[str, Mapping[str, float]], layers: Mapping[str, str | None], space: SearchSpace
) -> list[Step]:
    """The registered steps that apply ``params``: one factorization step per (method, rank),
    one ``magnitude-prune`` with per-layer sparsities, one ``weight-quantize`` with per-layer bits
    (every other layer float), then ``finetune`` when ``space.finetune_steps`` > 0."""
    params = canonical(params)
    check_params(params, layers)
    steps: list[Step] = []
    registry = builtin_steps()
    groups: dict[tuple[str, float], list[str]] = {}
    for layer, entry in params.items():
        if "lowrank" in entry:
            groups.setdefault((layers[layer], float(entry["lowrank"])), []).append(layer)  # type: ignore[arg-type]
    for (kind, fraction), names in sorted(groups.items()):
        steps.append(registry[kind](rank=f"params:{fraction:g}", layers=tuple(re.escape(n) for n in names)))
    sparsity = tuple((_pattern(n), float(e["prune"])) for n, e in params.items() if "prune" in e)
    if sparsity:
        steps.append(MagnitudePrune(sparsity=0.0, scope="layer", layer_sparsity=sparsity))
    bits = tuple((_pattern(n), int(e["quantize"])) for n, e in params.items() if "quantize" in e)
    if bits:
        steps.append(
            WeightQuantize(bits=8, granularity=space.granularity, method=space.method, layer_bits=(*bits, (".*", 32)))
        )
    if space.finetune_steps:
        from nncompress.train.finetune import FineTune

        steps.append(FineTune(epochs=1.0, max_steps=space.finetune_steps))
    return steps


def build(
    model: nn.Module,
    params: Mapping[str, Mapping[str, float]],
    task: Task,
    layers: Mapping[str, str | None],
    space: SearchSpace,
    *,
    seed: int = 0,
) -> tuple[nn.Module, list[Step]]:
    """A compressed copy of ``model`` with ``params`` applied, and the recipe that did it."""
    recipe = recipe_for(params, layers, space)
    work = copy.deepcopy(model)
    ctx = StepContext(task=task, teacher=model, seed=seed)
    for step in recipe:
        torch.manual_seed(seed)  # as compress() does, so that it rebuilds the same model
        work = step.apply(work, ctx)
    return work.eval(), recipe
