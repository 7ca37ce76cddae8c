"""`--to openvino`: int8-static runs as OpenVINO int8 kernels with our scales, 4-bit packed Linears
as u4 weight constants, checked on a tiny model (skipped without the openvino extra)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_task
from torch import nn

from nncompress.deploy import CheckConfig, deploy
from nncompress.quantize.int8 import onnxruntime_static_int8
from nncompress.quantize.layers import quantize_weight_module
from nncompress.quantize.primitives import QuantSpec

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'nncompress[openvino]'")

pytestmark = pytest.mark.filterwarnings("ignore")  # OpenVINO's own deprecation notices


def test_openvino_keeps_u4_weights_of_packed_linears(tmp_path) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    model = nn.Sequential(
        quantize_weight_module(base[0], QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32)),
        nn.ReLU(),
        base[2],
    ).eval()
    result = deploy(
        model, "openvino", tmp_path / "m.xml", tiny_task(base, (128,), batches=2), config=CheckConfig(batch_large=0)
    )
    core = ov.Core()
    types = {
        op.get_element_type().get_type_name()
        for op in core.read_model(result.path).get_ordered_ops()
        if op.get_type_name() == "Constant"
    }
    assert "u4" in types and result.layers["0"].startswith("u4 compressed weights")
    assert result.bytes < result.fp32_bytes * 0.5  # 128x64 fp32 -> u4: the IR shrinks
    assert result.max_abs_error < 1e-4 * max(1.0, result.max_abs_output)
    assert result.metric["export"] == pytest.approx(result.metric["ours"])


def test_openvino_stores_per_channel_4bit_unpadded_with_one_scale_per_row(tmp_path) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(100, 48), nn.ReLU(), nn.Linear(48, 4)).eval()  # 100 inputs: 2 blocks of 64
    model = nn.Sequential(
        quantize_weight_module(base[0], QuantSpec(bits=4, symmetric=True, granularity="channel")), nn.ReLU(), base[2]
    ).eval()
    result = deploy(
        model, "openvino", tmp_path / "m.xml", tiny_task(base, (100,), batches=2), config=CheckConfig(batch_large=0)
    )
    shapes = [
        (op.get_element_type().get_type_name(), list(op.get_output_shape(0)))
        for op in ov.Core().read_model(result.path).get_ordered_ops()
        if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) >= 2
    ]
    assert ("u4", [48, 100]) in shapes and ("f32", [48, 1]) in shapes  # not [48, 2, 64] with [48, 2, 1] scales
    assert not [s for kind, s in shapes if len(s) == 3]
    assert result.max_abs_error < 1e-4 * max(1.0, result.max_abs_output)
    assert any("stored [out, in] with one scale per row" in n for n in result.notes)
    assert any("u4" in k or "u8" in k or "i8" in k for k in result_runner_precisions(result.path)), "not compressed"


def test_openvino_runs_int8_static_as_int8_kernels(tmp_path) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 3)).eval()
    int8, _ = onnxruntime_static_int8(base, [(torch.randn(8, 4, 6, 6),) for _ in range(2)])
    task = tiny_task(base, (4, 6, 6), batches=2)
    result = deploy(int8, "openvino", tmp_path / "m.xml", task, config=CheckConfig(batch_large=4, runs=2, rounds=1))
    kernels = result_runner_precisions(result.path)
    assert any(k.endswith(("u8", "i8")) for k in kernels), kernels  # int8, not fp32 with fake quantization
    with torch.no_grad():
        step = float((base(task.inputs_example()) - int8(task.inputs_example())).abs().max())
    assert result.max_abs_error <= step + 1e-6  # within the int8 quantization error of ours
    assert abs(result.metric["export"] - result.metric["ours"]) <= 0.1
    assert set(result.latency_ms["batch_4"]) == {"ours", "export", "fp32_export"}
    constants = [op for op in ov.Core().read_model(result.path).get_ordered_ops() if op.get_type_name() == "Constant"]
    # biases as fp32 (no int32 codes + scale), FakeQuantize bounds as shared scalars (no [1,1,1,1] copies)
    assert not [c for c in constants if c.get_element_type().get_type_name() == "i32"]
    bounds = [c for c in constants if list(c.get_output_shape(0)) in ([], [1], [1, 1], [1, 1, 1, 1])]
    assert all(list(c.get_output_shape(0)) == [] for c in bounds)
    assert len({c.get_data().item() for c in bounds}) == len(bounds)  # one node per distinct value
    assert any("int32 bias(es) stored as fp32" in n for n in result.notes)


def test_openvino_quantizes_the_input_like_nncf(tmp_path) -> None:
    """ONNX Runtime quantizes a signed input as uint8 with a zero point, after Flatten. The IR quantizes the
    un-flattened input (OpenVINO's FakeQuantize was ~7x slower on [batch, features]) to codes starting at 0,
    the zero point's share in the first Linear's bias (its zero-point matmul path was slower): same outputs."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    int8, _ = onnxruntime_static_int8(base, [(torch.randn(8, 1, 6, 6),) for _ in range(2)])
    task = tiny_task(base, (1, 6, 6), batches=2)
    result = deploy(int8, "openvino", tmp_path / "m.xml", task, config=CheckConfig(batch_large=0))
    ops = ov.Core().read_model(result.path).get_ordered_ops()
    quantizers = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    sources = [op.input(0).get_source_output().get_node().get_type_name() for op in quantizers]
    assert sources[0] == "Parameter" and "Reshape" not in sources, sources
    assert list(quantizers[0].get_output_partial_shape(0))[1:] == [1, 6, 6]
    flatten = next(op for op in ops if op.get_type_name() == "Reshape")
    assert flatten.input(0).get_source_output().get_node() is quantizers[0]
    in_low, out_low = (quantizers[0].input(i).get_source_output().get_node().get_data().item() for i in (1, 3))
    assert in_low < 0 and out_low == 0.0  # a signed input range, dequantized from code 0 up
    assert any("moved above a flattening Reshape" in n for n in result.notes)
    assert any("zero point folded into the layer's fp32 bias" in n for n in result.notes)
    from nncompress.deploy.openvino import OpenVinoModule

    runtime = OpenVinoModule(result.path).compiled.get_runtime_model().get_ordered_ops()
    info = [op.get_rt_info() for op in runtime]
    reshapes = [i["runtimePrecision"].astype(str) for i in info if i["layerType"].astype(str) == "Reshape"]
    assert reshapes and all(p in ("u8", "i8") for p in reshapes), reshapes
    assert result.max_abs_error <= 1e-5 * max(1.0, result.max_abs_output)  # the same integers as ours (ORT)
    assert result.metric["export"] == pytest.approx(result.metric["ours"])


def test_openvino_module_takes_each_batch_size_in_turn(tmp_path) -> None:
    """Inputs are bound per call (shared memory, no copy): a later, smaller batch gets its own outputs."""
    from nncompress.deploy.openvino import OpenVinoTarget

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    runner = OpenVinoTarget().export(model, tmp_path / "m.xml", torch.randn(4, 8)).runner
    with torch.no_grad():
        for n in (5, 1, 3):
            x = torch.randn(n, 8)
            assert torch.allclose(runner(x), model(x), atol=1e-5)


def result_runner_precisions(path: str) -> dict[str, int]:
    from nncompress.deploy.openvino import OpenVinoModule

    return OpenVinoModule(path).runtime_precisions()
