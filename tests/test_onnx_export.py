"""ONNX export: every kind of model nncompress makes runs in ONNX Runtime and matches PyTorch.

Tolerances come from float32 arithmetic: ONNX Runtime and PyTorch sum the same products in
different orders, so a dot product of K terms may differ by about K * eps * sum|x_i w_i|
(eps = 2^-23, a worst case; typical errors are ~sqrt(K) times smaller). Packed layers decode to
exactly the same float weights on both sides, so the same bound holds for them.
"""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import pytest
import torch
from conftest import init_model, make_task
from test_tasks import TASK_FILE
from torch import nn
from torch.nn import functional as F

import nncompress as nc
from nncompress.cli.main import main
from nncompress.core.step import StepContext
from nncompress.io.onnx_export import export_onnx
from nncompress.measure.onnx_latency import OrtModule, onnx_latency
from nncompress.quantize.layers import binary_module, codebook_module, half_module, quantize_weight_module
from nncompress.quantize.primitives import QuantSpec

EPS = float(torch.finfo(torch.float32).eps)


def _net_tol(result) -> float:
    """Whole-network bound: a few hundred ulps of the largest output (layers of <= ~800 inputs,
    errors ~sqrt(K) ulps each, amplified by the following layers)."""
    return 512 * EPS * max(1.0, result.max_abs_output)


def _linear_tol(x: torch.Tensor, weight: torch.Tensor) -> float:
    """K * eps * max sum |x_i w_i|: the worst case of reordering one layer's float32 sums."""
    k = weight.shape[1]
    return 2 * k * EPS * float((x.abs().reshape(-1, k) @ weight.abs().t()).max())


def _ops(path) -> list[tuple[str, str]]:
    return [(n.domain, n.op_type) for n in onnx.load(str(path)).graph.node]


def _apply(step, model, task):
    return step.apply(model, StepContext(task=task))


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet"])
def test_plain_models_match_pytorch_at_any_batch(name, tmp_path):
    model, x = init_model(name), torch.randn(4, 1, 28, 28)
    result = export_onnx(model, tmp_path / "m.onnx", x)
    assert result.max_abs_error <= _net_tol(result), result
    assert set(result.layers.values()) == {"fp32"} and result.opset == 17
    assert result.bytes == (tmp_path / "m.onnx").stat().st_size
    session = OrtModule(tmp_path / "m.onnx", threads=1)  # the batch axis is dynamic
    y = torch.randn(7, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(session(y), model(y), rtol=0, atol=_net_tol(result))


def test_structurally_pruned_model_exports_smaller(tmp_path):
    task = make_task(lambda: init_model("resnet"), n_train=64)
    model = init_model("resnet")
    pruned = _apply(nc.ChannelPrune(sparsity=0.5), init_model("resnet"), task)
    assert sum(p.numel() for p in pruned.parameters()) < 0.7 * sum(p.numel() for p in model.parameters())
    x = task.inputs_example()[:4]
    full, small = export_onnx(model, tmp_path / "a.onnx", x), export_onnx(pruned, tmp_path / "b.onnx", x)
    assert small.bytes < 0.7 * full.bytes
    assert small.max_abs_error <= _net_tol(small)


def test_low_rank_factorized_model_exports_its_factors(tmp_path):
    from nncompress.lowrank.layers import factorized_linear

    factorized, x = init_model("mlp"), torch.randn(4, 1, 28, 28)
    for name in ("fc1", "fc2"):  # what svd-factorize leaves: Sequential(Linear(in, r), Linear(r, out))
        out_features, in_features = getattr(factorized, name).weight.shape
        left, right = torch.randn(out_features, 24) / 5, torch.randn(24, in_features) / 28  # any rank-24 factors
        setattr(factorized, name, factorized_linear(getattr(factorized, name), left, right))
    result = export_onnx(factorized, tmp_path / "f.onnx", x)
    assert {"fc1.0", "fc1.1", "fc2.0", "fc2.1"} <= set(result.layers), result.layers
    assert result.max_abs_error <= _net_tol(result)
    dense = export_onnx(init_model("mlp"), tmp_path / "d.onnx", x)
    assert result.bytes < 0.15 * dense.bytes  # 24 * (784 + 300) + 24 * (300 + 100) + 1010 of 266,610 weights


def test_int8_static_graph_is_written_as_is(tmp_path):
    task = make_task(lambda: init_model("lenet5"), n_train=128)
    q = _apply(nc.StaticInt8Quantize(calibration_batches=2, backend="onnxruntime"), init_model("lenet5"), task)
    x = task.inputs_example()[:8]
    result = export_onnx(q, tmp_path / "q.onnx", x)
    assert result.max_abs_error <= 1e-6 * max(1.0, result.max_abs_output)  # the same graph, integer kernels
    assert result.layers["conv2"] == "int8 Conv, per channel", result.layers
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)
    assert ("", "DequantizeLinear") in _ops(tmp_path / "q.onnx")


