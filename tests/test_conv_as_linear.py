"""Convolutions seen as matrices: the one-shot Linear steps (GPTQ, AWQ, HQQ, RTN, W8A8, Wanda, SparseGPT)
compress conv layers and hand back conv layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.base.conv_as_linear import ConvAsLinear, apply_step, convs_to_linears, restore_convs
from nncompress.core.step import StepContext
from nncompress.quantize.layers import QuantizedConv1d, QuantizedConv2d
from nncompress.tasks.task import Task


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note on its own copy
@pytest.mark.parametrize(
    "conv, shape",
    [
        (nn.Conv2d(3, 8, 3, padding=1), (2, 3, 9, 7)),
        (nn.Conv2d(4, 6, (3, 2), stride=2, dilation=(2, 1), padding=(1, 0)), (1, 4, 12, 10)),
        (nn.Conv2d(4, 5, 4, padding="same", bias=False), (2, 4, 8, 8)),
        (nn.Conv1d(3, 7, 5, stride=2, padding=2), (2, 3, 21)),
        (nn.Conv1d(3, 7, 4, padding="same"), (3, 11)),  # unbatched, uneven 'same' padding
    ],
)
def test_conv_as_linear_gives_the_conv_outputs(conv, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    wrapper = ConvAsLinear(conv)
    assert wrapper.linear.weight.shape == (conv.out_channels, conv.weight[0].numel())
    torch.testing.assert_close(wrapper(x), conv(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wrapper.conv()(x), conv(x))


def test_grouped_convs_stay_and_masks_follow():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1))
    masks = {"0.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool)}
    wrapped, grouped = convs_to_linears(model, masks)
    assert wrapped == ["0", "2"] and grouped == ["1"]
    assert set(masks) == {"0.linear.weight"} and masks["0.linear.weight"].shape == (8, 27)
    assert restore_convs(model, wrapped, masks) == []
    assert [type(m) for m in model] == [nn.Conv2d] * 3
    assert masks["0.weight"].shape == (8, 3, 3, 3)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.seq = nn.Conv1d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        x = torch.relu(self.seq(x.flatten(2)))
        return self.head(x.mean(-1))


def _task() -> Task:
    torch.manual_seed(0)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    return Task(name="convnet", train=batches, val=batches, test=batches, baseline=ConvNet)


@pytest.mark.parametrize(
    "step",
    [
        nc.GPTQQuantize(bits=4, group_size=16, calibration_batches=2),
        nc.RTNQuantize(bits=4, group_size=16),
        nc.HQQQuantize(bits=4, group_size=16),
        nc.WandaPrune(sparsity=0.5, calibration_batches=2),
        nc.SparseGPTPrune(sparsity=0.5, calibration_batches=2),
        nc.AWQQuantize(bits=4, group_size=16, calibration_batches=2),
        nc.W8A8Quantize(calibration_batches=2),
    ],
    ids=lambda s: s.kind,
)
def test_linear_steps_compress_convs_and_give_conv_layers_back(step, tmp_path):
    task = _task()
    torch.manual_seed(0)
    model = ConvNet().eval()
    x = task.test[0][0]
    ref = model(x)
    ctx = StepContext(task=task, teacher=ConvNet().eval(), seed=0)
    out = apply_step(step, model, ctx)
    convs = [type(out.stem), type(out.pw), type(out.seq)]
    if step.kind in ("wanda", "sparsegpt"):
        assert convs == [nn.Conv2d, nn.Conv2d, nn.Conv1d]
        assert float((out.pw.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.05)
        assert "pw.weight" in ctx.masks and ctx.masks["pw.weight"].shape == out.pw.weight.shape
    elif step.kind in ("awq", "w8a8"):  # input-scaled Linears no conv reproduces: left as unfolded matmuls
        assert all(c in (QuantizedConv2d, QuantizedConv1d, ConvAsLinear) for c in convs)
        assert ConvAsLinear not in convs or any("stay ConvAsLinear" in line for line in ctx.log)
    else:
        assert convs == [QuantizedConv2d, QuantizedConv2d, QuantizedConv1d]
    assert type(out.dw) is nn.Conv2d  # depthwise: not one matrix, named in the notes
    assert any("grouped/depthwise" in line and "dw" in line for line in ctx.log)
    assert type(out.head) is nn.Linear  # keep_classifier
    got = out(x)
    assert torch.isfinite(got).all() and not torch.equal(got, ref)
    assert (got - ref).abs().max() < 0.5 * ref.abs().max()
    path = tmp_path / "m.ncz"
    nc.save(out, path)
    torch.testing.assert_close(nc.load(path, trust=("test_conv_as_linear",))(x), got)


def test_convs_false_leaves_conv_nets_to_nothing_to_do():
    task = _task()
    ctx = StepContext(task=task, seed=0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(Exception, match="Linear"):
        apply_step(nc.RTNQuantize(bits=4, convs=False), model, ctx)
    assert type(model[0]) is nn.Conv2d
