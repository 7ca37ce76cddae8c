"""N:M semi-structured sparsity: exactly N survivors in every group of M inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL_MODELS, init_model, make_task

from nncompress.core.step import StepContext
from nncompress.prune.magnitude import UnstructuredPrune
from nncompress.prune.nm import NMPrune, nm_mask


def group_counts(weight: torch.Tensor, m: int) -> torch.Tensor:
    """Nonzeros in every group of m consecutive weights of each flattened output row."""
    return (weight != 0).reshape(weight.shape[0], -1, m).sum(-1)  # (out, groups)


def test_nm_mask_keeps_the_largest_of_each_group():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.5, 0.1, 7.0, 6.0]])
    assert nm_mask(scores, 2, 4).tolist() == [[False, True, True, False, False, False, True, True]]
    assert nm_mask(scores, 1, 2).tolist() == [[False, True, True, False, True, False, True, False]]
    with pytest.raises(ValueError, match="multiple of m=3"):
        nm_mask(scores, 1, 3)


def test_two_four_on_linear_layers(task):
    model, ctx = task.baseline(), StepContext(task=task)
    NMPrune().apply(model, ctx)
    for w in (model.fc1.weight, model.fc2.weight):
        assert (group_counts(w, 4) == 2).all()
        assert torch.equal(ctx.masks[f"fc{1 if w is model.fc1.weight else 2}.weight"], w != 0)
    assert int((model.fc3.weight == 0).sum()) == 0


def test_general_nm_with_wanda_skips_layers_that_do_not_divide(task):
    model, ctx = task.baseline(), StepContext(task=task)
    NMPrune(n=3, m=8, criterion="wanda", calibration_batches=2).apply(model, ctx)
    assert (group_counts(model.fc1.weight, 8) == 3).all()  # 784 = 98 * 8
    assert int((model.fc2.weight == 0).sum()) == 0  # 300 is not a multiple of 8
    assert "fc2.weight" not in ctx.masks
    assert any("left fc2.weight dense" in line and "300" in line for line in ctx.log)


def test_conv_filters_are_grouped_over_in_channels_and_kernel():
    model = init_model("resnet")
    ctx = StepContext(task=make_task(SMALL_MODELS["resnet"], n_train=64))
    NMPrune().apply(model, ctx)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    pruned = [n for n in convs if f"{n}.weight" in ctx.masks]
    assert len(pruned) == len(convs) - 1  # all but the stem conv
    for name in pruned:
        assert (group_counts(convs[name].weight, 4) == 2).all()  # rows of in*3*3 (or in*1*1)


def test_earlier_masks_stay_and_groups_keep_at_most_n(task):
    model, ctx = task.baseline(), StepContext(task=task)
    UnstructuredPrune(sparsity=0.7, scope="layer").apply(model, ctx)
    before = ctx.masks["fc1.weight"].clone()
    NMPrune().apply(model, ctx)
    assert not (ctx.masks["fc1.weight"] & ~before).any()
    assert (group_counts(model.fc1.weight, 4) <= 2).all()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n": 4, "m": 4}, "n must be smaller than m.*n=4, m=4"),
        ({"n": 0}, "n must be an integer"),
        ({"m": 1, "n": 1}, "m must be an integer >= 2"),
        ({"criterion": "l0"}, "criterion"),
    ],
)
def test_bad_settings_are_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        NMPrune(**settings)