def test_int8_dynamic_graph_is_written_as_is(tmp_path):
    q = _apply(nc.DynamicInt8Quantize(), init_model("mlp"), make_task(n_train=64))  # onnxruntime backend
    result = export_onnx(q, tmp_path / "q.onnx", torch.randn(4, 1, 28, 28))
    assert result.max_abs_error <= 1e-6 * max(1.0, result.max_abs_output)
    assert result.layers["fc1"] == "int8 MatMulInteger, per channel", result.layers


@pytest.mark.parametrize(
    ("spec", "zero_dtype", "block"),
    [
        (QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32), None, 32),
        (QuantSpec(bits=4, symmetric=True, granularity="channel"), None, None),
        (QuantSpec(bits=4, symmetric=False, granularity="group", group_size=16), torch.float16, 16),  # HQQ zeros
        (QuantSpec(bits=2, symmetric=False, granularity="group", group_size=64), None, 64),
        (QuantSpec(bits=8, symmetric=False, granularity="group", group_size=16), None, 16),
    ],
)
def test_packed_linear_becomes_matmulnbits(spec, zero_dtype, block, tmp_path):
    torch.manual_seed(0)
    layer = nn.Linear(96 if spec.granularity == "channel" else 128, 24)
    kwargs = {}
    if zero_dtype is not None:  # fractional zero points, as HQQ leaves them
        from nncompress.quantize.primitives import compute_qparams

        scale, zero = compute_qparams(layer.weight, spec)
        kwargs = {"scale": scale, "zero_point": zero.float() + 0.37, "zero_dtype": zero_dtype}
    packed = quantize_weight_module(layer, spec, **kwargs).eval()
    x = torch.randn(3, 5, layer.in_features)  # (B, T, K): MatMulNBits takes any leading axes
    result = export_onnx(packed, tmp_path / "q.onnx", x)
    assert result.layers[""].startswith(f"MatMulNBits {spec.bits}-bit"), result.layers
    node = next(n for n in onnx.load(str(tmp_path / "q.onnx")).graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: a.i for a in node.attribute}
    assert node.domain == "com.microsoft" and attrs["K"] == layer.in_features and attrs["N"] == 24
    assert attrs["bits"] == spec.bits and (block is None or attrs["block_size"] == block)
    session = OrtModule(tmp_path / "q.onnx", threads=1)
    with torch.no_grad():
        weight = packed.dequantized_weight()
        expected = F.linear(x, weight, packed.bias)
        torch.testing.assert_close(session(x), expected, rtol=0, atol=_linear_tol(x, weight))
        # a different decode would be off by about a quantization step, far above the tolerance
        assert _linear_tol(x, weight) < 0.05 * float((layer(x) - expected).abs().max())


def test_packed_file_is_smaller_than_fp32(tmp_path):
    layer = nn.Linear(512, 256)
    x = torch.randn(2, 512)
    fp32 = export_onnx(layer, tmp_path / "a.onnx", x)
    q4 = quantize_weight_module(layer, QuantSpec(4, False, "group", group_size=128))
    q4 = export_onnx(q4, tmp_path / "b.onnx", x)
    # 4-bit codes + one fp32 scale and a 4-bit zero point per 128 weights: ~0.13 of fp32
    assert q4.bytes < 0.16 * fp32.bytes, (q4.bytes, fp32.bytes)


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding="same"),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 14 * 14, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    ).eval()


@pytest.mark.parametrize(
    ("make", "label", "op"),
    [
        (
            lambda m: quantize_weight_module(m, QuantSpec(8, True, "channel")),
            "QDQ 8-bit codes in int8, per channel",
            "DequantizeLinear",
        ),
        (
            lambda m: quantize_weight_module(m, QuantSpec(3, False, "group", group_size=8)),
            "QDQ 3-bit codes in uint8, per group 8",
            "DequantizeLinear",
        ),
        (
            lambda m: codebook_module(m, torch.linspace(-0.2, 0.2, 8), torch.randint(0, 8, m.weight.shape), 3),
            "codebook 3-bit (Gather of 8 centroids)",
            "Gather",
        ),
        (binary_module, "QDQ binary (+-1 in int8, scale per channel)", "DequantizeLinear"),
        (half_module, "fp16 (Cast)", "Cast"),
    ],
)
def test_other_packed_formats_run_in_onnxruntime(make, label, op, tmp_path):
    model = _cnn()
    model[2], model[5] = make(model[2]), make(model[5])
    x = torch.randn(4, 1, 28, 28)
    result = export_onnx(model, tmp_path / "m.onnx", x)
    assert result.layers["2"] == label and result.layers["5"] == label and result.layers["0"] == "fp32"
    assert ("", op) in _ops(tmp_path / "m.onnx")
    assert result.max_abs_error <= _net_tol(result), result


