"""Per-layer rows carry each layer's storage format and bits, quantized layers included."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

from nncompress.measure.report import Report
from nncompress.measure.size import layer_stats
from nncompress.measure.table import format_label, layer_table
from nncompress.quantize.layers import binary_module, codebook_module, half_module, quantize_weight_module
from nncompress.quantize.primitives import QuantSpec


def _rows(model: nn.Module) -> dict[str, dict]:
    return {row["name"]: row for row in layer_stats(model)}


def _report(layers: list[dict]) -> Report:
    return Report(
        task="t",
        metric={"name": "accuracy", "value": 0.5},
        params=0,
        nonzero_params=0,
        size_bytes=0,
        dense_fp32_bytes=0,
        macs=0,
        latency_ms=None,
        layers=layers,
    )


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[1].weight[0].zero_()  # 12 of 96 weights: the int8 codes keep them zero
    return model


def test_quantized_and_float_linear_rows_give_format_and_bits():
    source = nn.Linear(16, 8)
    with torch.no_grad():  # +-1 weights (none rounds to code 0), two rows zero: 32 of 128
        source.weight.copy_(torch.randn(8, 16).sign())
        source.weight[:2].zero_()
    model = nn.Sequential(
        quantize_weight_module(source, QuantSpec(bits=4, granularity="channel")), nn.ReLU(), nn.Linear(8, 4)
    )
    rows = _rows(model)
    assert list(rows) == ["0", "2"]
    q, f = rows["0"], rows["2"]
    assert q["type"] == "QuantizedLinear" and q["shape"] == [8, 16]
    assert (q["format"], q["bits"], q["granularity"], q["group_size"]) == ("int-symmetric", 4, "channel", None)
    assert q["params"] == 8 * 16 + 8
    assert q["nonzero_params"] == 6 * 16 + int(source.bias.count_nonzero())
    assert q["weight_sparsity"] == pytest.approx(32 / 128)
    assert (f["type"], f["format"], f["bits"], f["granularity"], f["params"]) == ("Linear", "float32", 32, None, 36)


def test_group_affine_and_half_precision_rows():
    model = nn.Sequential(
        quantize_weight_module(nn.Linear(16, 4), QuantSpec(bits=3, symmetric=False, granularity="group", group_size=8)),
        half_module(nn.Conv2d(2, 4, 3)),
        nn.Linear(4, 4).to(torch.bfloat16),
        nn.Linear(4, 4).half(),
    )
    rows = _rows(model)
    assert (rows["0"]["format"], rows["0"]["bits"], rows["0"]["group_size"]) == ("uint-affine", 3, 8)
    assert (rows["1"]["type"], rows["1"]["shape"], rows["1"]["format"], rows["1"]["bits"]) == (
        "HalfConv2d",
        [4, 2, 3, 3],
        "float16",
        16,
    )
    assert (rows["2"]["format"], rows["2"]["bits"]) == ("bfloat16", 16)
    assert (rows["3"]["format"], rows["3"]["bits"]) == ("float16", 16)


def test_codebook_and_binary_rows():
    codes = torch.arange(4 * 2 * 3 * 3).remainder(4).to(torch.uint8).reshape(4, 2, 3, 3)  # 18 of 72 are code 0
    conv = codebook_module(nn.Conv2d(2, 4, 3, bias=False), torch.tensor([0.0, -0.5, 0.5, 1.0]), codes, 2)
    rows = _rows(nn.Sequential(conv, binary_module(nn.Linear(8, 4))))
    cb, bn = rows["0"], rows["1"]
    assert (cb["type"], cb["shape"], cb["format"], cb["bits"]) == ("CodebookConv2d", [4, 2, 3, 3], "codebook", 2)
    assert (cb["params"], cb["nonzero_params"]) == (72, 54)
    assert cb["weight_sparsity"] == pytest.approx(18 / 72)
    assert (bn["type"], bn["shape"], bn["params"]) == ("BinaryLinear", [4, 8], 36)
    assert (bn["format"], bn["bits"]) == ("binary", 1)


@pytest.mark.parametrize("per_channel", [False, True])
def test_torch_dynamic_int8_linear_rows(per_channel):
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        model = quantize_dynamic(_mlp(), {nn.Linear: qconfig}, dtype=torch.qint8)
    rows = _rows(model)
    assert list(rows) == ["1", "3"]  # one row per Linear, none for its inner _packed_params
    first = rows["1"]
    assert (first["shape"], first["params"], first["format"], first["bits"]) == ([8, 12], 8 * 12 + 8, "int8", 8)
    assert first["granularity"] == ("channel" if per_channel else "tensor")
    assert first["weight_sparsity"] == pytest.approx(12 / 96)
    assert rows["3"]["shape"] == [3, 8] and rows["3"]["format"] == "int8"


def test_onnxruntime_int8_module_lists_its_gemm_layers():
    pytest.importorskip("onnxruntime")
    from nncompress.quantize.int8 import onnxruntime_static_int8

    model = _mlp()
    module, _ = onnxruntime_static_int8(model, [(torch.randn(8, 3, 4),)])
    rows = _rows(nn.ModuleDict({"net": module}))  # names are prefixed with the module's path
    assert list(rows) == ["net.1", "net.3"]
    first, last = rows["net.1"], rows["net.3"]
    assert (first["type"], first["shape"], first["params"]) == ("Gemm", [8, 12], 8 * 12 + 8)
    assert (first["format"], first["bits"], first["granularity"]) == ("int8", 8, "channel")
    assert first["weight_sparsity"] == pytest.approx(12 / 96)
    assert (last["type"], last["shape"], last["params"]) == ("Gemm", [3, 8], 27)
    assert (last["format"], last["bits"]) == ("int8", 8)


def test_onnxruntime_layer_left_in_float_is_float32():
    pytest.importorskip("onnxruntime")
    from nncompress.quantize.int8 import onnxruntime_static_int8

    module, _ = onnxruntime_static_int8(_mlp(), [(torch.randn(8, 3, 4),)], exclude=("3",), per_channel=False)
    rows = _rows(module)
    assert (rows["1"]["format"], rows["1"]["granularity"]) == ("int8", "tensor")
    assert rows["1"]["weight_sparsity"] == pytest.approx(12 / 96)  # codes equal to the (scalar) zero point
    fp32 = rows["3"]
    assert (fp32["type"], fp32["shape"], fp32["params"]) == ("Gemm", [3, 8], 27)
    assert (fp32["format"], fp32["bits"]) == ("float32", 32)


class _SelfReporting(nn.Module):
    """A module that reports its own layers (the ``layer_rows`` protocol) and holds a float child."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def layer_rows(self) -> list[dict]:
        return [
            {
                "name": "fc",
                "type": "Gemm",
                "shape": [4, 4],
                "params": 20,
                "nonzero_params": 20,
                "weight_sparsity": 0.0,
                "format": "int8",
                "bits": 8,
            }
        ]


