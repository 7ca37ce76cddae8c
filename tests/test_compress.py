"""compress(): the driver, magnitude pruning and fine-tuning with masks held fixed."""

from __future__ import annotations

import pytest
import torch
from conftest import make_task

import nncompress as nc
from nncompress.core.recipe import load_recipe, parse_recipe
from nncompress.core.step import step_from_dict

FAST = nc.MeasureConfig(latency=False)


def test_global_magnitude_prune_hits_the_sparsity(task):
    model = task.baseline()
    result = nc.compress(model, [nc.MagnitudePrune(sparsity=0.8)], task, measure_config=FAST)
    pruned = result.model
    targets = [pruned.fc1.weight, pruned.fc2.weight]  # fc3, the classifier, stays dense
    zeros = sum(int((w == 0).sum()) for w in targets)
    total = sum(w.numel() for w in targets)
    assert zeros / total == pytest.approx(0.8, abs=1e-3)
    assert int((pruned.fc3.weight == 0).sum()) == 0
    # the original model is untouched
    assert int((model.fc1.weight == 0).sum()) == 0
    rep = result.report
    assert rep.final.nonzero_params < rep.baseline.nonzero_params
    assert rep.final.size_bytes < rep.baseline.size_bytes / 2


def test_layerwise_and_threshold_modes(task):
    model = task.baseline()
    out = nc.compress(model, [nc.MagnitudePrune(sparsity=0.5, scope="layer")], task, measure_config=FAST).model
    for w in (out.fc1.weight, out.fc2.weight):
        assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    out = nc.compress(model, [nc.MagnitudePrune(threshold=0.01, sparsity=None)], task, measure_config=FAST).model
    assert out.fc1.weight.abs()[out.fc1.weight != 0].min() > 0.01


def test_finetune_keeps_pruned_weights_zero_and_recovers(task):
    model = task.baseline()
    torch.manual_seed(0)
    from nncompress.train import TrainConfig, fit

    fit(model, task.train, TrainConfig(epochs=3, lr=3e-3))
    recipe = [nc.MagnitudePrune(sparsity=0.97), nc.FineTune(epochs=2, lr=1e-3)]
    result = nc.compress(model, recipe, task, measure_config=FAST)
    pruned_only, tuned = result.report.steps
    w = result.model.fc1.weight
    assert (w == 0).float().mean().item() >= 0.97 * 0.99
    assert tuned.nonzero_params == pruned_only.nonzero_params
    assert tuned.metric >= pruned_only.metric
    assert result.report.final.metric["value"] > 0.9


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="sparsity"):
        nc.MagnitudePrune(sparsity=1.5)
    with pytest.raises(ValueError, match="scope"):
        nc.MagnitudePrune(scope="row")
    with pytest.raises(ValueError, match="epochs"):
        nc.FineTune(epochs=0)
    with pytest.raises(ValueError, match="exclude entry .* names no module"):
        nc.compress(
            make_task().baseline(),
            [nc.MagnitudePrune(exclude=("fc9",))],
            make_task(),
            measure_config=FAST,
        )


def test_empty_recipe_and_non_steps_are_rejected(task):
    with pytest.raises(ValueError, match="empty"):
        nc.compress(task.baseline(), [], task)
    with pytest.raises(TypeError, match="Step"):
        nc.compress(task.baseline(), ["prune"], task)


def test_recipe_parsing_errors_name_the_problem(tmp_path):
    assert [s.kind for s in load_recipe("prune-finetune")] == ["magnitude-prune", "finetune"]
    with pytest.raises(ValueError, match="unknown step kind 'magic'.*finetune"):
        step_from_dict({"kind": "magic"})
    with pytest.raises(ValueError, match="no setting.*spars.*accepted"):
        step_from_dict({"kind": "magnitude-prune", "spars": 0.5})
    with pytest.raises(ValueError, match="non-empty list 'steps'"):
        parse_recipe({})
    bad = tmp_path / "bad.toml"
    bad.write_text("[[steps]\nkind=")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(FileNotFoundError, match="no recipe file"):
        load_recipe(tmp_path / "none.toml")


def test_model_that_cannot_run_is_reported(task):
    from torch import nn

    from nncompress.measure.metric import ModelCallError

    with pytest.raises(ModelCallError, match="forward failed"):
        nc.compress(nn.Linear(5, 2), [nc.MagnitudePrune()], task)


def test_zero_max_steps_is_rejected():
    with pytest.raises(ValueError, match="max_steps"):
        nc.FineTune(max_steps=0)
