"""weight-quantize / fp16 / kmeans-quantize steps: targets, accuracy, settings errors, centroid fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SMALL_MODELS, init_model, make_task
from torch import nn

import nncompress as nc
from nncompress.core.recipe import parse_recipe
from nncompress.core.step import StepContext
from nncompress.measure.size import artifact_bytes
from nncompress.models import LeNet5, LeNet300100
from nncompress.prune.magnitude import MagnitudePrune
from nncompress.quantize.kmeans import KMeansQuantize  # registers kmeans-quantize
from nncompress.quantize.layers import (
    CodebookConv2d,
    CodebookLinear,
    HalfConv2d,
    HalfLinear,
    QuantizedConv2d,
    QuantizedLinear,
    quantize_weight_module,
)
from nncompress.quantize.primitives import QuantSpec
from nncompress.quantize.ptq import Float16Weights, WeightQuantize  # registers weight-quantize, fp16
from nncompress.train.loop import TrainConfig, fit


def _apply(step, model: nn.Module, task: nc.Task | None = None) -> tuple[nn.Module, StepContext]:
    ctx = StepContext(task=task or make_task())
    return step.apply(model, ctx), ctx


def _packed_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, (QuantizedLinear, QuantizedConv2d))}


@pytest.mark.parametrize("model_name", list(SMALL_MODELS))
def test_8bit_weight_quantize_agrees_with_float_model(model_name):
    task = make_task(SMALL_MODELS[model_name], n_train=64)
    model = init_model(model_name)
    x = torch.cat([xb for xb, _ in task.test])
    with torch.no_grad():
        ref = model(x)
    quantized, ctx = _apply(WeightQuantize(bits=8), init_model(model_name), task)
    with torch.no_grad():
        out = quantized(x)
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree >= 0.90, f"{model_name}: argmax agreement {agree:.2%}"
    assert _packed_names(quantized) and any("int-symmetric 8-bit" in line for line in ctx.log)


def test_first_conv_and_classifier_stay_float_unless_overridden():
    model, _ = _apply(WeightQuantize(bits=4), LeNet5(num_classes=4))
    assert _packed_names(model) == {"conv2", "fc1", "fc2"}
    assert type(model.conv1) is nn.Conv2d and type(model.fc3) is nn.Linear
    step = WeightQuantize(bits=4, layer_bits={"conv1": 8, "fc[12]": 32}, exclude=("conv2",))
    model, _ = _apply(step, LeNet5(num_classes=4))
    assert _packed_names(model) == {"conv1"} and model.conv1.bits == 8
    model, _ = _apply(WeightQuantize(bits=3, keep_first_conv=False, keep_classifier=False), LeNet5(num_classes=4))
    assert _packed_names(model) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    assert {m.bits for m in model.modules() if isinstance(m, (QuantizedLinear, QuantizedConv2d))} == {3}


def test_group_quantization_and_recipe_round_trip():
    step = WeightQuantize(bits=4, granularity="group", group_size=4, symmetric=False, layer_bits=[["fc2", 6]])
    model, _ = _apply(step, LeNet300100(num_classes=4))  # fc1: 784 inputs, fc2: 300, both divisible by 4
    assert model.fc1.describe() == {"format": "uint-affine", "bits": 4, "granularity": "group", "group_size": 4}
    assert model.fc2.describe() == {"format": "uint-affine", "bits": 6, "granularity": "group", "group_size": 4}
    again = parse_recipe({"steps": [{"kind": "weight-quantize", **step.settings()}]})[0]
    assert again == step


def test_fp16_float_format_halves_what_stays_float():
    model, ctx = _apply(WeightQuantize(bits=4, float_format="fp16"), LeNet5(num_classes=4))
    assert isinstance(model.conv1, HalfConv2d) and isinstance(model.fc3, HalfLinear)
    assert model.fc1.bias.dtype == torch.float16 and "conv1: float16" in ctx.log
    assert model(torch.randn(2, 1, 28, 28)).dtype == torch.float32
    with pytest.raises(ValueError, match="float_format must be one of fp32, fp16; got 'bf16'"):
        WeightQuantize(float_format="bf16")


def test_a_bare_layer_is_replaced_whole():
    layer = nn.Linear(16, 4)
    model, _ = _apply(WeightQuantize(bits=8, keep_classifier=False), layer)
    assert isinstance(model, QuantizedLinear)
    shared, _ = _apply(KMeansQuantize(epochs=0), nn.Linear(16, 4))
    assert isinstance(shared, CodebookLinear)


@pytest.mark.parametrize("bits", [0, 1, 9, 33, 4.0, True])
def test_bad_bits_raise(bits):
    with pytest.raises(ValueError, match=rf"bits must be an integer in \[2, 8\], got {bits!r}"):
        WeightQuantize(bits=bits)


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match=r"group_size=64 does not divide the 784 input values .* of layer 'fc1'"):
        _apply(WeightQuantize(granularity="group"), LeNet300100(num_classes=4))
    with pytest.raises(ValueError, match="exclude entry 'nope' names no module"):
        _apply(WeightQuantize(exclude=("nope",)), LeNet300100(num_classes=4))
    with pytest.raises(ValueError, match="layer_bits pattern 'conv9' matches no Linear/Conv1d/Conv2d"):
        _apply(WeightQuantize(layer_bits={"conv9": 4}), LeNet5(num_classes=4))
    with pytest.raises(ValueError, match=r"layer_bits\['fc1'\] must be an integer in \[2, 8\] or 32"):
        WeightQuantize(layer_bits={"fc1": 1})
    with pytest.raises(ValueError, match="granularity must be one of tensor, channel, group; got 'row'"):
        WeightQuantize(granularity="row")
    with pytest.raises(ValueError, match="group_size=32 is only used with granularity='group'"):
        WeightQuantize(group_size=32)
    with pytest.raises(ValueError, match="method must be one of minmax, mse; got 'l1'"):
        WeightQuantize(method="l1")
    circular = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="layer '0' uses padding_mode='circular'"):
        _apply(WeightQuantize(keep_first_conv=False), circular)
    model, _ = _apply(WeightQuantize(keep_first_conv=False, exclude=("0",)), circular)
    assert isinstance(model[1], QuantizedConv2d)


def test_mse_ranges_beat_minmax_on_heavy_tailed_weights():
    torch.manual_seed(0)
    layer = nn.Linear(256, 64)
    with torch.no_grad():  # Student-t with 2 degrees of freedom: a few huge outliers per row
        layer.weight.copy_(torch.distributions.StudentT(2.0).sample((64, 256)) * 0.02)
    spec = QuantSpec(bits=4, granularity="channel")
    errors = {
        method: (quantize_weight_module(layer, spec, method=method).dequantized_weight() - layer.weight).pow(2).sum()
        for method in ("minmax", "mse")
    }
    assert errors["mse"] < 0.9 * errors["minmax"]  # measured: 0.87 (clipping the outliers pays)


def test_fp16_halves_the_artifact_and_keeps_float32_io():
    torch.manual_seed(0)
    model = LeNet5(num_classes=4).eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    torch.manual_seed(0)
    half, _ = _apply(Float16Weights(), LeNet5(num_classes=4).eval())
    assert all(isinstance(m, (HalfLinear, HalfConv2d)) for n, m in half.named_modules() if n.startswith(("conv", "fc")))
    with torch.no_grad():
        out = half(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-3)
    ratio = artifact_bytes(half) / artifact_bytes(model)
    assert 0.45 <= ratio <= 0.56, ratio
    with pytest.raises(ValueError, match="exclude entry 'head' names no module"):
        _apply(Float16Weights(exclude=("head",)), LeNet5(num_classes=4))


# --- k-means weight sharing -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_mlp() -> tuple[nn.Module, nc.Task]:
    task = make_task(lambda: LeNet300100(num_classes=4), n_train=256)
    torch.manual_seed(0)
    model = LeNet300100(num_classes=4)
    fit(model, task.train, TrainConfig(epochs=2, lr=1e-3))
    return model.eval(), task


def _train_loss(model: nn.Module, task: nc.Task) -> float:
    with torch.no_grad():
        losses = [task.loss(model(x), y).item() * len(y) for x, y in task.train]
    return sum(losses) / sum(len(y) for _, y in task.train)


def test_centroid_finetuning_lowers_loss_and_keeps_codes(trained_mlp):
    import copy

    base, task = trained_mlp
    coarse = dict(bits_linear=2, lr=3e-3)  # few shared values: room for fine-tuning to help
    plain, _ = _apply(KMeansQuantize(epochs=0, **coarse), copy.deepcopy(base), task)
    tuned, ctx = _apply(KMeansQuantize(epochs=3, **coarse), copy.deepcopy(base), task)
    for name in ("fc1", "fc2", "fc3"):
        a, b = plain.get_submodule(name), tuned.get_submodule(name)
        assert isinstance(b, CodebookLinear) and torch.equal(a.codes(), b.codes())
        assert not torch.equal(a.centroids, b.centroids)
        assert torch.equal(b.bias, base.get_submodule(name).bias)  # only centroids train
    assert _train_loss(tuned, task) < 0.95 * _train_loss(plain, task)
    assert any("Huffman" in line for line in ctx.log) and "fine-tuned" in " ".join(ctx.log)


def test_pruned_zeros_stay_exactly_zero_through_kmeans(trained_mlp):
    import copy

    base, task = trained_mlp
    model, ctx = _apply(MagnitudePrune(sparsity=0.6, keep_classifier=False), copy.deepcopy(base), task)
    masks = {k: v.clone() for k, v in ctx.masks.items()}
    model = KMeansQuantize(bits_linear=3, epochs=1, lr=3e-3).apply(model, ctx)
    for name, mask in masks.items():
        weight = model.get_submodule(name.removesuffix(".weight")).dequantized_weight()
        assert (weight[~mask] == 0).all(), name
        assert (weight[mask] != 0).float().mean() > 0.99  # survivors are not collapsed onto zero


def test_kmeans_artifact_is_small_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = LeNet5(num_classes=4).eval()
    shared, _ = _apply(KMeansQuantize(epochs=0), LeNet5(num_classes=4).eval())
    assert isinstance(shared.conv2, CodebookConv2d) and shared.conv2.bits == 5 and shared.fc1.bits == 4
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = shared(x)
    loaded = nc.load(nc.save(shared, tmp_path / "k.ncz"))
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
    assert artifact_bytes(shared) * 5 < artifact_bytes(model)  # 4-5 bits of 32, plus centroids and skeleton


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"bits_conv": 0}, r"bits_conv must be an integer in \[1, 8\], got 0"),
        ({"bits_linear": 9}, r"bits_linear must be an integer in \[1, 8\], got 9"),
        ({"epochs": -1}, "epochs must be a number >= 0"),
        ({"lr": 0}, "lr must be a number > 0, got 0"),
        ({"keep_zero": "yes"}, "keep_zero must be 'auto', 'always' or 'never', got 'yes'"),
        ({"centroid_dtype": "int4"}, "centroid_dtype must be one of float32, float16, int8; got 'int4'"),
    ],
)
def test_kmeans_bad_settings_raise(settings, message):
    with pytest.raises(ValueError, match=message):
        KMeansQuantize(**settings)


def test_rest_bits_rounds_the_other_parameters_and_the_artifact_stores_them_narrow(tmp_path):
    from nncompress.io.artifact import read_manifest

    torch.manual_seed(0)
    model = init_model("vit")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fp32 = artifact_bytes(model)
    q, _ = _apply(WeightQuantize(bits=4, rest_bits=8), model)
    rest = {n: p for n, p in q.named_parameters() if p.dtype == torch.float32 and p.dim() != 0}
    assert any(n.endswith("norm1.weight") for n in rest) and "pos_embed" in rest
    for name, p in rest.items():
        absmax = float(before[name].abs().max())
        if absmax == 0:
            continue
        step = 2.0 ** math.ceil(math.log2(absmax / 127))
        codes = p.detach() / step
        assert torch.equal(codes, codes.round()) and float(codes.abs().max()) <= 127, name
        assert float((p.detach() - before[name]).abs().max()) <= step / 2 + 1e-12, name  # round to nearest
    path = nc.save(q, tmp_path / "q.ncz")
    narrowed = read_manifest(path)["tensors"]["pos_embed"]["header"]["narrowed"]["data"]
    assert narrowed.startswith("int8*2^")
    assert artifact_bytes(q) < artifact_bytes(_apply(WeightQuantize(bits=4), init_model("vit"))[0]) < fp32
    torch.testing.assert_close(nc.load(path).pos_embed, q.pos_embed, rtol=0, atol=0)
    with pytest.raises(ValueError, match="rest_bits must be one of 32, 16, 8 or None; got 4"):
        WeightQuantize(rest_bits=4)


@pytest.mark.parametrize(
    "layer", [nn.Linear(32, 16), nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.Conv2d(4, 4, 3, groups=2)]
)
def test_bias_correction_removes_the_mean_output_shift(layer):
    """Inputs with a large mean: 3-bit weights shift the mean output; bias correction takes it out."""
    from nncompress.quantize.bias_correction import empirical_bias_correction, output_means

    torch.manual_seed(0)
    shape = (256, 32) if isinstance(layer, nn.Linear) else (64, 4, 8, 8)
    x = torch.randn(*shape) + 2.0
    float_model = nn.Sequential(layer).eval()
    quantized = nn.Sequential(quantize_weight_module(layer, QuantSpec(bits=3, granularity="channel"))).eval()
    ref = output_means(float_model, ["0"], [x])["0"]
    before = float((output_means(quantized, ["0"], [x])["0"] - ref).abs().max())
    applied = empirical_bias_correction(float_model, quantized, ["0"], [x])
    after = float((output_means(quantized, ["0"], [x])["0"] - ref).abs().max())
    assert before > 1e-3 and applied["0"] == pytest.approx(before, rel=1e-5)
    assert after < 1e-5 * max(1.0, float(ref.abs().max())), (before, after)


def test_weight_quantize_bias_correction_logs_and_validates():
    model = init_model("lenet5")
    q, ctx = _apply(WeightQuantize(bits=3, bias_correction=True, calibration_batches=1), model)
    assert any(line.startswith("bias correction: 3 layers") for line in ctx.log), ctx.log
    with pytest.raises(ValueError, match="bias_correction='yes' must be True or False"):
        WeightQuantize(bias_correction="yes")
    with pytest.raises(ValueError, match="calibration_batches must be an integer >= 1, got 0"):
        WeightQuantize(calibration_batches=0)
