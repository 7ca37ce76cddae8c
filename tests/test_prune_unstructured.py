"""Unstructured pruning: every criterion, exact sparsities, per-layer overrides, masks kept."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_task
from torch import nn

import nncompress as nc
from nncompress.core.step import StepContext, step_from_dict
from nncompress.prune import importance
from nncompress.prune.criteria import CRITERIA
from nncompress.prune.magnitude import MagnitudePrune, UnstructuredPrune, keep_top
from nncompress.tasks.batches import TensorBatches

FAST = nc.MeasureConfig(latency=False)


def zeros_of(*weights: torch.Tensor) -> int:
    return sum(int((w == 0).sum()) for w in weights)


def tiny_task() -> nc.Task:
    """One sample x = (3, 1), target 0, MSE loss: scores are computable by hand."""
    batches = TensorBatches(torch.tensor([[3.0, 1.0]]), torch.tensor([[0.0]]), batch_size=1)
    return nc.Task(
        "tiny", train=batches, val=batches, test=batches, baseline=lambda: None, metric="neg_mse", loss=F.mse_loss
    )


def tiny_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
    return model


@pytest.mark.parametrize(
    ("criterion", "kept"),
    [
        ("magnitude", [False, True]),  # |w| = (1, 2)
        ("l2", [False, True]),  # w^2 = (1, 4)
        ("wanda", [True, False]),  # |w| * ||x_j|| = (1*3, 2*1)
        ("taylor", [True, False]),  # y = 5, dL/dw = 2*5*x = (30, 10), |w g| = (30, 20)
    ],
)
def test_criteria_rank_weights_as_computed_by_hand(criterion, kept):
    model, ctx = tiny_model(), StepContext(task=tiny_task())
    UnstructuredPrune(sparsity=0.5, criterion=criterion, keep_classifier=False).apply(model, ctx)
    assert ctx.masks["0.weight"].tolist() == [kept]
    assert (model[0].weight != 0).tolist() == [kept]


def test_lamp_scores_as_computed_by_hand():
    # squares (1, 9, 4, 16): ascending 1, 4, 9, 16 with suffix sums 30, 29, 25, 16
    scores = importance.lamp(torch.tensor([[1.0, -3.0], [2.0, 4.0]]))
    expected = torch.tensor([[1 / 30, 9 / 25], [4 / 29, 1.0]])
    assert torch.allclose(scores, expected)


def test_global_lamp_keeps_every_layer_where_magnitude_empties_one():
    # layer "a" has weights 100x smaller than "b": a global magnitude cut at 50% removes all of a,
    # LAMP rescales each layer so a keeps its largest weights
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 17.0).view(4, 4) / 100)
        model[1].weight.copy_(torch.arange(1.0, 17.0).pow(2).view(4, 4))
    kept_in_a = {}
    for criterion in ("magnitude", "lamp"):
        m, ctx = copy.deepcopy(model), StepContext(task=tiny_task())
        UnstructuredPrune(sparsity=0.5, criterion=criterion, keep_classifier=False).apply(m, ctx)
        assert int(ctx.masks["0.weight"].sum() + ctx.masks["1.weight"].sum()) == 16
        kept_in_a[criterion] = ctx.masks["0.weight"]
    assert not kept_in_a["magnitude"].any()
    assert 0 < int(kept_in_a["lamp"].sum()) < 16
    assert kept_in_a["lamp"].flatten()[-1]  # the layer's largest weight scores 1: always kept


def test_threshold_applies_to_the_criterion_score():
    model, ctx = tiny_model(), StepContext(task=tiny_task())
    # wanda scores (3, 2): a threshold of 2.5 drops only the second weight
    UnstructuredPrune(threshold=2.5, sparsity=None, criterion="wanda", keep_classifier=False).apply(model, ctx)
    assert ctx.masks["0.weight"].tolist() == [[True, False]]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_hits_the_global_sparsity_exactly(task, criterion):
    model, ctx = task.baseline(), StepContext(task=task)
    UnstructuredPrune(sparsity=0.7, criterion=criterion, calibration_batches=2).apply(model, ctx)
    n = model.fc1.weight.numel() + model.fc2.weight.numel()
    assert zeros_of(model.fc1.weight, model.fc2.weight) == round(0.7 * n)
    assert set(ctx.masks) == {"fc1.weight", "fc2.weight"}
    assert torch.equal(ctx.masks["fc1.weight"], model.fc1.weight != 0)
    assert zeros_of(model.fc3.weight) == 0  # the classifier stays dense


def test_layer_scope_and_overrides_prune_each_layer_exactly(task):
    model = task.baseline()
    UnstructuredPrune(sparsity=0.6, scope="layer").apply(model, StepContext(task=task))
    for w in (model.fc1.weight, model.fc2.weight):
        assert zeros_of(w) == round(0.6 * w.numel())
    model = task.baseline()
    step = UnstructuredPrune(sparsity=0.5, layer_sparsity=(("fc2", 0.9),))
    step.apply(model, StepContext(task=task))
    assert zeros_of(model.fc2.weight) == round(0.9 * model.fc2.weight.numel())
    assert zeros_of(model.fc1.weight) == round(0.5 * model.fc1.weight.numel())  # global over rest
    model = task.baseline()
    UnstructuredPrune(sparsity=0.5, layer_sparsity=(("fc[12]", 0.3),)).apply(model, StepContext(task=task))
    for w in (model.fc1.weight, model.fc2.weight):
        assert zeros_of(w) == round(0.3 * w.numel())


def test_earlier_masks_are_kept_and_counted(task):
    model, ctx = task.baseline(), StepContext(task=task)
    earlier = torch.rand(model.fc1.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    ctx.masks["fc1.weight"] = earlier
    with torch.no_grad():
        model.fc1.weight.mul_(earlier)
    UnstructuredPrune(sparsity=0.8, scope="layer", criterion="random").apply(model, ctx)
    mask = ctx.masks["fc1.weight"]
    assert not (mask & ~earlier).any()  # nothing pruned before comes back
    assert int((~mask).sum()) == round(0.8 * mask.numel())


def test_wanda_masks_survive_finetuning(task):
    recipe = [UnstructuredPrune(sparsity=0.8, criterion="wanda"), nc.FineTune(max_steps=4)]
    result = nc.compress(task.baseline(), recipe, task, measure_config=FAST)
    pruned, tuned = result.report.steps
    assert tuned.nonzero_params == pruned.nonzero_params
    n = result.model.fc1.weight.numel() + result.model.fc2.weight.numel()
    assert zeros_of(result.model.fc1.weight, result.model.fc2.weight) == round(0.8 * n)


def test_keep_top_drops_exactly_k_lowest_over_all_tensors():
    keep = keep_top({"a": torch.tensor([0.1, 5.0]), "b": torch.tensor([[0.2, 0.0], [3.0, 4.0]])}, 0.5)
    assert keep["a"].tolist() == [False, True]
    assert keep["b"].tolist() == [[False, False], [True, True]]


def test_recipe_lists_become_tuples_and_round_trip():
    step = step_from_dict({"kind": "unstructured-prune", "layer_sparsity": [["fc1", 0.5]], "exclude": ["fc2"]})
    assert step == UnstructuredPrune(layer_sparsity=(("fc1", 0.5),), exclude=("fc2",))
    assert UnstructuredPrune(layer_sparsity={"fc1": 0.5}) == step.__class__(layer_sparsity=(("fc1", 0.5),))


def test_bad_settings_are_rejected(task):
    with pytest.raises(ValueError, match="criterion.*'fisher'"):
        UnstructuredPrune(criterion="fisher")
    with pytest.raises(ValueError, match=r"layer_sparsity\['fc1'\] must be in \[0, 1\), got 1.5"):
        UnstructuredPrune(layer_sparsity=(("fc1", 1.5),))
    with pytest.raises(ValueError, match="not a valid regex"):
        UnstructuredPrune(layer_sparsity=(("fc[", 0.5),))
    with pytest.raises(ValueError, match="pairs"):
        UnstructuredPrune(layer_sparsity=("fc1",))
    with pytest.raises(ValueError, match="calibration_batches"):
        UnstructuredPrune(calibration_batches=0)
    with pytest.raises(ValueError, match="UnstructuredPrune"):
        MagnitudePrune(criterion="wanda")
    with pytest.raises(ValueError, match="'conv9' matches no pruned layer.*fc1"):
        UnstructuredPrune(layer_sparsity=(("conv9", 0.5),)).apply(task.baseline(), StepContext(task=task))


def test_magnitude_prune_is_unchanged_for_old_recipes():
    task = make_task()
    step = step_from_dict({"kind": "magnitude-prune", "sparsity": 0.9, "scope": "global"})
    assert step == MagnitudePrune(sparsity=0.9) and step.kind == "magnitude-prune"
    model = task.baseline()
    step.apply(model, StepContext(task=task))
    n = model.fc1.weight.numel() + model.fc2.weight.numel()
    assert zeros_of(model.fc1.weight, model.fc2.weight) == round(0.9 * n)
