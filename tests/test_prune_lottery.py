"""Lottery tickets: sparsity 1 - (1 - rate)^r per round, survivors rewound to theta_0 / theta_k."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_task

from nncompress.core.step import StepContext
from nncompress.prune.lottery import LotteryTicket, lottery_rounds, reinitialize
from nncompress.prune.schedule import train_config
from nncompress.train.loop import fit
from nncompress.train.objective import task_loss

TARGETS = ("fc1.weight", "fc2.weight")


def test_rounds_follow_the_geometric_sparsity(task):
    model, ctx = task.baseline(), StepContext(task=task)
    step = LotteryTicket(rounds=2, rate=0.5, max_steps=3)
    step.apply(model, ctx)
    rounds = lottery_rounds(ctx.log)
    n = model.fc1.weight.numel() + model.fc2.weight.numel()
    assert [r.round for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert r.sparsity == pytest.approx(1 - 0.5**r.round, abs=1 / n)
        assert r.trained and 0.0 <= r.metric <= 1.0
    params = dict(model.named_parameters())
    for name in TARGETS:  # the final ticket trained with its mask held
        assert torch.equal(params[name] != 0, ctx.masks[name])
    zeros = sum(int((params[name] == 0).sum()) for name in TARGETS)
    assert zeros == round(0.75 * n)


def test_survivors_are_rewound_to_the_initialization(task):
    model, ctx = task.baseline(), StepContext(task=task, seed=3)
    theta0 = dict(reinitialize(copy.deepcopy(model), seed=3).named_parameters())
    LotteryTicket(rounds=2, rate=0.2, max_steps=2, train_final=False).apply(model, ctx)
    for name, p in model.named_parameters():
        expected = theta0[name] * ctx.masks[name] if name in ctx.masks else theta0[name]
        assert torch.equal(p.detach(), expected.detach()), name
    assert lottery_rounds(ctx.log)[-1].trained is False
    kept = sum(int(ctx.masks[n].sum()) for n in TARGETS) / sum(ctx.masks[n].numel() for n in TARGETS)
    assert kept == pytest.approx(0.8**2, abs=1e-4)


def test_late_rewinding_goes_back_to_the_weights_after_k_steps():
    model, task = make_task().baseline(), make_task()
    step = LotteryTicket(rounds=1, rate=0.5, max_steps=4, rewind_steps=2, train_final=False)
    # theta_k by hand: re-initialize, then the same training run, stopped at step k
    reference, fresh = reinitialize(copy.deepcopy(model), seed=0), make_task()
    theta0 = copy.deepcopy(dict(reference.named_parameters()))
    snapshots: list[dict[str, torch.Tensor]] = []

    def after(m: torch.nn.Module) -> None:
        snapshots.append({n: p.detach().clone() for n, p in m.named_parameters()})

    fit(reference, fresh.train, train_config(step, 0), loss_fn=task_loss(fresh), after_step=after)
    theta_k = snapshots[1]
    ctx = StepContext(task=task)
    step.apply(model, ctx)
    for name, p in model.named_parameters():
        mask = ctx.masks.get(name, torch.ones_like(p, dtype=torch.bool))
        torch.testing.assert_close(p.detach(), theta_k[name] * mask)
    assert not torch.equal(theta_k["fc1.weight"], theta0["fc1.weight"])


def test_bad_settings_are_rejected(task):
    for settings, message in [
        ({"rate": 1.0}, r"rate must be in \(0, 1\), got 1.0"),
        ({"rate": 0}, "rate"),
        ({"rounds": 0}, "rounds"),
        ({"rewind_steps": -1}, "rewind_steps"),
        ({"scope": "x"}, "scope"),
        ({"epochs": 0}, "epochs"),
    ]:
        with pytest.raises(ValueError, match=message):
            LotteryTicket(**settings)
    step = LotteryTicket(rounds=1, max_steps=2, rewind_steps=5)
    with pytest.raises(ValueError, match="rewind_steps=5 is more than the 2 steps"):
        step.apply(task.baseline(), StepContext(task=task))
    assert math.isclose(LotteryTicket(rate=0.2).sparsity_after(3), 1 - 0.8**3)
