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
