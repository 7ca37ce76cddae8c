"""Search building blocks: budget checks, allocation, Pareto front, trial log, candidate building."""

from __future__ import annotations

import json
import random
import sys

import pytest
import torch
from conftest import make_task
from torch import nn

from nncompress.measure.flops import count_macs
from nncompress.models import ResNet
from nncompress.quantize.layers import QuantizedConv2d
from nncompress.search import Budget, SearchSpace, Trial, allocate, choose, mutate, pareto_front, search_layers
from nncompress.search.allocate import check_objective
from nncompress.search.sensitivity import Curve, Point, Sensitivity
from nncompress.search.space import build, check_params, params_key
from nncompress.search.trials import append_trial, read_trials, repair_log
from nncompress.search.workers import Evaluator, Setup, import_ray, saved_bytes

SPACE = SearchSpace(sparsities=(0.5, 0.9), bits=(8, 4), ranks=(0.5,), method="minmax")


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return ResNet(widths=(4, 8, 8), num_classes=4).eval()


def test_budget_and_objective_errors():
    with pytest.raises(ValueError, match="at least one limit"):
        Budget()
    with pytest.raises(ValueError, match="max_drop must be a finite number >= 0"):
        Budget(max_drop=-0.1)
    with pytest.raises(ValueError, match="max_bytes must be an integer"):
        Budget(max_bytes=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="objective must be one of size, macs, latency, metric; got 'speed'"):
        check_objective("speed", Budget(max_drop=0.01))
    with pytest.raises(ValueError, match="objective 'metric' needs a resource limit"):
        check_objective("metric", Budget(max_drop=0.01))
    assert Budget(max_drop=0.01).meets(drop=0.01, size_bytes=10, macs=1, latency_ms=None)
    assert not Budget(max_drop=0.01, max_bytes=9).meets(drop=0.0, size_bytes=10, macs=1, latency_ms=None)
    assert not Budget(max_latency_ms=1.0).meets(drop=0.0, size_bytes=10, macs=1, latency_ms=None)


def _sensitivity(higher_is_better: bool = True) -> Sensitivity:
    """Two layers: ``a`` (4,000 bytes of weights) tolerates 4 bits, ``b`` (same size) loses
    0.02 at 4 bits and 0.004 at 8 bits. Bytes saved are 1,000 per 8-bit layer and 1,500 at 4 bits."""
    sign = 1 if higher_is_better else -1
    base = 0.9 if higher_is_better else 10.0

    def pts(drops: dict[int, float]) -> list[Point]:
        saved = {8: 1000, 4: 1500}
        return [Point(b, base - sign * d, 10_000 - saved[b], 500) for b, d in drops.items()]

    return Sensitivity(
        "t",
        "accuracy" if higher_is_better else "perplexity",
        higher_is_better,
        base,
        10_000,
        500,
        [Curve("a", "quantize", pts({8: 0.0, 4: 0.001})), Curve("b", "quantize", pts({8: 0.004, 4: 0.02}))],
    )


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_allocate_meets_the_drop_with_least_bytes(higher_is_better):
    sens = _sensitivity(higher_is_better)
    weights = {"a": 4000, "b": 4000}
    # 0.005 allows a@4 (0.001) + b@8 (0.004) = 0.005, saving 2,500 bytes; b@4 is out of reach
    est = allocate(sens, weights, Budget(max_drop=0.005), "size", max_drop=0.005)
    assert est.params == {"a": {"quantize": 4}, "b": {"quantize": 8}}
    assert est.drop == pytest.approx(0.005) and est.size_bytes == 7_500
    est = allocate(sens, weights, Budget(max_drop=0.003), "size", max_drop=0.003)
    assert est.params == {"a": {"quantize": 4}}
    est = allocate(sens, weights, Budget(max_drop=0.0), "size", max_drop=0.0)
    assert est.params == {"a": {"quantize": 8}}  # the only option that costs nothing
    est = allocate(sens, weights, Budget(max_drop=1.0), "size", max_drop=1.0)
    assert est.params == {"a": {"quantize": 4}, "b": {"quantize": 4}}


def _trial(i: int, metric: float, size: int, meets: bool = True, macs: int = 100) -> Trial:
    return Trial(i, "refine", {}, metric, size, macs, None, meets, 0.1)


