"""Pruning schedules: the cubic ramp's values, exact final sparsity, pruned weights kept at zero."""

from __future__ import annotations

import re

import pytest
import torch

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.measure.metric import evaluate
from nncompress.prune.schedule import (
    GradualPrune,
    IterativePrune,
    cubic_sparsity,
    prune_points,
    round_sparsities,
)

FAST = nc.MeasureConfig(latency=False)


def targeted(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    return model.fc1.weight, model.fc2.weight


@pytest.mark.parametrize(
    ("step", "initial", "expected"),
    [
        (-10, 0.0, 0.0),
        (0, 0.0, 0.0),
        (25, 0.0, 0.4625),  # 0.8 - 0.8 * 0.75^3
        (50, 0.0, 0.7),  # 0.8 - 0.8 * 0.5^3
        (50, 0.2, 0.725),  # 0.8 - 0.6 * 0.5^3
        (100, 0.0, 0.8),
        (150, 0.0, 0.8),
    ],
)
def test_cubic_ramp_matches_hand_computed_values(step, initial, expected):
    got = cubic_sparsity(step, initial=initial, final=0.8, begin=0, end=100)
    assert got == pytest.approx(expected, abs=1e-12)


def test_ramp_offsets_and_update_points():
    assert cubic_sparsity(45, initial=0.0, final=0.8, begin=20, end=120) == pytest.approx(0.4625)
    assert cubic_sparsity(5, initial=0.1, final=0.9, begin=5, end=5) == 0.9  # no ramp: jump
    assert prune_points(0, 10, 4) == [0, 4, 8, 10]
    assert prune_points(3, 3, 5) == [3]
    assert round_sparsities(0.875, 3, "geometric") == pytest.approx([0.5, 0.75, 0.875])
    assert round_sparsities(0.9, 3, "linear") == pytest.approx([0.3, 0.6, 0.9])


def test_gradual_prune_follows_the_ramp_during_training(task):
    model, ctx = task.baseline(), StepContext(task=task)
    n = sum(w.numel() for w in targeted(model))
    # 8 batches per epoch x 2 epochs capped at 12 steps; ramp over steps 0..6 every 2
    GradualPrune(sparsity=0.8, frequency=2, end=0.5, epochs=2, max_steps=12).apply(model, ctx)
    updates = [
        tuple(map(float, m.groups()))
        for line in ctx.log
        if (m := re.match(r"gradual-prune step (\d+): target ([\d.]+), ([\d.]+) zero", line))
    ]
    assert [int(u[0]) for u in updates] == [0, 2, 4, 6]
    for step, target, achieved in updates:
        assert target == pytest.approx(0.8 - 0.8 * (1 - step / 6) ** 3, abs=1e-4)
        assert achieved == pytest.approx(target, abs=1e-4 + 1 / n)
    assert sum(int((w == 0).sum()) for w in targeted(model)) == round(0.8 * n)
    for name, w in zip(("fc1.weight", "fc2.weight"), targeted(model)):
        assert torch.equal(w != 0, ctx.masks[name])  # 6 more steps trained: zeros stayed zero


def test_iterative_prune_reaches_each_round_and_finetune_keeps_it(task):
    recipe = [IterativePrune(sparsity=0.875, rounds=3, max_steps=2), nc.FineTune(max_steps=3)]
    result = nc.compress(task.baseline(), recipe, task, measure_config=FAST)
    iterative, tuned = result.report.steps
    rounds = [
        float(m.group(1))
        for line in iterative.notes
        if (m := re.search(r"round \d+: target [\d.]+, ([\d.]+) zero", line))
    ]
    n = sum(w.numel() for w in targeted(result.model))
    assert rounds == pytest.approx([0.5, 0.75, 0.875], abs=1e-4 + 1 / n)
    assert sum(int((w == 0).sum()) for w in targeted(result.model)) == round(0.875 * n)
    assert tuned.nonzero_params == iterative.nonzero_params


@pytest.mark.parametrize(
    ("cls", "settings", "message"),
    [
        (GradualPrune, {"sparsity": 1.0}, r"sparsity must be in \[0, 1\), got 1.0"),
        (GradualPrune, {"initial_sparsity": 0.5, "sparsity": 0.3}, "must not exceed"),
        (GradualPrune, {"begin": 0.8, "end": 0.5}, "begin <= end"),
        (GradualPrune, {"frequency": 0}, "frequency"),
        (GradualPrune, {"lr": 0}, "lr"),
        (IterativePrune, {"rounds": 0}, "rounds"),
        (IterativePrune, {"path": "cubic"}, "path must be one of geometric, linear"),
        (IterativePrune, {"scope": "row"}, "scope"),
        (IterativePrune, {"max_steps": 0}, "max_steps"),
    ],
)
def test_bad_settings_are_rejected(cls, settings, message):
    with pytest.raises(ValueError, match=message):
        cls(**settings)


def test_gradual_prune_keep_best_returns_the_best_validation_checkpoint(task, monkeypatch):
    from nncompress.train import best as best_module

    seen: list[tuple[int, float]] = []
    real_check = best_module.BestOnValidation.check

    def spy(self, model, step):
        real_check(self, model, step)
        seen.append((step, evaluate(model, task.val, task.metric_fn)))

    monkeypatch.setattr(best_module.BestOnValidation, "check", spy)
    model, ctx = task.baseline(), StepContext(task=task)
    # 8 batches per epoch, 4 epochs, ramp done at step 8: checkpoints at the ends of epochs 1..4
    GradualPrune(sparsity=0.8, frequency=2, end=0.25, epochs=4, lr=5e-2, keep_best=True).apply(model, ctx)
    assert [s for s, _ in seen] == [8, 16, 24, 32]
    best_step, best_value = max(seen, key=lambda sv: (sv[1], -sv[0]))  # the first of equals wins
    assert evaluate(model, task.val, task.metric_fn) == pytest.approx(best_value)
    assert any(f"kept the best on val at step {best_step} of 4 checked" in line for line in ctx.log)
    assert sum(int((w == 0).sum()) for w in targeted(model)) == round(0.8 * sum(w.numel() for w in targeted(model)))


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_best_on_validation_follows_the_metric_direction(task, higher_is_better):
    from nncompress.train.best import BestOnValidation

    view = type(
        "View",
        (),
        {"val": task.val, "metric_fn": task.metric_fn, "metric_name": "accuracy", "higher_is_better": higher_is_better},
    )()
    model = task.baseline()
    states, values = [], []
    best = BestOnValidation(view)
    for step in (1, 2):
        if step == 2:
            with torch.no_grad():
                for p in model.parameters():
                    p.zero_()  # constant logits: a different accuracy from the random model's
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        values.append(evaluate(model, task.val, task.metric_fn))
        best.check(model, step)
    assert values[0] != values[1]
    wanted = values.index(max(values) if higher_is_better else min(values))
    assert (best.step, best.value) == (wanted + 1, values[wanted])
    restored = task.baseline()
    best.restore(restored)
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in states[wanted].items())
    assert best.describe() == f"best on val at step {wanted + 1} of 2 checked (accuracy {values[wanted]:.4f})"
