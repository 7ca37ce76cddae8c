"""The export-target registry, the QDQ -> PT2E replay, report merging and the `export --to` CLI
(ONNX Runtime only: the other runtimes have their own test files, skipped when not installed)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_task
from torch import nn

import nncompress as nc
from nncompress.cli.main import main
from nncompress.deploy import CheckConfig, deploy, export_section, get_target, merge_into_report, target_names
from nncompress.deploy.prepare import torch_graph
from nncompress.deploy.qdq_torch import QdqGraphModule
from nncompress.quantize.int8 import onnxruntime_static_int8
from nncompress.quantize.layers import quantize_weight_module
from nncompress.quantize.primitives import QuantSpec


class TinyCNN(nn.Module):
    """conv-relu-conv + residual add, pool, linear: the op mix of fmnist-resnet, in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y) + y)
        return self.fc(y.mean(dim=(2, 3)))


def test_registry_names_every_target_and_refuses_unknown() -> None:
    assert target_names() == ("onnx", "openvino", "executorch", "litert", "gguf")
    with pytest.raises(ValueError, match="unknown export target 'tflite'; accepted: onnx, openvino"):
        get_target("tflite")


def test_qdq_replay_matches_onnxruntime_int8() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    calib = [(torch.randn(8, 4, 6, 6),) for _ in range(2)]
    int8, _ = onnxruntime_static_int8(model, calib)
    replay = QdqGraphModule(int8.model_proto()).eval()
    x = torch.randn(5, 4, 6, 6)
    assert replay.int8_weights == 3  # conv1, conv2, fc
    with torch.no_grad():
        ours, theirs, fp32 = int8(x), replay(x), model(x)
    step = float((fp32 - ours).abs().max())  # int8 error against fp32: the scale a replay slip would show at
    assert step > 0 and float((ours - theirs).abs().max()) <= 0.05 * step + 1e-6
    graph = torch.export.export(replay, (x,)).graph_module.code
    assert "quantize_per_tensor" in graph and "dequantize_per_channel" in graph


def test_qdq_replay_exports_only_the_constants_it_reads() -> None:
    torch.manual_seed(0)
    int8, _ = onnxruntime_static_int8(TinyCNN().eval(), [(torch.randn(8, 4, 6, 6),) for _ in range(2)])
    x = torch.randn(2, 4, 6, 6)
    for fold in (True, False):
        replay = QdqGraphModule(int8.model_proto(), fold_weights=fold).eval()
        program = torch.export.export(replay, (x,))
        dtypes = sorted(str(t.dtype) for t in program.constants.values())
        # per conv/fc: weight (int8 codes, or fp32 re-quantized in the graph), scales, zero points, fp32 bias;
        # no int32 bias codes, bias scales or bias zero points left unread beside them (they were 8 KB of .pte)
        assert "torch.int64" not in dtypes and "torch.int32" not in dtypes
        assert len(program.constants) == 3 * 4
        assert dtypes.count("torch.int8") == (6 if fold else 3)
        with torch.no_grad():
            assert torch.allclose(replay(x), int8(x), atol=1e-5)
    assert "quantize_per_channel" in torch.export.export(replay, (x,)).graph_module.code  # unfolded form


def test_dequantized_layer_exports_the_decoded_weight_alone() -> None:
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    model[0] = quantize_weight_module(model[0], QuantSpec(bits=4, symmetric=True, granularity="channel"))
    graph, _, _ = torch_graph(model, "executorch")
    program = torch.export.export(graph, (torch.randn(2, 64),))
    shapes = sorted(tuple(v.shape) for v in program.state_dict.values()) + sorted(
        tuple(v.shape) for v in program.constants.values()
    )
    assert shapes == [(4,), (4, 16), (16,), (16, 64)]  # no packed codes or scales beside the fp32 weight


