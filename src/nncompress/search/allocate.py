"""Allocation: per-layer settings that meet a budget with the best objective, from the
sensitivity curves.

Every layer gets one option: left as is, one technique at one strength, or low-rank factors
that are then quantized or pruned. An option's metric drop is the sum of the drops its
techniques caused alone (the usual first-order model), each the larger of the measured drop
(clipped at zero so noise never counts as a gain) and the drop predicted from its val-loss
increase (``point_drop``); its bytes and MACs are the measured changes of the single-technique points, combined
for factors that are then quantized or pruned in proportion to the bytes the factors keep.
Minimizing the summed objective (bytes, or MACs; latency follows MACs here) with the summed
drop within the allowance is a multiple-choice knapsack, solved exactly by
``quantize.mixed.allocate_bits`` with each option's drop as its "bits". Further limits
(bytes when the objective is MACs, MACs when it is size) enter the cost with Lagrange weights
raised until the estimate meets them. The estimates only propose candidates: every one is then
built and measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from nncompress.quantize.mixed import allocate_bits
from nncompress.search.sensitivity import Point, Sensitivity
from nncompress.search.space import Params

OBJECTIVES = ("size", "macs", "latency", "metric")
LAGRANGE_WEIGHTS = (0.0, 0.5, 2.0, 8.0, 32.0, 128.0)


def _check_limit(name: str, value: object, *, integer: bool) -> None:
    kinds = (int,) if integer else (int, float)
    if value is not None and (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or value < 0
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        what = "an integer >= 0" if integer else "a finite number >= 0"
        raise ValueError(f"{name} must be {what} or None, got {value!r}")


@dataclass(frozen=True)
class Budget:
    """Limits a chosen model must meet: the metric's drop from the baseline (in the metric's
    units, worse direction: 0.01 = one point of accuracy, or 0.5 perplexity), artifact bytes,
    MACs per sample, batch-1 latency. None: no limit."""

    max_drop: float | None = None
    max_bytes: int | None = None
    max_macs: int | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        _check_limit("max_drop", self.max_drop, integer=False)
        _check_limit("max_bytes", self.max_bytes, integer=True)
        _check_limit("max_macs", self.max_macs, integer=True)
        _check_limit("max_latency_ms", self.max_latency_ms, integer=False)
        if all(v is None for v in asdict(self).values()):
            raise ValueError("a budget needs at least one limit: max_drop, max_bytes, max_macs or max_latency_ms")

    def meets(self, *, drop: float, size_bytes: int, macs: int, latency_ms: float | None) -> bool:
        """Whether measured figures are within every limit (a latency limit needs a latency)."""
        checks = [
            self.max_drop is None or drop <= self.max_drop + 1e-12,
            self.max_bytes is None or size_bytes <= self.max_bytes,
            self.max_macs is None or macs <= self.max_macs,
            self.max_latency_ms is None or (latency_ms is not None and latency_ms <= self.max_latency_ms),
        ]
        return all(checks)

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def check_objective(objective: str, budget: Budget) -> None:
    """Raise ValueError for an unknown objective, or ``metric`` without a resource limit."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
    if objective == "metric" and budget.max_bytes is None and budget.max_macs is None and budget.max_latency_ms is None:
        raise ValueError("objective 'metric' needs a resource limit: max_bytes, max_macs or max_latency_ms")


def drop_of(value: float, baseline: float, higher_is_better: bool) -> float:
    """How much worse ``value`` is than ``baseline`` (negative: better)."""
    return baseline - value if higher_is_better else value - baseline


@dataclass(frozen=True)
class Option:
    """One way to treat one layer, with estimated changes against the uncompressed model."""

    settings: dict[str, float]
    drop: float
    bytes: float
    macs: float


def loss_slope(sens: Sensitivity) -> float:
    """Metric drop per unit of val-loss increase, fitted (least squares through 0) over the points
    where both rose; 0 when none did or losses were not recorded."""
    num = den = 0.0
    for curve in sens.curves:
        for p in curve.points:
            if p.loss is None or sens.baseline_loss is None:
                continue
            rise, drop = p.loss - sens.baseline_loss, drop_of(p.metric, sens.baseline_metric, sens.higher_is_better)
            if rise > 0 and drop > 0:
                num, den = num + drop * rise, den + rise * rise
    return num / den if den else 0.0


def point_drop(sens: Sensitivity, p: Point, slope: float) -> float:
    """A point's drop estimate: the measured drop or, when larger, the drop its loss increase
    predicts. The metric of a small val split moves in steps and is often unchanged by one
    layer; the loss is not, so strong settings whose metric happened not to move still cost
    something, and summing many of them no longer predicts zero."""
    measured = drop_of(p.metric, sens.baseline_metric, sens.higher_is_better)
    predicted = slope * (p.loss - sens.baseline_loss) if p.loss is not None and sens.baseline_loss is not None else 0.0
    return max(0.0, measured, predicted)


