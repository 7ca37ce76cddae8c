"""Unstructured and N:M pruning reach LSTM / GRU gate matrices (weight_ih_l* / weight_hh_l*)."""

from __future__ import annotations

import foreign_zoo as fz
import pytest
import torch

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.prune.magnitude import MagnitudePrune, UnstructuredPrune
from nncompress.prune.nm import NMPrune


def _gates(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if n.startswith("rnn.weight_")}


@pytest.mark.parametrize("name", ["rnn-lstm", "rnn-gru"])
def test_magnitude_prune_zeroes_half_the_gate_weights_and_the_model_round_trips(name, tmp_path):
    entry = fz.get(name)
    model = entry.build()
    ctx = StepContext(task=entry.task(batches=1))
    pruned = MagnitudePrune(sparsity=0.5).apply(model, ctx)
    gates = _gates(pruned)
    assert len(gates) == 4  # two layers, ih and hh
    zero = sum(int((p == 0).sum()) for p in gates.values()) / sum(p.numel() for p in gates.values())
    assert 0.4 < zero < 0.6, zero
    assert all(n in ctx.masks for n in gates)
    x = entry.example()
    with torch.no_grad():
        out = pruned(x)
    assert torch.isfinite(out).all()
    again = nc.load(nc.save(pruned, tmp_path / "m.ncz"), trust=("foreign_zoo",))
    with torch.no_grad():
        assert torch.equal(again(x), out)


def test_nm_prune_keeps_two_of_every_four_gate_inputs():
    entry = fz.get("rnn-gru")
    pruned = NMPrune(n=2, m=4).apply(entry.build(), StepContext(task=entry.task(batches=1)))
    for name, w in _gates(pruned).items():
        groups = w.detach().reshape(w.shape[0], -1, 4)
        assert ((groups != 0).sum(-1) <= 2).all(), name


def test_wanda_leaves_recurrent_gates_dense_and_says_so():
    entry = fz.get("rnn-lstm")
    model = entry.build()
    before = {n: p.detach().clone() for n, p in _gates(model).items()}
    ctx = StepContext(task=entry.task(batches=1))
    pruned = UnstructuredPrune(sparsity=0.5, criterion="wanda", keep_classifier=False).apply(model, ctx)
    assert all(torch.equal(p, before[n]) for n, p in _gates(pruned).items())
    assert any("wanda scores no recurrent gates: rnn (LSTM)" in line for line in ctx.log), ctx.log
