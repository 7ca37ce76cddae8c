"""int8-static / int8-dynamic: real int8 modules, close to fp32, small artifacts that round-trip."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zlib

import pytest
import torch
from conftest import SMALL_MODELS, init_model, make_task
from torch import nn

import nncompress as nc
import nncompress.quantize.int8  # noqa: F401 - registers the steps (the registry contract test picks them up)
from nncompress.core.step import StepContext
from nncompress.models import ResNet
from nncompress.quantize.int8 import DynamicInt8Quantize, StaticInt8Quantize
from nncompress.tasks.batches import TensorBatches

HAS_ORT = all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxruntime"))
BACKENDS = ["torch", pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime"))]


def _quantize(step, model: nn.Module, task: nc.Task) -> tuple[nn.Module, list[str]]:
    ctx = StepContext(task=task)
    return step.apply(model, ctx), ctx.log


def _is_int8(model: nn.Module) -> bool:
    """torch.ao int8 modules, or an onnxruntime graph whose weights are int8 initializers."""
    if any(".quantized" in type(m).__module__ for m in model.modules()):
        return True
    from onnx import TensorProto

    graphs = [m.model_proto().graph for m in model.modules() if hasattr(m, "model_proto")]
    return any(i.data_type == TensorProto.INT8 for g in graphs for i in g.initializer)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_name", list(SMALL_MODELS))
def test_static_int8_is_int8_close_to_fp32_and_round_trips(model_name, backend, tmp_path):
    task = make_task(SMALL_MODELS[model_name], n_train=128)
    model = init_model(model_name)
    q, log = _quantize(StaticInt8Quantize(calibration_batches=2, backend=backend), model, task)
    assert _is_int8(q), log
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in q.modules()) or model_name == "vit", log
    x = task.inputs_example()  # (64, 1, 28, 28)
    with torch.inference_mode():
        ref, out = model(x), q(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # 8-bit weights and activations: a few percent of the logits' norm (the ViT quantizes more ops)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < (0.25 if model_name == "vit" else 0.05), (rel, log)
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.85
    loaded = nc.load(nc.save(q, tmp_path / "q.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_artifact_is_int8_sized_and_loads_in_a_fresh_process(backend, tmp_path):
    torch.manual_seed(0)
    model = ResNet(widths=(32, 64), num_classes=4).eval()  # ~100k params: headers do not dominate
    task = make_task(lambda: model, n_train=128)
    q, _ = _quantize(StaticInt8Quantize(calibration_batches=1, backend=backend), model, task)
    fp32_bytes = nc.save(model, tmp_path / "fp32.ncz").stat().st_size
    path = nc.save(q, tmp_path / "int8.ncz")
    assert path.stat().st_size < 0.35 * fp32_bytes, (path.stat().st_size, fp32_bytes)
    x = task.single_example()
    with torch.inference_mode():
        expected = q(x)
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import torch, nncompress as nc
        m = nc.load({str(path)!r})
        with torch.inference_mode():
            torch.save(m(torch.load({str(tmp_path / "x.pt")!r})), {str(tmp_path / "y.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=0, atol=0)


def test_torch_backend_fuses_conv_bn_relu_into_int8_kernels():
    task = make_task(SMALL_MODELS["resnet"], n_train=64)
    q, log = _quantize(StaticInt8Quantize(calibration_batches=1, backend="torch"), init_model("resnet"), task)
    names = {type(m).__name__ for m in q.modules()}
    assert "ConvReLU2d" in names and "BatchNorm2d" not in names, names
    assert "torch.ao FX" in log[-1]


def test_exclude_keeps_modules_fp32():
    task = make_task(SMALL_MODELS["lenet5"], n_train=64)
    q, _ = _quantize(
        StaticInt8Quantize(calibration_batches=1, backend="torch", exclude=("fc3",)), init_model("lenet5"), task
    )
    assert isinstance(q.get_submodule("fc3"), nn.Linear)
    with pytest.raises(ValueError, match="exclude entry 'nope' names no module"):
        _quantize(StaticInt8Quantize(exclude=("nope",)), init_model("lenet5"), task)


def test_untraceable_model_falls_back_to_dynamic_int8():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(784, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: FX cannot trace it
                x = x * 2
            return self.fc(x.flatten(1))

    task = make_task(Branchy, n_train=64)
    q, log = _quantize(StaticInt8Quantize(calibration_batches=1, backend="torch"), Branchy().eval(), task)
    assert "dynamic int8" in log[-1]
    assert type(q.fc).__module__.startswith("torch.ao.nn.quantized.dynamic")


def test_dynamic_int8_torch_backend_quantizes_linears(tmp_path):
    task = make_task(SMALL_MODELS["mlp"], n_train=64)
    model = init_model("mlp")
    q, log = _quantize(DynamicInt8Quantize(backend="torch"), model, task)
    assert all(
        type(q.get_submodule(n)).__name__ == "Linear" and ".dynamic" in type(q.get_submodule(n)).__module__
        for n in ("fc1", "fc2", "fc3")
    ), log
    x = task.single_example()
    loaded = nc.load(nc.save(q, tmp_path / "d.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=0)
        assert float((q(x) - model(x)).norm() / model(x).norm()) < 0.05


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_name", ["mlp", "vit"])
def test_dynamic_int8_backends_are_close_to_fp32_small_and_round_trip(model_name, backend, tmp_path):
    task = make_task(SMALL_MODELS[model_name], n_train=64)
    model = init_model(model_name)
    q, log = _quantize(DynamicInt8Quantize(backend=backend), model, task)
    assert _is_int8(q) and log[-1].startswith(f"int8-dynamic: {backend.replace('torch', 'torch.ao')}"), log
    x = task.inputs_example()  # (64, 1, 28, 28)
    with torch.inference_mode():
        ref, out = model(x), q(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # int8 weights and per-batch int8 activations on the Linears only: well under 5% of the logits
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.05, (rel, log)
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.9
    loaded = nc.load(nc.save(q, tmp_path / "q.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x[:1]), q(x[:1]), rtol=0, atol=0)
    if model_name == "mlp":  # the MLP is all Linear weights: the artifact is about 4x smaller
        fp32_bytes = nc.save(model, tmp_path / "fp32.ncz").stat().st_size
        assert (tmp_path / "q.ncz").stat().st_size < 0.3 * fp32_bytes


@pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime")
def test_dynamic_int8_onnxruntime_layer_rows_show_int8_weights_and_exact_counts():
    from nncompress.measure.size import count_params
    from nncompress.quantize.runtime import OnnxRuntimeModule

    task = make_task(SMALL_MODELS["mlp"], n_train=64)
    model = init_model("mlp")
    for per_channel in (True, False):
        q, _ = _quantize(DynamicInt8Quantize(per_channel=per_channel, exclude=("fc3",)), model, task)
        assert isinstance(q, OnnxRuntimeModule)
        assert "MatMulInteger" in {n.op_type for n in q.model_proto().graph.node}  # the dynamic graph
        rows = {r["name"]: r for r in q.layer_rows()}
        assert list(rows) == ["fc1", "fc2", "fc3"]
        for name in ("fc1", "fc2"):
            layer = model.get_submodule(name)
            row = rows[name]
            assert (row["type"], row["format"], row["bits"]) == ("MatMulInteger", "int8", 8)
            assert row["granularity"] == ("channel" if per_channel else "tensor")
            assert row["shape"] == list(layer.weight.shape)  # PyTorch's (out, in)
            assert row["params"] == layer.weight.numel() + layer.bias.numel()  # the float bias is found too
        assert (rows["fc3"]["format"], rows["fc3"]["granularity"]) == ("float32", None)  # excluded: fp32
        assert count_params(q) == count_params(model)  # zero points and scales are not parameters


def test_dynamic_int8_export_failure_falls_back_to_torch_with_a_log_line():
    class Unexportable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(784, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.special.erfcx(x.flatten(1)))  # no ONNX symbolic for erfcx

    task = make_task(Unexportable, n_train=64)
    q, log = _quantize(DynamicInt8Quantize(), Unexportable().eval(), task)
    assert "onnxruntime path failed" in log[0] and "erfcx" in log[0] and "using torch.ao" in log[0], log
    assert type(q.fc).__module__.startswith("torch.ao.nn.quantized.dynamic")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"backend": "auto"}, "backend='auto' is not supported; accepted: 'onnxruntime', 'torch'"),
        ({"reduce_range": 1}, "reduce_range=1 must be True or False"),
        ({"per_channel": "yes"}, "per_channel='yes' must be True or False"),
        ({"threads": -1}, "threads=-1 must be an integer >= 0"),
    ],
)
def test_dynamic_int8_bad_settings_are_clear_errors(settings, match):
    with pytest.raises(ValueError, match=match):
        DynamicInt8Quantize(**settings)


def test_empty_calibration_data_is_a_clear_error():
    empty = nc.Task(
        name="empty",
        train=TensorBatches(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), batch_size=8),
        val=[],
        test=[(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))],
        baseline=lambda: init_model("lenet5"),
    )
    with pytest.raises(ValueError, match="calibration needs data.*'empty' has no train batches"):
        _quantize(StaticInt8Quantize(), init_model("lenet5"), empty)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"calibration_batches": 0}, "calibration_batches must be an integer >= 1, got 0"),
        ({"calibration_batches": 2.5}, r"calibration_batches must be an integer >= 1, got 2.5"),
        ({"observer": "kl"}, "observer='kl' is not supported; accepted: 'minmax', 'histogram'"),
        ({"backend": "tensorrt"}, "backend='tensorrt' is not supported; accepted: 'auto'"),
        ({"per_channel": "yes"}, "per_channel='yes' must be True or False"),
        ({"threads": -1}, "threads=-1 must be an integer >= 0"),
    ],
)
def test_bad_settings_are_clear_errors(settings, match):
    with pytest.raises(ValueError, match=match):
        StaticInt8Quantize(**settings)


def test_steps_round_trip_through_a_recipe():
    step = StaticInt8Quantize(calibration_batches=3, exclude=["fc3"])
    again = nc.core.recipe.parse_recipe({"steps": [{"kind": "int8-static", **step.settings()}]})[0]
    assert again == step and again.exclude == ("fc3",)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_models_report_their_weights_and_macs(backend, tmp_path):
    from nncompress.measure.flops import count_macs
    from nncompress.measure.size import count_params

    task = make_task(SMALL_MODELS["lenet5"], n_train=128)
    model = init_model("lenet5")
    q, _ = _quantize(StaticInt8Quantize(calibration_batches=2, backend=backend), model, task)
    x = task.inputs_example()
    loaded = nc.load(nc.save(q, tmp_path / "q.ncz"))
    for m in (q, loaded):
        assert count_macs(m, x) == count_macs(model, x)  # the float graph's MACs, per sample x batch
        # every weight and bias is still counted (ONNX Runtime may add a few int32 helper constants)
        assert count_params(model) <= count_params(m) <= count_params(model) * 1.02


@pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime")
def test_convs_with_few_input_channels_stay_fp32_with_their_activation_and_pool():
    task = make_task(SMALL_MODELS["lenet5"], n_train=128)
    model = init_model("lenet5")
    q, log = _quantize(StaticInt8Quantize(calibration_batches=1), model, task)
    assert "fp32: /conv1/Conv, /relu1/Relu, /pool1/MaxPool" in log[-1], log
    ops = {n.name: n.op_type for n in q.model_proto().graph.node}
    assert ops["/conv1/Conv"] == "Conv" and "/conv1/Conv_quantized" not in str(ops)
    weights = {i.name for i in q.model_proto().graph.initializer}
    assert "conv1.weight" in weights and "conv2.weight_quantized" in weights  # conv1 fp32, conv2 int8
    q_all, log_all = _quantize(StaticInt8Quantize(calibration_batches=1, min_int8_in_channels=1), model, task)
    assert "fp32:" not in log_all[-1]
    assert "conv1.weight_quantized" in {i.name for i in q_all.model_proto().graph.initializer}
    with pytest.raises(ValueError, match="min_int8_in_channels must be an integer >= 1, got 0"):
        StaticInt8Quantize(min_int8_in_channels=0)


@pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime")
def test_large_batches_run_on_a_multithreaded_session_with_the_one_thread_result():
    from nncompress.quantize.runtime import OnnxRuntimeModule

    task = make_task(SMALL_MODELS["lenet5"], n_train=128)
    q, _ = _quantize(StaticInt8Quantize(calibration_batches=1, threads=2), init_model("lenet5"), task)
    assert isinstance(q, OnnxRuntimeModule)
    x = torch.randn(37, 1, 28, 28)
    small = torch.cat([q(x[i : i + 8]) for i in range(0, 37, 8)])  # batches <= 8: the one-thread session
    large = q(x)
    assert set(q._sessions) == {1, 2}
    torch.testing.assert_close(large, small, rtol=0, atol=1e-5)


@pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime")
def test_bias_scales_are_recomputed_on_load_not_stored():
    import onnx
    from onnx import numpy_helper

    from nncompress.quantize.runtime import OnnxRuntimeModule, derived_bias_scales

    task = make_task(SMALL_MODELS["mlp"], n_train=128)
    q, _ = _quantize(StaticInt8Quantize(calibration_batches=1), init_model("mlp"), task)
    assert isinstance(q, OnnxRuntimeModule)
    assert q.derived_scales  # every Gemm's bias scale is input scale x weight scale
    graph = onnx.ModelProto()
    graph.ParseFromString(zlib.decompress(q.graph.numpy().tobytes()))
    stored = {i.name for i in graph.graph.initializer} | set(q.initializer_names)
    assert not stored & set(q.derived_scales), "derived scales must not be stored"
    full = q.model_proto()
    arrays = {i.name: numpy_helper.to_array(i) for i in full.graph.initializer}
    assert set(derived_bias_scales(full.graph, arrays)) == set(q.derived_scales)
    for name, (_, weight_scale) in q.derived_scales.items():
        assert arrays[name].dtype == arrays[weight_scale].dtype and arrays[name].shape == arrays[weight_scale].shape
