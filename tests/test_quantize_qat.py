"""Quantization-aware training (``qat``) and binary weights (``binarize``): gradients, grids, packing, sizes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_task
from torch import nn

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.models import LeNet5, LeNet300100
from nncompress.prune.magnitude import MagnitudePrune
from nncompress.quantize.binary import Binarize, BinaryWeightFakeQuant, sign_ste
from nncompress.quantize.layers import BinaryConv2d, BinaryLinear, QuantizedConv2d, QuantizedLinear
from nncompress.quantize.qat import (
    FAKE_QUANT_LAYERS,
    ActivationFakeQuant,
    FakeQuantInputPacked,
    LSQWeightFakeQuant,
    QuantizationAwareTraining,
    STEWeightFakeQuant,
    convert_fake_quant,
    prepare_fake_quant,
    weight_layers,
)
from nncompress.train.loop import TrainConfig, fit


def _ctx(task: nc.Task, model: nn.Module) -> StepContext:
    return StepContext(task=task, teacher=copy.deepcopy(model).eval())


# --- gradients ------------------------------------------------------------------------------------


def test_lsq_step_gradient_matches_hand_computed_value():
    w = torch.tensor([[0.33, -0.05, 2.0]], requires_grad=True)
    fq = LSQWeightFakeQuant(w, bits=3)  # Qp = 3
    with torch.no_grad():
        fq.step.fill_(0.2)
    fq(w).sum().backward()
    # d out / d s per element: round(w/s) - w/s inside the range, Qp where clipped:
    # 0.33/0.2 = 1.65 -> 2 - 1.65 = 0.35; -0.05/0.2 = -0.25 -> 0 + 0.25 = 0.25; 2.0/0.2 = 10 -> clipped: 3.
    # LSQ gradient scale g = 1 / sqrt(N * Qp) = 1 / sqrt(3 * 3) = 1/3.
    expected = (0.35 + 0.25 + 3.0) / 3.0
    assert fq.step.grad.item() == pytest.approx(expected, abs=1e-5)
    assert w.grad.tolist() == [[1.0, 1.0, 0.0]]  # straight through inside, zero where clipped


def test_lsq_step_initialisation_follows_the_paper():
    w = torch.randn(5, 12)
    fq = LSQWeightFakeQuant(w, bits=4)
    expected = 2 * w.abs().mean(1, keepdim=True) / math.sqrt(7)
    torch.testing.assert_close(fq.step.detach(), expected)
    assert fq.grad_factor == pytest.approx(1 / math.sqrt(12 * 7))


def test_ste_passes_gradients_inside_the_range_and_zero_where_clipped():
    torch.manual_seed(0)
    w = torch.randn(2, 2000, requires_grad=True)
    fq = STEWeightFakeQuant(bits=3, range_method="mse")  # the MSE range clips the Gaussian's tails
    fq(w).sum().backward()
    scale = fq.weight_scale(w)
    inside = (torch.round(w.detach() / scale).abs() <= 3).float()
    assert 0 < inside.sum() < w.numel()  # both cases occur
    assert torch.equal(w.grad, inside)


def test_ema_activation_range_clips_gradients_outside_it():
    fq = ActivationFakeQuant(bits=8, method="ema")
    fq(torch.tensor([[0.0, 1.0]]))  # first batch: unsigned range [0, 1]
    x = torch.tensor([[0.5, 0.99, 2.0]], requires_grad=True)
    fq.eval()(x).sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0, 0.0]]


def test_sign_ste_gradient_is_clipped_at_one():
    w = torch.tensor([0.3, -0.9, 1.5, -4.0], requires_grad=True)
    out = sign_ste(w)
    out.sum().backward()
    assert out.tolist() == [1.0, -1.0, 1.0, -1.0]
    assert w.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


# --- grids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("make", [lambda w, b: LSQWeightFakeQuant(w, b), lambda w, b: STEWeightFakeQuant(b)])
def test_fake_quant_weights_lie_on_the_per_channel_grid(bits, make):
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    fq = make(w, bits)
    out = fq(w).detach()
    codes = out / fq.weight_scale(w).detach()
    qmax = 2 ** (bits - 1) - 1
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
    assert codes.abs().max() <= qmax + 1e-4


def test_unsigned_activation_fake_quant_for_non_negative_inputs():
    fq = ActivationFakeQuant(bits=4, method="lsq")
    x = torch.rand(8, 20) * 3
    out = fq(x)
    assert not bool(fq.signed)
    codes = out / fq.step.detach()
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
    assert codes.min() >= 0 and codes.max() <= 15  # all 16 unsigned levels are usable


# --- training and conversion ----------------------------------------------------------------------


def test_a_few_qat_steps_reduce_the_loss():
    task = make_task()
    torch.manual_seed(0)
    model = prepare_fake_quant(LeNet300100(num_classes=4), {"fc1": 3, "fc2": 3, "fc3": 3}, method="lsq", act_bits=4)
    x, y = next(iter(task.train))

    def loss() -> float:
        with torch.no_grad():
            return nn.functional.cross_entropy(model(x), y).item()

    before = loss()
    fit(model, task.train, TrainConfig(max_steps=24, lr=2e-3))
    assert loss() < 0.6 * before


@pytest.mark.parametrize(("method", "act_bits"), [("lsq", None), ("ste", None), ("lsq", 6), ("ste", 8)])
def test_converted_model_computes_what_the_fake_quant_model_computed(method, act_bits):
    task = make_task(lambda: LeNet5(num_classes=4))
    torch.manual_seed(0)
    model = LeNet5(num_classes=4)
    plan = {n: 4 for n, _ in weight_layers(model)}
    prepare_fake_quant(model, plan, method=method, act_bits=act_bits)
    fit(model, task.train, TrainConfig(max_steps=3, lr=1e-3))  # scales move away from their start
    x = task.single_example().repeat(4, 1, 1, 1) + torch.randn(4, 1, 28, 28) * 0.1
    with torch.no_grad():
        simulated = model(x)
        formats = convert_fake_quant(model)
        real = model(x)
    torch.testing.assert_close(real, simulated, rtol=1e-5, atol=1e-5)
    assert set(formats) == set(plan)
    assert not any(isinstance(m, FAKE_QUANT_LAYERS) for m in model.modules())
    for name in plan:
        layer = model.get_submodule(name)
        if act_bits is not None:
            assert isinstance(layer, FakeQuantInputPacked)
            layer = layer.layer
        assert isinstance(layer, (QuantizedLinear, QuantizedConv2d))
        assert layer.packed.numel() == math.ceil(math.prod(layer.weight_shape) * 4 / 8)  # 4 bits per weight


def test_qat_step_keeps_first_conv_and_classifier_float_by_default():
    task = make_task(lambda: LeNet5(num_classes=4), n_train=128)
    torch.manual_seed(0)
    model = LeNet5(num_classes=4)
    names = [n for n, _ in weight_layers(model)]
    ctx = _ctx(task, model)
    QuantizationAwareTraining(bits=3, max_steps=2).apply(model, ctx)
    assert type(model.get_submodule(names[0])) is nn.Conv2d
    assert type(model.get_submodule(names[-1])) is nn.Linear
    assert all(isinstance(model.get_submodule(n), (QuantizedLinear, QuantizedConv2d)) for n in names[1:-1])
    assert any("last train loss" in line for line in ctx.log)
    assert any(line.startswith(f"{names[1]}: int-symmetric 3-bit") for line in ctx.log)


def test_pruned_weights_stay_zero_through_qat():
    task = make_task(n_train=128)
    torch.manual_seed(0)
    model = LeNet300100(num_classes=4)
    ctx = _ctx(task, model)
    MagnitudePrune(sparsity=0.6, keep_classifier=False).apply(model, ctx)
    QuantizationAwareTraining(bits=4, max_steps=3, lr=1e-2, keep_classifier=False).apply(model, ctx)
    for name in ("fc1", "fc2", "fc3"):
        weight = model.get_submodule(name).decode_weight()
        mask = ctx.masks[f"{name}.weight"]
        assert not (~mask).all() and (~mask).any()
        assert torch.count_nonzero(weight[~mask]) == 0


# --- binarize -------------------------------------------------------------------------------------


def test_binarize_packs_hidden_layers_to_one_bit_and_leaves_the_classifier_float(tmp_path):
    task = make_task(n_train=128)
    torch.manual_seed(0)
    model = LeNet300100(num_classes=4).eval()
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    hidden_fp32 = sum(p.numel() * 4 for layer in (model.fc1, model.fc2) for p in layer.parameters())
    classifier = model.fc3
    Binarize(max_steps=3, lr=1e-3).apply(model, _ctx(task, model))
    assert model.fc3 is classifier  # still the float nn.Linear
    for hidden in (model.fc1, model.fc2):
        assert isinstance(hidden, BinaryLinear)
        w = hidden.decode_weight()
        torch.testing.assert_close(w.abs(), hidden.alpha.expand_as(w), rtol=0, atol=0)  # +-alpha per channel
        assert hidden.packed.numel() == w.numel() // 8  # one bit per weight
    saved = nc.save(model, tmp_path / "binary.ncz").stat().st_size
    hidden_binary = saved - (fp32_bytes - hidden_fp32)  # the rest costs at most its float32 bytes
    assert hidden_binary <= hidden_fp32 / 20


def test_binarize_keeps_the_first_conv_and_classifier_of_a_cnn():
    task = make_task(lambda: LeNet5(num_classes=4), n_train=128)
    torch.manual_seed(0)
    model = LeNet5(num_classes=4)
    names = [n for n, _ in weight_layers(model)]
    first, last = model.get_submodule(names[0]), model.get_submodule(names[-1])
    Binarize(max_steps=1).apply(model, _ctx(task, model))
    assert model.get_submodule(names[0]) is first and model.get_submodule(names[-1]) is last
    assert all(isinstance(model.get_submodule(n), (BinaryLinear, BinaryConv2d)) for n in names[1:-1])


def test_binary_fake_quant_converts_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(2, 2, 6, 6)
    from nncompress.quantize.binary import prepare_binary

    prepare_binary(model, {"0": 1, "3": 1})
    with torch.no_grad():
        simulated = model(x)
        convert_fake_quant(model)
        real = model(x)
    torch.testing.assert_close(real, simulated, rtol=1e-6, atol=1e-6)
    assert BinaryWeightFakeQuant()(torch.tensor([[0.0, -2.0]])).tolist() == [[1.0, -1.0]]


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 1, 9, 4.0, True])
def test_bad_bits_are_rejected(bits):
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 8\], got"):
        QuantizationAwareTraining(bits=bits)


@pytest.mark.parametrize("act_bits", [1, 9, "8"])
def test_bad_act_bits_are_rejected(act_bits):
    with pytest.raises(ValueError, match=r"act_bits must be an integer in \[2, 8\] or None \(float\)"):
        QuantizationAwareTraining(act_bits=act_bits)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="method must be one of lsq, ste; got 'dorefa'"):
        QuantizationAwareTraining(method="dorefa")
    with pytest.raises(ValueError, match="1 bit: use the 'binarize' step"):
        QuantizationAwareTraining(bits=1)
    with pytest.raises(ValueError, match="ste_range must be one of minmax, mse"):
        QuantizationAwareTraining(method="ste", ste_range="max")
    with pytest.raises(ValueError, match="kd_alpha must be in"):
        QuantizationAwareTraining(kd_alpha=2.0)
    with pytest.raises(ValueError, match="latent_clip must be > 0 or None, got -1"):
        Binarize(latent_clip=-1)
    with pytest.raises(ValueError, match=r"edge_bits must be an integer in \[2, 8\] or None"):
        Binarize(edge_bits=1)


def test_exclude_naming_no_module_is_rejected():
    model = LeNet300100(num_classes=4)
    with pytest.raises(ValueError, match="exclude entry 'fc9' names no module"):
        QuantizationAwareTraining(exclude=("fc9",)).plan(model)
    with pytest.raises(ValueError, match="no hidden Linear or Conv2d layer left to binarize"):
        Binarize(exclude=("fc1", "fc2")).plan(model)