def test_pareto_front_and_choice_follow_the_metric_direction():
    trials = [_trial(0, 0.90, 100), _trial(1, 0.92, 200), _trial(2, 0.89, 150), _trial(3, 0.80, 50, meets=False)]
    assert pareto_front(trials, resource="size", higher_is_better=True) == [3, 0, 1]  # 2 is dominated by 0
    assert choose(trials, "size", True).trial == 0  # smallest that meets the budget
    assert choose(trials, "metric", True).trial == 1
    # perplexity: lower is better, so trial 3 (0.80) is the best metric and 1 the worst
    assert pareto_front(trials, resource="size", higher_is_better=False) == [3]
    assert choose(trials, "metric", False).trial == 2
    assert choose([_trial(0, 0.9, 1, meets=False)], "size", True) is None
    with pytest.raises(ValueError, match="resource must be one of"):
        pareto_front(trials, resource="bytes", higher_is_better=True)


def test_trial_log_drops_a_line_cut_short_by_a_kill(tmp_path):
    path = tmp_path / "trials.jsonl"
    trials = [
        Trial(i, "greedy", {"fc1": {"quantize": 4}}, 0.9 - i / 100, 1000 - i, 7, None, True, 0.5) for i in range(3)
    ]
    for t in trials:
        append_trial(path, t)
    with open(path, "a") as f:
        f.write('{"trial": 3, "stage": "ref')  # the process died mid-write
    assert read_trials(path) == trials
    assert repair_log(path) == trials
    assert path.read_text().endswith("}\n") and len(path.read_text().splitlines()) == 3
    assert json.loads(path.read_text().splitlines()[1])["params"] == {"fc1": {"quantize": 4}}


def test_build_applies_lowrank_then_prune_then_quantize_and_sizes_are_real():
    task = make_task(tiny_resnet)
    model = task.baseline()
    layers = search_layers(model)
    assert "stem.0" not in layers and "fc" not in layers  # kept float, as every technique does by default
    assert layers["stages.1.0.conv2"] == "tucker" and layers["stages.1.0.shortcut.0"] == "tucker"  # 1x1: an SVD split
    params = {"stages.1.0.conv2": {"lowrank": 0.5, "prune": 0.5, "quantize": 4}, "stages.2.0.conv1": {"prune": 0.9}}
    built, recipe = build(model, params, task, layers, SPACE)
    assert [s.kind for s in recipe] == ["tucker", "magnitude-prune", "weight-quantize"]
    factors = built.get_submodule("stages.1.0.conv2")
    assert isinstance(factors, nn.Sequential) and all(isinstance(m, QuantizedConv2d) for m in factors)
    pruned = built.get_submodule("stages.2.0.conv1").weight
    assert (pruned == 0).float().mean().item() == pytest.approx(0.9, abs=1 / pruned.numel())
    assert isinstance(built.get_submodule("stages.0.0.conv1"), nn.Conv2d)  # untouched
    ev = Evaluator(Setup(task, SPACE, model=model))
    m = ev(params)
    assert m.macs == count_macs(built, task.single_example()) < count_macs(model, task.single_example())
    assert m.size_bytes == saved_bytes(built, ev_metadata(ev, recipe))
    assert ev({}).macs == count_macs(model, task.single_example())


def ev_metadata(ev: Evaluator, recipe) -> dict:
    from nncompress.core.recipe import describe_recipe
    from nncompress.search.workers import run_metadata

    return run_metadata(ev.task.name, describe_recipe(recipe), 0)


def test_bad_params_are_named():
    layers = search_layers(tiny_resnet())
    with pytest.raises(ValueError, match="layer 'nope' is not searchable"):
        check_params({"nope": {"prune": 0.5}}, layers)
    with pytest.raises(ValueError, match="technique 'distill'"):
        check_params({"stages.1.0.conv2": {"distill": 1}}, layers)
    with pytest.raises(ValueError, match=r"quantize bits of 'stages.1.0.conv2' must be an integer in \[2, 8\]"):
        check_params({"stages.1.0.conv2": {"quantize": 1}}, layers)
    with pytest.raises(ValueError, match="sparsities entries must be in"):
        SearchSpace(sparsities=(0.0,))


def test_mutation_is_seeded_and_stays_on_the_grid():
    layers = search_layers(tiny_resnet())
    start = {"stages.1.0.conv2": {"quantize": 4}}
    a = [params_key(mutate(start, layers, SPACE, random.Random(7))) for _ in range(1)]
    b = [params_key(mutate(start, layers, SPACE, random.Random(7))) for _ in range(1)]
    assert a == b
    rng = random.Random(0)
    for _ in range(200):
        p = mutate(start, layers, SPACE, rng)
        check_params(p, layers)
        for entry in p.values():
            assert entry.get("quantize", 8) in SPACE.bits and entry.get("prune", 0.5) in SPACE.sparsities


def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ValueError, match=r"nncompress\[ray\]"):
        import_ray()