def layer_options(sens: Sensitivity, layer: str, weight_bytes: int) -> list[Option]:
    """Every option of ``layer`` the curves support: none, each technique point alone, and
    factors (each rank) then quantized or pruned (each level)."""
    slope = loss_slope(sens)

    def single(technique: str) -> list[Option]:
        curve = sens.curve(layer, technique)
        if curve is None:
            return []
        return [
            Option(
                {technique: p.strength},
                point_drop(sens, p, slope),
                float((p.size_bytes or sens.baseline_size_bytes) - sens.baseline_size_bytes),
                float((p.macs or sens.baseline_macs) - sens.baseline_macs),
            )
            for p in curve.points
        ]

    options = [Option({}, 0.0, 0.0, 0.0)]
    lowrank = single("lowrank")
    options += lowrank + single("prune") + single("quantize")
    for technique in ("quantize", "prune"):
        for lr in lowrank:
            kept = min(1.0, max(0.0, (weight_bytes + lr.bytes) / max(1, weight_bytes)))
            for other in single(technique):
                options.append(
                    Option(
                        {**lr.settings, **other.settings}, lr.drop + other.drop, lr.bytes + kept * other.bytes, lr.macs
                    )
                )
    return options


def _frontier(options: list[tuple[float, float, Option]]) -> dict[float, Option]:
    """``{drop: option}`` keeping, per layer, the options no other beats on both drop and cost."""
    best: dict[float, tuple[float, Option]] = {}
    for drop, cost, option in options:
        key = round(drop, 7)
        if key not in best or cost < best[key][0]:
            best[key] = (cost, option)
    out, least = {}, math.inf
    for drop in sorted(best):
        cost, option = best[drop]
        if cost < least:
            out[drop], least = option, cost
    return out


@dataclass(frozen=True)
class Estimate:
    """An allocation and its estimated totals."""

    params: Params
    drop: float
    size_bytes: float
    macs: float


def allocate(
    sens: Sensitivity,
    weight_bytes: Mapping[str, int],
    budget: Budget,
    objective: str,
    *,
    max_drop: float,
    resolution: int = 1000,
) -> Estimate:
    """Per-layer settings of least estimated objective with estimated drop <= ``max_drop``
    (and within ``budget``'s bytes and MACs limits where the estimate can meet them).

    Example:
        >>> allocate(sens, {"fc1": 4 * 784 * 300}, Budget(max_drop=0.01), "size", max_drop=0.01)  # doctest: +SKIP
    """
    check_objective(objective, budget)
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0:
        raise ValueError(f"max_drop must be a number >= 0, got {max_drop!r}")
    options = {layer: layer_options(sens, layer, weight_bytes[layer]) for layer in weight_bytes}
    primary = "bytes" if objective == "size" or (objective == "metric" and budget.max_bytes is not None) else "macs"
    scale = {"bytes": float(sens.baseline_size_bytes), "macs": float(max(1, sens.baseline_macs))}
    limits = {"bytes": budget.max_bytes, "macs": budget.max_macs}
    # objective "metric": candidates of least resource at each drop allowance; trials then pick
    # the best metric among those within the limits
    secondary = [r for r, limit in limits.items() if limit is not None and r != primary]
    estimate = None
    for weight in LAGRANGE_WEIGHTS if secondary else (0.0,):
        estimate = _solve(
            options, sens, primary, {r: weight / scale[r] for r in secondary}, scale, max_drop, resolution
        )
        totals = {"bytes": estimate.size_bytes, "macs": estimate.macs}
        if all(totals[r] <= limits[r] for r in secondary):  # type: ignore[operator]
            break
    assert estimate is not None
    return estimate


def _solve(
    options: dict[str, list[Option]],
    sens: Sensitivity,
    primary: str,
    weights: dict[str, float],
    scale: dict[str, float],
    max_drop: float,
    resolution: int,
) -> Estimate:
    """The knapsack for one set of Lagrange weights."""

    def cost(o: Option) -> float:
        amounts = {"bytes": o.bytes, "macs": o.macs}
        return amounts[primary] / scale[primary] + sum(w * amounts[r] for r, w in weights.items())

    fronts = {layer: _frontier([(o.drop, cost(o), o) for o in opts]) for layer, opts in options.items()}
    table = {layer: {drop: cost(o) for drop, o in front.items()} for layer, front in fronts.items()}
    n = len(table)
    chosen = allocate_bits(table, dict.fromkeys(table, 1), max_drop / n, resolution=resolution) if n else {}
    picked = {layer: fronts[layer][drop] for layer, drop in chosen.items()}
    params = {layer: dict(o.settings) for layer, o in picked.items() if o.settings}
    return Estimate(
        params=params,
        drop=sum(o.drop for o in picked.values()),
        size_bytes=sens.baseline_size_bytes + sum(o.bytes for o in picked.values()),
        macs=sens.baseline_macs + sum(o.macs for o in picked.values()),
    )