def test_unstructured_sparse_model_is_written_dense_and_says_so(tmp_path):
    model = init_model("mlp")
    with torch.no_grad():
        model.fc1.weight[torch.rand_like(model.fc1.weight) < 0.9] = 0
    result = export_onnx(model, tmp_path / "s.onnx", torch.randn(2, 1, 28, 28))
    assert result.layers["fc1"].startswith("fp32 dense (90% zeros") and result.layers["fc2"] == "fp32"
    assert any("written dense" in n and "fc1" in n for n in result.notes)


def test_bad_inputs_give_clear_errors(tmp_path):
    model, x = init_model("mlp"), torch.randn(2, 1, 28, 28)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(model, path, x)
    assert path.read_bytes() == b"keep"
    assert export_onnx(model, path, x, overwrite=True).bytes > 4
    with pytest.raises(ValueError, match=r"opset must be an integer in \[13, 20\].*got 9"):
        export_onnx(model, tmp_path / "o.onnx", x, opset=9)
    with pytest.raises(ValueError, match="a tensor, a tuple of tensors or a dict of keyword tensors, got str"):
        export_onnx(model, tmp_path / "o.onnx", "x")
    with pytest.raises(ValueError, match="a dict with no tensor values"):
        export_onnx(model, tmp_path / "o.onnx", {"x": 1})
    dynamic = _apply(nc.DynamicInt8Quantize(backend="torch"), init_model("mlp"), make_task(n_train=64))
    with pytest.raises(ValueError, match=r"'fc1' is a torch.ao Linear .*int8-dynamic.*accepted: plain PyTorch"):
        export_onnx(dynamic, tmp_path / "o.onnx", x)
    assert not (tmp_path / "o.onnx").exists()


def test_nested_runtime_module_is_refused(tmp_path):
    task = make_task(lambda: init_model("mlp"), n_train=64)
    q = _apply(nc.StaticInt8Quantize(calibration_batches=1, backend="onnxruntime"), init_model("mlp"), task)
    with pytest.raises(ValueError, match="'0' is an OnnxRuntimeModule inside a larger model"):
        export_onnx(nn.Sequential(q, nn.ReLU()), tmp_path / "o.onnx", task.inputs_example()[:2])


def test_onnx_latency_times_onnx_beside_pytorch(tmp_path):
    model, x = init_model("mlp"), torch.randn(1, 1, 28, 28)
    export_onnx(model, tmp_path / "m.onnx", x)
    stats = onnx_latency(
        tmp_path / "m.onnx",
        x,
        batch_sizes=(1, 4),
        others={"torch": model},
        rounds=1,
        runs=2,
        min_seconds=0.0,
        threads=1,
    )
    assert set(stats) == {"onnx", "torch"} and set(stats["onnx"]) == {1, 4}
    assert stats["onnx"][4].batch_size == 4 and stats["onnx"][4].median_ms > 0 and stats["torch"][1].runs >= 2
    with pytest.raises(ValueError, match="batch_sizes must be positive integers"):
        onnx_latency(tmp_path / "m.onnx", x, batch_sizes=(0,))
    with pytest.raises(ValueError, match="threads must be an integer >= 0"):
        OrtModule(tmp_path / "m.onnx", threads=-1)


def test_cli_export_writes_once_and_reports(tmp_path, capsys):
    task_file = tmp_path / "mytask.py"
    task_file.write_text(textwrap.dedent(TASK_FILE))
    task = nc.tasks.get(f"{task_file}:make")
    model = task.baseline()
    model.fc = quantize_weight_module(model.fc, QuantSpec(4, True, "channel"))
    artifact = nc.save(model, tmp_path / "m.ncz")
    out = tmp_path / "m.onnx"
    argv = ["export", str(artifact), "--task", f"{task_file}:make", "--out", str(out)]
    assert main([*argv, "--json"]) == 0
    printed = capsys.readouterr().out
    import json

    result = json.loads(printed)
    assert result["bytes"] == out.stat().st_size and result["layers"]["fc"].startswith("MatMulNBits 4-bit")
    assert result["max_abs_error"] < 1e-5
    before = out.read_bytes()
    assert main(argv) == 2  # never overwrites without --overwrite
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--overwrite" in err[0]
    assert out.read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0
    assert "max |ONNX Runtime - PyTorch|" in capsys.readouterr().out
    assert (
        main(["export", str(tmp_path / "none.ncz"), "--task", f"{task_file}:make", "--out", str(tmp_path / "x.onnx")])
        == 2
    )
    assert not (tmp_path / "x.onnx").exists()
    assert np.isfinite(result["max_abs_output"])
