"""The criterion registry (``prune/criteria``): one class per criterion, used by every pruning step.

A criterion registered here, in one class, is at once accepted by unstructured, N:M, gradual and
iterative pruning and (when ``structured``) by channel and head pruning.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from conftest import make_task
from torch import nn

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.prune.criteria import CRITERIA, Criterion, get_criterion, register_criterion


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(784, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


@pytest.fixture
def row_index_criterion():
    """A toy criterion: a weight's score is its output row's index (the last rows survive)."""

    @register_criterion("row-index")
    class RowIndex(Criterion):
        def tensor_scores(self, t: torch.Tensor, name: str, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
            rows = torch.arange(t.shape[0], dtype=torch.float32).reshape(-1, *[1] * (t.dim() - 1))
            return rows.expand_as(t).clone()

    yield RowIndex
    del CRITERIA["row-index"]


def test_builtin_criteria_are_registered_with_their_reach():
    assert list(CRITERIA) == ["magnitude", "l1", "l2", "lamp", "taylor", "wanda", "random"]
    assert [n for n, c in CRITERIA.items() if c.structured] == ["l1", "l2", "taylor", "random"]
    with pytest.raises(ValueError, match="criterion must be one of l1, l2, taylor, random; got 'lamp'"):
        nc.ChannelPrune(criterion="lamp")
    with pytest.raises(ValueError, match="criterion must be one of .*wanda, random; got 'nope'"):
        nc.UnstructuredPrune(criterion="nope")
    assert get_criterion("magnitude").p == get_criterion("l1").p == 1 and get_criterion("l2").p == 2
    assert get_criterion("taylor").needs_gradients and not get_criterion("l1").needs_gradients


def test_a_new_criterion_is_one_class_and_every_pruner_takes_it(row_index_criterion):
    task = make_task(_Mlp, n_train=64)
    model, ctx = _Mlp(), StepContext(task=make_task(_Mlp, n_train=64))
    nc.UnstructuredPrune(sparsity=0.5, criterion="row-index", scope="layer").apply(model, ctx)
    keep = ctx.masks["fc1.weight"]
    assert keep[:16].sum() == 0 and keep[16:].all()  # the low rows scored lowest and went
    assert nc.NMPrune(criterion="row-index").criterion == "row-index"
    pruned = nc.compress(
        _Mlp(),
        [nc.ChannelPrune(sparsity=0.5, criterion="row-index")],
        task,
        measure_config=nc.MeasureConfig(latency=False),
    ).model
    assert pruned.fc1.out_features == 16 and pruned.head.out_features == 4
