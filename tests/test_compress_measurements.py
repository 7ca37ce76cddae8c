"""compress() measures each state once: the baseline (reused for the same weights and task), every
step but the last, and the final model, whose figures the last step's record shares."""

from __future__ import annotations

import copy

import pytest
import torch

import nncompress as nc
from nncompress.core import compress as compress_module
from nncompress.measure import report as report_module

FAST = nc.MeasureConfig(latency=False)


@pytest.fixture
def counted(monkeypatch):
    """Counts of test-split evaluations and trial saves, wherever compress() and measure() make them."""
    calls = {"evaluate": 0, "save": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    for module in (compress_module, report_module):
        monkeypatch.setattr(module, "evaluate", counting("evaluate", module.evaluate))
        monkeypatch.setattr(module, "artifact_bytes", counting("save", module.artifact_bytes))
    monkeypatch.setattr(compress_module, "_BASELINES", type(compress_module._BASELINES)())
    return calls


def test_each_state_is_evaluated_and_saved_once_and_the_baseline_is_reused(task, counted):
    recipe = [nc.MagnitudePrune(sparsity=0.5), nc.MagnitudePrune(sparsity=0.8)]
    model = task.baseline()  # compress() works on a copy: the same weights every call
    first = nc.compress(model, recipe, task, measure_config=FAST)
    assert counted == {"evaluate": 3, "save": 3}  # baseline, step 1, final (= step 2)
    last, final = first.report.steps[-1], first.report.final
    assert (last.metric, last.params, last.nonzero_params, last.size_bytes) == (
        final.metric["value"],
        final.params,
        final.nonzero_params,
        final.size_bytes,
    )
    assert first.report.steps[0].nonzero_params > last.nonzero_params  # step 1 measured on its own state

    second = nc.compress(model, recipe[:1], task, measure_config=FAST)
    assert counted == {"evaluate": 4, "save": 4}  # the same weights on the same task: baseline reused
    assert second.report.baseline.to_dict() == first.report.baseline.to_dict()
    second.report.baseline.size_bytes = -1  # a caller amending its copy does not reach the cache
    third = nc.compress(model, recipe[:1], task, measure_config=FAST)
    assert third.report.baseline.size_bytes == first.report.baseline.size_bytes


def test_other_weights_are_measured_again(task, counted):
    model = task.baseline()
    nc.compress(model, [nc.MagnitudePrune(sparsity=0.5)], task, measure_config=FAST)
    with torch.no_grad():
        model.fc1.weight[0, 0] += 1.0  # one weight changed: another model
    result = nc.compress(model, [nc.MagnitudePrune(sparsity=0.5)], task, measure_config=FAST)
    assert counted["evaluate"] == 4
    assert result.report.baseline.metric["value"] == pytest.approx(
        nc.measure(model, task, config=FAST).metric["value"], abs=0
    )


def test_fingerprint_follows_weights_buffers_and_structure(task):
    model = task.baseline()
    same = copy.deepcopy(model)
    fingerprint = compress_module.model_fingerprint(model)
    assert fingerprint is not None and fingerprint == compress_module.model_fingerprint(same)
    with torch.no_grad():
        same.fc2.bias[3] = same.fc2.bias[3] + 1e-6
    assert compress_module.model_fingerprint(same) != fingerprint
    other = copy.deepcopy(model)
    other.fc3 = torch.nn.Sequential(other.fc3)  # same tensors, another module tree
    assert compress_module.model_fingerprint(other) != fingerprint
