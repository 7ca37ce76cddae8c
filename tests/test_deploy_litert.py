"""`--to litert`: a plain and an int8-static tiny model converted by litert-torch and run in LiteRT's
Interpreter to our outputs (skipped without the litert extra, ~1 GiB)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nncompress.deploy import get_target

pytest.importorskip("litert_torch", reason="the litert extra is not installed: pip install 'nncompress[litert]'")
pytest.importorskip("ai_edge_litert", reason="the litert extra is not installed (ai-edge-litert)")

pytestmark = pytest.mark.filterwarnings("ignore")


def test_litert_runs_a_plain_and_an_int8_model_to_our_outputs(tmp_path) -> None:
    from nncompress.quantize.int8 import onnxruntime_static_int8

    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 3)).eval()
    int8, _ = onnxruntime_static_int8(base, [(torch.randn(8, 4, 6, 6),) for _ in range(2)])
    x = torch.randn(3, 4, 6, 6)
    target = get_target("litert")
    plain = target.export(base, tmp_path / "fp32.tflite", x)
    quantized = target.export(int8, tmp_path / "int8.tflite", x)
    with torch.no_grad():
        assert torch.allclose(plain.runner(x), base(x), atol=1e-4)
        step = float((base(x) - int8(x)).abs().max())
        assert float((quantized.runner(x) - int8(x)).abs().max()) <= step + 1e-6
    assert quantized.bytes < 0.5 * plain.bytes
