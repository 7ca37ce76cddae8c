"""Channel pruning removes LSTM / GRU hidden units: gate rows in every layer and direction,
recurrent and next-layer columns, and the consumer's input columns."""

from __future__ import annotations

import foreign_zoo as fz
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.prune.graph import trace_channels
from nncompress.prune.structured import ChannelPrune
from nncompress.prune.surgery import rnn_gates


class Tagger(nn.Module):
    """A bidirectional recurrent tagger: a score per time step from both directions."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


class FinalState(nn.Module):
    """Classifies from the final hidden state, which holds the units per layer: not prunable here."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.rnn(x)
        return self.head(h[-1])


def _kill_unit(rnn: nn.Module, unit: int) -> None:
    """Zero every gate row of one hidden unit: its state stays 0, so removing it changes nothing."""
    hidden, gates = rnn.hidden_size, rnn_gates(rnn)
    rows = [unit + g * hidden for g in range(gates)]
    with torch.no_grad():
        for name in rnn._flat_weights_names:
            getattr(rnn, name)[rows] = 0


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_a_dead_hidden_unit_is_the_one_removed_and_outputs_stay_equal(cell, tmp_path):
    torch.manual_seed(0)
    model = Tagger(cell).eval()
    _kill_unit(model.rnn, 5)
    x = torch.randn(4, 7, 6)
    with torch.no_grad():
        before = model(x)
    batch = [(x, torch.zeros(4, dtype=torch.long))]
    task = nc.Task(name="tagger", train=batch, val=batch, test=batch, baseline=lambda: model, example_inputs=x)
    ctx = StepContext(task=task)
    pruned = ChannelPrune(sparsity=1 / 8).apply(model, ctx)
    assert pruned.rnn.hidden_size == 7 and pruned.head.in_features == 14
    assert pruned.rnn.weight_ih_l1.shape == (rnn_gates(pruned.rnn) * 7, 14)
    assert "rnn: 8 -> 7 hidden units" in ctx.log
    with torch.no_grad():
        after = pruned(x)
    assert torch.allclose(after, before, atol=1e-6)
    again = nc.load(nc.save(pruned, tmp_path / "m.ncz"), trust=("test_rnn_channels",))
    with torch.no_grad():
        assert torch.equal(again(x), after)


@pytest.mark.parametrize("name", ["rnn-lstm", "rnn-gru"])
def test_zoo_recurrent_nets_lose_half_their_hidden_units(name):
    entry = fz.get(name)
    model = entry.build()
    pruned = ChannelPrune(sparsity=0.5).apply(model, StepContext(task=entry.task(batches=1)))
    assert pruned.rnn.hidden_size == 32
    with torch.no_grad():
        assert pruned(entry.example()).shape == (fz.BATCH, fz.NUM_CLASSES)


def test_final_states_keep_the_units():
    model = FinalState().eval()
    assert trace_channels(model, torch.randn(2, 5, 6)).groups == []
