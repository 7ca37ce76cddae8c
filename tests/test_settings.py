"""Bad settings are refused when a step is built, before any model, data or baseline is touched.

The checks come from three places: the settings blocks (``base.settings``: TrainSettings, KDSettings,
LayerSelection, CalibrationSettings, ...), ``Step.check_settings`` (every field against its
annotation, and settings that contradict each other) and the step's own ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

import nncompress as nc
from nncompress.base.settings import (
    CalibrationSettings,
    KDSettings,
    LayerSelection,
    SettingsBlock,
    TrainSettings,
)
from nncompress.core.step import builtin_steps, setting_names, step_from_dict

STEPS = builtin_steps()

# issue 22, item 5: each was accepted, or failed only after the baseline was measured
BAD = [
    ("magnitude-prune", {"threshold": math.nan}, "threshold must be a finite number or None, got nan"),
    ("magnitude-prune", {"threshold": math.inf}, "threshold must be a finite number or None, got inf"),
    ("unstructured-prune", {"threshold": 0.1, "sparsity": 0.5}, "give threshold or sparsity, not both"),
    ("magnitude-prune", {"keep_first_conv": "no"}, "keep_first_conv must be True or False, got 'no'"),
    ("weight-quantize", {"symmetric": "yes"}, "symmetric must be True or False, got 'yes'"),
    ("gptq", {"symmetric": "yes"}, "symmetric must be True or False, got 'yes'"),
    ("finetune", {"max_steps": 1.5}, "max_steps must be an integer >= 1, got 1.5"),
    ("qat", {"max_steps": 1.5}, "max_steps must be an integer >= 1, got 1.5"),
    ("finetune", {"epochs": math.inf}, r"epochs must be a number > 0 and <= 1e\+06, got inf"),
    ("gradual-prune", {"epochs": 1e308}, r"epochs must be a number > 0 and <= 1e\+06, got 1e\+308"),
    ("finetune", {"lr": math.nan}, "lr must be a number > 0, got nan"),
    ("distill", {"weight_decay": -1}, "weight_decay must be a number >= 0, got -1"),
    ("lottery-ticket", {"weight_decay": -1}, "weight_decay must be a number >= 0, got -1"),
    # the generic annotation check: ints are not bools, bools are not ints, floats are finite
    ("nm-prune", {"calibration_batches": True}, "calibration_batches must be an integer >= 1, got True"),
    ("channel-prune", {"fold_norms": 1}, "fold_norms must be True or False, got 1"),
    ("hqq", {"beta": math.inf}, "beta must be a finite number, got inf"),
    ("qat", {"kd_alpha": math.nan}, r"kd_alpha must be in \[0, 1\]"),
    ("int8-static", {"exclude": [3]}, "exclude takes module names or regexes"),
]


@pytest.mark.parametrize(("kind", "settings", "match"), BAD, ids=[f"{k}-{'-'.join(s)}" for k, s, _ in BAD])
def test_bad_setting_is_refused_when_the_step_is_built(kind, settings, match):
    with pytest.raises(ValueError, match=match):
        STEPS[kind](**settings)
    with pytest.raises(ValueError, match=match):  # the recipe path gives the same one line
        step_from_dict({"kind": kind, **settings})


def test_bad_setting_fails_before_the_baseline_is_measured():
    def baseline_never_built():
        raise AssertionError("the baseline was built before the settings were checked")

    task = nc.Task(name="t", train=[], val=[], test=[], baseline=baseline_never_built)
    with pytest.raises(ValueError, match="max_steps must be an integer"):
        nc.compress(task.baseline, [nc.FineTune(max_steps=1.5)], task)


def test_threshold_alone_leaves_sparsity_unset_and_the_default_stays_half():
    assert nc.UnstructuredPrune().sparsity == 0.5
    step = nc.MagnitudePrune(threshold=0.01)
    assert (step.sparsity, step.threshold) == (None, 0.01)
    assert step_from_dict({"kind": "magnitude-prune", **step.settings()}) == step


def test_blocks_validate_themselves():
    with pytest.raises(ValueError, match="optimizer='adam' is not supported"):
        TrainSettings(optimizer="adam")
    with pytest.raises(ValueError, match="kd_temperature must be > 0"):
        KDSettings(kd_temperature=0)
    with pytest.raises(ValueError, match="keep_classifier must be True or False"):
        LayerSelection(keep_classifier="yes")
    with pytest.raises(ValueError, match="calibration_batches must be an integer >= 1, got 0"):
        CalibrationSettings(calibration_batches=0)
    assert TrainSettings(epochs=2).epochs == 2.0 and isinstance(TrainSettings(epochs=2).epochs, float)
    assert LayerSelection(exclude="fc").exclude == ("fc",)


def test_shared_settings_are_declared_once():
    """A setting used by several steps lives in one settings block, not in each step."""
    shared = {
        "exclude",
        "keep_first_conv",
        "keep_classifier",
        "calibration_batches",
        "epochs",
        "lr",
        "kd_alpha",
        "kd_temperature",
        "max_steps",
        "weight_decay",
        "layers",
    }
    for kind, cls in STEPS.items():
        for name in shared & {f.name for f in dataclasses.fields(cls)}:
            owner = next(b for b in reversed(cls.__mro__) if name in getattr(b, "__dataclass_fields__", {}))
            assert issubclass(owner, SettingsBlock) and owner.__module__ == "nncompress.base.settings", (kind, name)


def test_repr_and_settings_lead_with_the_step_own_settings():
    names = setting_names(nc.QuantizationAwareTraining)
    assert names[:3] == ["bits", "method", "act_bits"] and "exclude" in names[3:]
    assert repr(nc.QuantizationAwareTraining(bits=3)).startswith("QuantizationAwareTraining(bits=3, method='lsq'")
    assert list(nc.QuantizationAwareTraining().settings()) == names
