"""Logit distillation: losses by hand, the recovery step trains toward the teacher, masks hold."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from conftest import make_task
from torch import nn

import nncompress as nc
from nncompress.distill import Distill, kd_loss, soft_kl
from nncompress.models import LeNet300100
from nncompress.tasks.task import call_model
from nncompress.train import objective


def test_soft_kl_by_hand():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # teacher p = (3/4, 1/4)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p || uniform)
    assert float(soft_kl(s, t, 1.0)) == pytest.approx(expected, rel=1e-6)
    # T = 2: p = softmax(t / 2) = (sqrt3, 1) / (sqrt3 + 1), and the T^2 factor
    q = math.sqrt(3.0) / (math.sqrt(3.0) + 1.0)
    expected2 = 4.0 * (q * math.log(q / 0.5) + (1 - q) * math.log((1 - q) / 0.5))
    assert float(soft_kl(s, t, 2.0)) == pytest.approx(expected2, rel=1e-6)
    assert float(kd_loss(s, t, torch.tensor(2.0), alpha=0.25, temperature=1.0)) == pytest.approx(
        0.25 * expected + 0.75 * 2.0, rel=1e-6
    )
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        soft_kl(s, t, 0)


def test_distill_moves_the_student_toward_the_teacher_and_only_the_student():
    task = make_task(lambda: LeNet300100(num_classes=4))
    torch.manual_seed(0)
    teacher = LeNet300100(num_classes=4)
    nc.FineTune(max_steps=30, lr=2e-3).apply(teacher, nc.StepContext(task=task))
    teacher.eval().requires_grad_(False)
    before_teacher = [p.clone() for p in teacher.parameters()]
    torch.manual_seed(1)
    student = LeNet300100(num_classes=4)
    x = task.single_example()

    def gap(m: nn.Module) -> float:
        with torch.no_grad():
            return float(soft_kl(call_model(m.eval(), x), call_model(teacher, x), 4.0))

    start = gap(student)
    Distill(max_steps=30, lr=2e-3, kd_alpha=1.0).apply(student, nc.StepContext(task=task, teacher=teacher))
    assert gap(student) < 0.5 * start
    assert all(torch.equal(a, b) for a, b in zip(before_teacher, teacher.parameters()))


def test_distill_keeps_masks_and_rejects_bad_settings():
    task = make_task()
    result = nc.compress(
        task.baseline(),
        [nc.MagnitudePrune(sparsity=0.8), Distill(max_steps=5)],
        task,
        measure_config=nc.MeasureConfig(latency=False),
    )
    assert result.report.steps[-1].nonzero_params == result.report.steps[0].nonzero_params
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\].*got 1.5"):
        Distill(kd_alpha=1.5)
    with pytest.raises(ValueError, match="kd_temperature must be > 0 .*got -1"):
        Distill(kd_temperature=-1)
    with pytest.raises(ValueError, match="distill needs a teacher"):
        Distill(max_steps=1).apply(task.baseline(), nc.StepContext(task=task))


@pytest.mark.parametrize(
    "step",
    [
        nc.GradualPrune(sparsity=0.5, frequency=2, max_steps=6, distill=True, kd_alpha=1.0),
        nc.IterativePrune(sparsity=0.5, rounds=2, max_steps=3, distill=True, kd_alpha=1.0),
        nc.KMeansQuantize(bits_conv=4, bits_linear=4, max_steps=3, distill=True, kd_alpha=1.0),
    ],
)
def test_pruning_and_codebook_steps_recover_by_distillation(step):
    task = make_task()
    model = task.baseline()
    x, y = next(iter(task.train))
    teacher = copy.deepcopy(model).eval()
    kd_only = objective.step_loss(step, nc.StepContext(task=task, teacher=teacher))
    with torch.no_grad():
        assert float(kd_only(model.eval(), x, y)) == pytest.approx(0.0, abs=1e-6)  # the teacher agrees with itself
        assert float(objective.step_loss(step, nc.StepContext(task=task))(model, x, y)) == pytest.approx(
            float(task.loss(call_model(model, x), y))
        )  # no teacher: the task loss
    result = nc.compress(model, [step], task, measure_config=nc.MeasureConfig(latency=False))
    assert any("with KD (alpha 1.0, T 4.0)" in line for line in result.report.steps[0].notes)
    with pytest.raises(ValueError, match=r"kd_alpha must be in \[0, 1\].*got 2"):
        dataclasses.replace(step, kd_alpha=2)
    with pytest.raises(ValueError, match="kd_temperature must be > 0"):
        dataclasses.replace(step, kd_temperature=0)


def test_recipes_with_the_old_setting_names_still_load():
    step = nc.core.recipe.parse_recipe({"steps": [{"kind": "distill", "alpha": 0.7, "temperature": 2.0}]})[0]
    assert (step.kd_alpha, step.kd_temperature) == (0.7, 2.0)
