"""`--to executorch`: int8-static replays as PT2E int8 lowered to XNNPACK with our scales, packed
weight-only layers go dequantized (named), checked on tiny models (skipped without the extra)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_task
from torch import nn

from nncompress.deploy import CheckConfig, deploy
from nncompress.quantize.int8 import onnxruntime_static_int8
from nncompress.quantize.layers import quantize_weight_module
from nncompress.quantize.primitives import QuantSpec

pytest.importorskip("executorch", reason="the executorch extra is not installed: pip install 'nncompress[executorch]'")

pytestmark = pytest.mark.filterwarnings("ignore")  # torch.export / ExecuTorch deprecation notices


def test_executorch_int8_static_delegates_to_xnnpack_with_our_scales(tmp_path) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(
        nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 64), nn.ReLU(), nn.Linear(64, 3)
    ).eval()
    int8, _ = onnxruntime_static_int8(base, [(torch.randn(8, 4, 6, 6),) for _ in range(2)])
    task = tiny_task(base, (4, 6, 6), batches=2)
    config = CheckConfig(fp32=False, batch_large=0)
    result = deploy(int8, "executorch", tmp_path / "m.pte", task, config=config)
    assert not [n for n in result.notes if "outside XNNPACK" in n]  # every conv / linear delegated
    with torch.no_grad():
        step = float((base(task.inputs_example()) - int8(task.inputs_example())).abs().max())
    assert result.max_abs_error <= 0.5 * step + 1e-6  # same integers: far inside the int8 error of ours
    assert result.metric["export"] == pytest.approx(result.metric["ours"], abs=1 / 32)
    assert result.bytes < 0.5 * sum(p.numel() * 4 for p in base.parameters())  # int8 weights in the .pte


def test_executorch_dequantizes_packed_layers_and_names_them(tmp_path) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    model = nn.Sequential(quantize_weight_module(base[0], QuantSpec(bits=4, granularity="channel")), nn.ReLU(), base[2])
    result = deploy(
        model.eval(),
        "executorch",
        tmp_path / "m.pte",
        tiny_task(base, (64,), batches=2),
        config=CheckConfig(fp32=False, batch_large=4, runs=2, rounds=1),
    )
    assert result.layers["0"] == "fp32 (dequantized)" and any(
        n.startswith("0: executorch has no") for n in result.notes
    )
    assert result.max_abs_error < 1e-4 * max(1.0, result.max_abs_output)
    assert set(result.latency_ms) == {"batch_1", "batch_4"}


def test_executorch_int8_mlp_lowers_like_xnnpack_quantizer(tmp_path) -> None:
    """Our int8 graph quantizes the same tensors as ExecuTorch's own XNNPACKQuantizer (input, each hidden
    layer, logits) and XNNPACK takes all of it in one partition, beside the same Flatten view."""
    pytest.importorskip("torchao.quantization.pt2e", reason="torchao's PT2E quantizer is not installed")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from nncompress.deploy.executorch import ExecuTorchModule, delegated_ops, lower_to_edge
    from nncompress.deploy.prepare import torch_graph

    torch.manual_seed(0)
    base = nn.Sequential(
        nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)
    ).eval()
    calibration = [torch.randn(8, 1, 6, 6) for _ in range(2)]
    int8, _ = onnxruntime_static_int8(base, [(x,) for x in calibration])
    ours, notes = lower_to_edge(torch_graph(int8, "executorch")[0], (calibration[0],), max_batch=8)
    batch = torch.export.Dim("batch", min=1, max=16)
    graph = torch.export.export(base, (calibration[0][:2],), dynamic_shapes=({0: batch},), strict=False).module()
    prepared = prepare_pt2e(
        graph, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    )
    for x in calibration:
        prepared(x)
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)
    peer, _ = lower_to_edge(converted, (calibration[0],), max_batch=8)
    (our_parts, our_inside, our_outside), (peer_parts, peer_inside, peer_outside) = map(delegated_ops, (ours, peer))
    assert our_parts == peer_parts == 1 and not notes
    assert our_outside == peer_outside  # the Flatten's view (dynamic batch) only, in both
    # XNNPACK fuses the peer's ReLU into its FC's output clamp; ours holds it in the int8 range (zero point -128)
    assert our_inside == {k: n for k, n in peer_inside.items() if k != "aten_relu_default"}
    assert our_inside["quantized_decomposed_quantize_per_tensor_default"] == 4  # input, 2 hidden, logits: as peer
    path = tmp_path / "m.pte"
    path.write_bytes(ours.to_executorch().buffer)
    x = torch.randn(5, 1, 6, 6)
    with torch.no_grad():
        error = float((ExecuTorchModule(path, max_batch=8)(x) - int8(x)).abs().max())
        step = float((base(x) - int8(x)).abs().max())
    assert error <= 0.5 * step + 1e-6
