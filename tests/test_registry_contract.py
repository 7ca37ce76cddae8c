"""Every registered step x every small model: runs, no NaN, and save -> load gives the same outputs.

A new step gets these checks by registering; give it example settings in EXAMPLES when its
defaults need data the synthetic task lacks.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SMALL_MODELS, init_model, make_task

import nncompress as nc
from nncompress.base.checks import NothingToDo
from nncompress.core.step import builtin_steps

STEPS = builtin_steps()  # registers the built-in steps (they load lazily)

EXAMPLES: dict[str, dict] = {
    "finetune": {"max_steps": 3},
    "distill": {"max_steps": 3},
    "qat": {"max_steps": 3},
    "binarize": {"max_steps": 3},
    "kmeans-quantize": {"max_steps": 3},
    "mixed-precision": {"calibration_batches": 1, "bits_options": (2, 4)},
    "gradual-prune": {"max_steps": 2},
    "iterative-prune": {"rounds": 2, "max_steps": 1},
    "lottery-ticket": {"rounds": 1, "max_steps": 1},
    "svd": {"activation_aware": True, "calibration_batches": 1},
    "lowrank-budget": {"val_batches": 1},
    "rtn": {"group_size": 16},
    "gptq": {"group_size": 16, "calibration_batches": 1},
    "awq": {"group_size": 16, "grid": 4, "calibration_batches": 1},
    "hqq": {"group_size": 16, "iters": 5},
    "w8a8": {"calibration_batches": 1},
    "smoothquant": {"calibration_batches": 1},
    "wanda": {"calibration_batches": 1},
    "sparsegpt": {"calibration_batches": 1},
    "scale-tune": {"max_steps": 2},
}


# (model, step) pairs where the step has nothing to change, which is an error (NothingToDo), not a
# silent success: no Conv2d for the conv factorizations, and on the ResNet only the kept classifier
# Linear for the Linear-only steps.
NOT_APPLICABLE = {
    *((name, "scale-tune") for name in SMALL_MODELS),  # tunes packed codes' step sizes: none in a float model
    ("mlp", "cp"),
    ("mlp", "spatial-svd"),
    ("mlp", "tucker"),
    ("vit", "cp"),
    ("vit", "spatial-svd"),
    ("vit", "tucker"),
    (
        "resnet",
        "svd",
    ),  # svd splits Linears (and 1x1 convs with convs=True); the one-shot LLM steps see convs as matrices
}


@pytest.mark.parametrize("kind", sorted(STEPS))
@pytest.mark.parametrize("model_name", list(SMALL_MODELS))
def test_step_runs_saves_and_loads(kind, model_name, tmp_path):
    task = make_task(SMALL_MODELS[model_name], n_train=128)
    model = init_model(model_name)
    step = STEPS[kind](**EXAMPLES.get(kind, {}))
    if (model_name, kind) in NOT_APPLICABLE:
        with pytest.raises(NothingToDo, match=kind):
            nc.compress(model, [step], task, measure_config=nc.MeasureConfig(latency=False))
        return
    result = nc.compress(model, [step], task, measure_config=nc.MeasureConfig(latency=False))
    x = task.single_example()
    with torch.inference_mode():
        out = result.model(x)
    assert torch.isfinite(out).all()
    assert math.isfinite(result.report.final.metric["value"])
    loaded = nc.load(nc.save(result.model, tmp_path / "m.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(STEPS))
def test_step_is_documented_and_round_trips_through_a_recipe(kind):
    cls = STEPS[kind]
    assert cls.__doc__ and "Example:" in cls.__doc__, f"{cls.__name__} needs a docstring with an example"
    step = cls(**EXAMPLES.get(kind, {}))
    again = nc.core.recipe.parse_recipe({"steps": [{"kind": kind, **step.settings()}]})[0]
    assert again == step
