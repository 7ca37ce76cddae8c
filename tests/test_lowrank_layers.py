"""Low-rank surgery: replacement layers keep outputs, shapes and conv geometry; costs match the counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nncompress.lowrank.layers import METHODS, LayerIO, factorized_linear, layer_cost
from nncompress.lowrank.probe import input_grams, layer_io
from nncompress.measure.flops import count_macs

pytestmark = pytest.mark.usefixtures("one_thread")


def conv(seed: int = 0, **kwargs) -> nn.Conv2d:
    torch.manual_seed(seed)
    settings = {"in_channels": 6, "out_channels": 8, "kernel_size": 3, **kwargs}
    return nn.Conv2d(**settings).eval()


CONV_CONFIGS = {
    "plain": {"padding": 1},
    "stride2": {"stride": 2, "padding": 1},
    "pad2-dil2": {"padding": 2, "dilation": 2},
    "nonsquare-nobias": {"kernel_size": (3, 5), "stride": (2, 1), "padding": (1, 2), "bias": False},
    "same-reflect": {"padding": "same", "padding_mode": "reflect"},
    "same-even-circular": {"kernel_size": (2, 4), "padding": "same", "padding_mode": "circular"},
    "valid-dilated": {"padding": "valid", "dilation": (1, 2)},
    "replicate-stride2": {"padding": 1, "stride": 2, "padding_mode": "replicate"},
}


def full_rank(kind: str, layer: nn.Module) -> tuple[int, ...]:
    return METHODS[kind].full_rank(layer)


def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_at_full_rank_reproduces_the_layer(bias):
    torch.manual_seed(0)
    layer = nn.Linear(20, 12, bias=bias)
    new, error = METHODS["svd"].build(layer, (12,))
    x = torch.randn(5, 7, 20)
    torch.testing.assert_close(run(new, x), run(layer, x), atol=1e-5, rtol=0)
    assert error < 1e-6
    assert [type(m) for m in new] == [nn.Linear, nn.Linear]
    assert (new[0].weight.shape, new[0].bias, new[1].weight.shape) == ((12, 20), None, (12, 12))
    assert (new[1].bias is not None) == bias


def test_factorized_linear_computes_left_times_right():
    layer = nn.Linear(6, 4)
    left, right = torch.randn(4, 2), torch.randn(2, 6)
    x = torch.randn(3, 6)
    torch.testing.assert_close(run(factorized_linear(layer, left, right), x), x @ (left @ right).T + layer.bias)


@pytest.mark.parametrize("kind", ["tucker", "spatial-svd"])
@pytest.mark.parametrize("config", list(CONV_CONFIGS))
def test_conv_at_full_rank_reproduces_the_layer(kind, config):
    layer = conv(**CONV_CONFIGS[config])
    new, error = METHODS[kind].build(layer, full_rank(kind, layer))
    x = torch.randn(2, 6, 11, 13)
    expected = run(layer, x)
    got = run(new, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert error < 1e-6
    last = new[-1]
    assert (last.bias is not None) == (layer.bias is not None)
    assert all(m.bias is None for m in list(new)[:-1])  # only the last layer adds the bias


@pytest.mark.parametrize("config", list(CONV_CONFIGS))
def test_cp_reproduces_a_layer_whose_kernel_has_that_cp_rank(config):
    layer = conv(**CONV_CONFIGS[config])
    kh, kw = layer.kernel_size
    g = torch.Generator().manual_seed(1)
    factors = [torch.randn(n, 3, generator=g) for n in (8, 6, kh, kw)]
    with torch.no_grad():
        layer.weight.copy_(torch.einsum("or,ir,yr,xr->oiyx", *factors))
    new, error = METHODS["cp"].build(layer, (3,))
    x = torch.randn(2, 6, 11, 13)
    expected = run(layer, x)
    assert error < 1e-3
    torch.testing.assert_close(run(new, x), expected, atol=1e-3 * float(expected.abs().max()), rtol=0)
    assert [m.groups for m in new] == [1, 3, 3, 1]  # 1x1, depthwise kh x 1, depthwise 1 x kw, 1x1


def test_tucker_core_keeps_the_conv_geometry():
    layer = conv(**CONV_CONFIGS["pad2-dil2"], stride=2)
    first, core, last = METHODS["tucker"].build(layer, (4, 3))[0]
    assert (first.kernel_size, last.kernel_size) == ((1, 1), (1, 1))
    assert (core.in_channels, core.out_channels, core.kernel_size) == (3, 4, (3, 3))
    assert (core.stride, core.padding, core.dilation) == (layer.stride, layer.padding, layer.dilation)


def test_spatial_svd_splits_the_geometry_per_axis():
    layer = conv(**CONV_CONFIGS["nonsquare-nobias"], dilation=(2, 3))
    vertical, horizontal = METHODS["spatial-svd"].build(layer, (4,))[0]

    def geometry(c: nn.Conv2d) -> tuple:
        return c.kernel_size, c.stride, c.padding, c.dilation

    assert geometry(vertical) == ((3, 1), (2, 1), (1, 0), (2, 1))
    assert geometry(horizontal) == ((1, 5), (1, 1), (0, 2), (1, 3))


@pytest.mark.parametrize("kind", ["tucker", "cp", "spatial-svd"])
def test_grouped_convolutions_are_not_factorized(kind):
    assert "groups=2" in METHODS[kind].skip_reason(conv(groups=2))
    assert METHODS[kind].skip_reason(conv()) is None


@pytest.mark.parametrize(
    ("kind", "rank", "config"),
    [
        ("tucker", (5, 3), "stride2"),
        ("tucker", (2, 2), "same-reflect"),
        ("cp", (4,), "nonsquare-nobias"),
        ("cp", (5,), "stride2"),
        ("spatial-svd", (3,), "stride2"),
        ("spatial-svd", (4,), "valid-dilated"),
    ],
)
def test_conv_cost_matches_the_parameters_and_the_flop_counter(kind, rank, config):
    layer = conv(**CONV_CONFIGS[config])
    x = torch.randn(1, 6, 12, 10)
    io = layer_io(nn.Sequential(layer), ["0"], x)["0"]
    method = METHODS[kind]
    new, _ = method.build(layer, rank)
    cost = method.cost(layer, rank, io)
    assert cost.macs == count_macs(new, x)
    assert cost.params == sum(m.weight.numel() for m in new)
    assert layer_cost(layer, io) == (layer.weight.numel(), count_macs(layer, x))


def test_linear_cost_counts_every_position():
    layer = nn.Linear(16, 24)
    x = torch.randn(1, 9, 16)  # a batch of one sample with nine tokens
    io = layer_io(nn.Sequential(layer), ["0"], x)["0"]
    assert io == LayerIO((9, 1), (9, 1))
    new, _ = METHODS["svd"].build(layer, (5,))
    assert METHODS["svd"].cost(layer, (5,), io) == (5 * 40, count_macs(new, x))
    assert layer_cost(layer, io).macs == count_macs(layer, x)


def test_layer_io_counts_calls_and_skips_unused_layers():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    io = layer_io(Twice(), ["fc", "unused"], torch.randn(1, 4))
    assert io == {"fc": LayerIO((1, 1), (1, 1), calls=2)}


def test_input_grams_are_x_transpose_x_over_every_batch():
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    batches = [torch.randn(4, 5), torch.randn(6, 5)]
    grams = input_grams(model, ["0", "2"], batches)
    x = torch.cat(batches).double()
    torch.testing.assert_close(grams["0"], x.T @ x)
    hidden = torch.relu(model[0](torch.cat(batches))).detach().double()
    torch.testing.assert_close(grams["2"], hidden.T @ hidden)