def test_torch_graph_dequantizes_packed_layers_and_names_them() -> None:
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    model[0] = quantize_weight_module(model[0], QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32))
    graph, layers, notes = torch_graph(model, "executorch")
    x = torch.randn(3, 64)
    assert torch.allclose(graph(x), model(x), atol=1e-5)
    assert layers == {"0": "fp32 (dequantized)", "2": "fp32"}
    assert len(notes) == 1 and notes[0].startswith("0: executorch has no uint-affine 4-bit, group 32")


def test_deploy_onnx_checks_metric_error_and_latency(tmp_path) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    task = tiny_task(base, (32,))
    model = nn.Sequential(
        quantize_weight_module(base[0], QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32)),
        nn.ReLU(),
        base[2],
    ).eval()
    result = deploy(model, "onnx", tmp_path / "m.onnx", task, config=CheckConfig(batch_large=8, runs=3, rounds=1))
    assert result.bytes == (tmp_path / "m.onnx").stat().st_size and result.fp32_bytes > result.bytes
    assert result.layers["0"].startswith("MatMulNBits 4-bit")
    assert result.max_abs_error < 1e-4 * max(1.0, result.max_abs_output)
    assert result.metric["export"] == pytest.approx(result.metric["ours"]) and result.metric["fp32_export"] == 1.0
    assert set(result.latency_ms) == {"batch_1", "batch_8"}
    assert all(v > 0 for t in result.latency_ms.values() for v in t.values())


def test_merge_into_report_keeps_other_keys_and_renders(tmp_path) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"task": "tiny", "final": {"metric": 1}}))
    entry = {"target": "openvino", "bytes": 10, "metric": {"ours": 0.9, "export": 0.89}, "notes": ["fc: <u4>"]}
    merge_into_report(report, entry)
    merge_into_report(report, {**entry, "target": "onnx"})
    data = json.loads(report.read_text())
    assert data["final"] == {"metric": 1} and set(data["export"]) == {"openvino", "onnx"}
    html = export_section(data["export"])
    assert html.count("<tr>") == 3 and "&lt;u4&gt;" in html and export_section({}) == ""
    report.write_text("[1]")
    with pytest.raises(ValueError, match="not an object"):
        merge_into_report(report, entry)


def test_cli_export_to_onnx_checks_and_merges_report(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    task_file = tmp_path / "tinytask.py"
    task_file.write_text(
        "import torch\nfrom torch import nn\nimport nncompress as nc\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()\n"
        "    x = torch.randn(12, 8)\n"
        "    batches = [(x, model(x).argmax(1).detach())]\n"
        "    return nc.Task('tiny', train=batches, val=batches, test=batches, baseline=lambda: model)\n"
    )
    run = tmp_path / "run"
    run.mkdir()
    import importlib.util

    spec = importlib.util.spec_from_file_location("tinytask", task_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    nc.save(module.make().baseline(), run / "model.ncz")
    (run / "report.json").write_text(json.dumps({"task": "tiny"}))
    argv = ["export", str(run / "model.ncz"), "--task", f"{task_file}:make", "--out", str(run / "m.onnx")]
    assert main([*argv, "--check", "--batch-size", "4", "--no-fp32"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "ms @ batch 4" in out and "added export.onnx" in out
    assert json.loads((run / "report.json").read_text())["export"]["onnx"]["metric"]["export"] == 1.0
    assert main([*argv, "--to", "tflite"]) == 2  # argparse choices: one line
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("axis", [1, 2, 3, -1, 0])
def test_qdq_replay_flattens_to_two_dimensions_as_onnx_does(axis: int) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    node = helper.make_node("Flatten", ["x"], ["y"], axis=axis)
    graph = helper.make_graph(
        [node],
        "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(proto)
    x = torch.randn(2, 3, 4, 5)
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x.numpy()})[0]
    got = QdqGraphModule(proto)(x)
    assert got.dim() == 2 and tuple(got.shape) == expected.shape and torch.equal(got, torch.from_numpy(expected))