def test_layer_rows_protocol_stands_for_the_whole_module():
    rows = layer_stats(nn.Sequential(nn.Linear(4, 4), _SelfReporting()))
    assert [r["name"] for r in rows] == ["0", "1.fc"]  # the float child "1.inner" is not listed apart
    assert rows[1]["format"] == "int8" and rows[1]["granularity"] is None and "group_size" in rows[1]


def test_onnx_matmul_rows_use_torch_layout_and_the_following_bias():
    onnx = pytest.importorskip("onnx")
    from nncompress.quantize.onnx_layers import onnx_layer_rows

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(nn.Linear(4, 3).eval(), (torch.randn(2, 5, 4),), buffer, dynamo=False)  # MatMul + Add
    rows = onnx_layer_rows(onnx.load_from_string(buffer.getvalue()))
    assert [(r["type"], r["shape"], r["params"], r["format"]) for r in rows] == [("MatMul", [3, 4], 15, "float32")]


def test_layer_table_shows_final_formats_and_bits():
    source = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(4, 2))
    codes = torch.zeros(8, 8, dtype=torch.uint8)
    final = nn.Sequential(
        quantize_weight_module(source[0], QuantSpec(bits=4, granularity="group", group_size=8)),
        codebook_module(source[1], torch.tensor([0.5]), codes, 5),
        binary_module(source[2]),
        source[3],
    )
    table = layer_table(_report(layer_stats(source)), _report(layer_stats(final)))
    header, _, *lines = table.splitlines()
    assert header.split()[5:9] == ["->", "shape", "format", "bits"]
    by_name = {line.split()[0]: line.split() for line in lines}
    assert by_name["0"][1:3] == ["QuantizedLinear", "8x16"]  # baseline shape kept beside the final format
    assert by_name["0"][6:8] == ["int4/g8", "4"]
    assert by_name["1"][6:9] == ["codebook", "5b", "5"]
    assert by_name["2"][6:9] == ["binary", "1b", "1"]
    assert by_name["3"][6:8] == ["float32", "32"]


def test_format_labels_of_int8_and_legacy_rows():
    assert format_label({"format": "int8", "bits": 8, "granularity": "channel"}) == "int8/ch"
    assert format_label({"format": "int8", "bits": 8, "granularity": "tensor"}) == "int8/tensor"
    assert format_label({"format": "uint-affine", "bits": 3, "granularity": "channel"}) == "uint3/ch"
    assert format_label({"format": "float16", "bits": 16, "granularity": "tensor"}) == "float16"
    assert format_label({"name": "fc1", "weight_sparsity": 0.0}) == "-"  # a report.json written before formats
    row = {"name": "fc1", "type": "Linear", "shape": [2, 2], "params": 4, "nonzero_params": 4, "weight_sparsity": 0.0}
    assert layer_table(_report([row]), _report([row])).splitlines()[2].split()[6:8] == ["-", "-"]
