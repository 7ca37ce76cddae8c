"""The energy estimate follows the kernel that runs each layer, and slower compressed models are warned about."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from nncompress.measure.energy import PJ_PER_DRAM_BYTE, estimate_model_energy, layer_costs
from nncompress.measure.size import layer_stats
from nncompress.measure.table import run_tables
from nncompress.measure.warnings import speed_warnings

X = torch.randn(1, 64)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()


def test_dense_kernels_get_no_credit_for_zeros():
    dense, sparse = mlp(), mlp()
    with torch.no_grad():
        for layer in (sparse[0], sparse[2]):
            layer.weight[torch.rand_like(layer.weight) < 0.9] = 0.0  # 90% zeros, still run densely
    a, b = estimate_model_energy(dense, X), estimate_model_energy(sparse, X)
    assert b.total_uj == pytest.approx(a.total_uj)
    assert a.weight_bytes_read == 4 * sum(p.numel() for p in dense.parameters())
    assert a.macs_by_precision == {"fp32": 64 * 128 + 128 * 10}


def test_int8_dynamic_layers_count_int8_macs_and_bytes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        model = torch.ao.quantization.quantize_dynamic(mlp(), {nn.Linear}, dtype=torch.qint8)
    e, ref = estimate_model_energy(model, X, total_macs=64 * 128 + 128 * 10), estimate_model_energy(mlp(), X)
    assert e.precision == "int8"
    assert e.weight_bytes_read < ref.weight_bytes_read / 3
    assert e.total_uj < ref.total_uj / 3


def test_tied_weights_read_once_and_lookups_not_counted():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(100, 16)
            self.head = nn.Linear(16, 100, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids))

    ids = torch.randint(0, 100, (1, 5))
    e = estimate_model_energy(Tied(), ids)
    assert e.weight_bytes_read == 100 * 16 * 4  # the head's read; the embedding lookup is not counted
    assert e.memory_uj == pytest.approx(e.weight_bytes_read * PJ_PER_DRAM_BYTE / 1e6)


def test_macs_no_layer_owns_are_counted_at_float32():
    costs = layer_costs(mlp(), {"0": 64 * 128, "2": 1280}, total_macs=64 * 128 + 1280 + 500)
    assert sum(c.macs for c in costs) == 64 * 128 + 1280 + 500
    assert costs[-1].precision == "fp32" and costs[-1].weight_bytes == 0


def _report(batch1: float, batch64: float, layers: list[dict] | None = None) -> dict:
    lat = {
        "batch_1": {"median_ms": batch1, "batch_size": 1},
        "batch_64": {"median_ms": batch64, "batch_size": 64},
        "threads": 1,
    }
    return {"latency": lat, "layers": layers or []}


def test_speed_warnings_name_batch_ratio_and_reason():
    base = _report(1.0, 10.0)
    final = _report(1.25, 8.0, [{"format": "codebook", "weight_sparsity": 0.0}])
    (line,) = speed_warnings(base, final)  # slower at batch 1 only
    assert "batch 1" in line and "1.25 ms" in line and "0.80x" in line and "codebook" in line
    assert speed_warnings(base, _report(0.9, 9.0)) == []
    assert speed_warnings(base, {"latency": {}, "layers": []}) == []  # untimed: nothing to say
    sparse = _report(1.1, 11.0, [{"format": "float32", "weight_sparsity": 0.9}])
    assert len(speed_warnings(base, sparse)) == 2
    assert all("zeros are still multiplied" in w for w in speed_warnings(base, sparse))
    on_kernel = [{"format": "uint-affine", "kernel": "int8pack-bf16", "params": 235_200, "weight_sparsity": 0.0}]
    (line,) = speed_warnings(base, _report(1.1, 9.0, on_kernel))
    assert "int8pack-bf16" in line and "235,200 weights" in line and "decoded to float32" not in line


def test_packed_layers_name_the_kernel_that_runs_them():
    from nncompress.quantize.layers import quantize_weight_module
    from nncompress.quantize.primitives import QuantSpec
    from nncompress.runtime import kernel_choice

    small = quantize_weight_module(nn.Linear(64, 32), QuantSpec(bits=4, granularity="channel"))
    (row,) = layer_stats(small)
    choice = kernel_choice(small)
    assert row["kernel"] == (choice.name if choice is not None else None)
    assert layer_stats(nn.Linear(4, 3))[0].get("kernel") is None  # float layers: no such key


def test_cli_table_prints_the_warning(task):
    import nncompress as nc

    model = task.baseline()
    base = nc.measure(model, task, config=nc.MeasureConfig(latency=False))
    slow = nc.Report.from_dict({**base.to_dict(), "latency_ms": 2.0, "latency": _report(2.0, 20.0)["latency"]})
    fast = nc.Report.from_dict({**base.to_dict(), "latency_ms": 1.0, "latency": _report(1.0, 10.0)["latency"]})
    assert "warning: slower than its baseline at batch 1" in run_tables(fast, slow)
    assert "warning" not in run_tables(slow, fast)


def test_packed_layers_count_the_bits_their_kernel_reads():
    from nncompress.quantize.layers import quantize_weight_module
    from nncompress.quantize.primitives import QuantSpec
    from nncompress.runtime import kernel_choice, use_kernels

    torch.manual_seed(0)
    layer = quantize_weight_module(nn.Linear(256, 512), QuantSpec(bits=4, granularity="group", group_size=64))
    model = nn.Sequential(layer).eval()
    x = torch.randn(1, 256)
    with use_kernels(False):
        reference = estimate_model_energy(model, x)
    assert reference.weight_bytes_read == 4 * (256 * 512 + 512)  # decoded to a float32 cache: read as float32
    choice = kernel_choice(layer)
    if choice is None:
        pytest.skip("no low-bit kernel runs this layer on this CPU")
    fast = estimate_model_energy(model, x)
    assert fast.weight_bytes_read == 256 * 512 * choice.weight_bits // 8 + 4 * 512  # codes + float32 bias
    assert fast.total_uj < reference.total_uj


def test_report_json_carries_the_warnings(task):
    import nncompress as nc
    from nncompress.core.compress import CompressionReport

    base = nc.measure(task.baseline(), task, config=nc.MeasureConfig(latency=False))
    slow = nc.Report.from_dict({**base.to_dict(), "latency_ms": 2.0, "latency": _report(2.0, 20.0)["latency"]})
    fast = nc.Report.from_dict({**base.to_dict(), "latency_ms": 1.0, "latency": _report(1.0, 10.0)["latency"]})
    rep = CompressionReport(task.name, fast, slow, [], [], 0, {}, 0.0)
    assert len(rep.to_dict()["warnings"]) == 2 and rep.to_dict()["warnings"] == rep.warnings
    assert CompressionReport(task.name, slow, fast, [], [], 0, {}, 0.0).to_dict()["warnings"] == []


def test_slow_models_time_fewer_passes():
    import time as _time

    from nncompress.measure.latency import interleaved_latency

    class Slow(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _time.sleep(0.05)
            return x

    t0 = _time.perf_counter()
    (stats,) = interleaved_latency(
        [Slow()], torch.randn(1, 4), batch_size=1, rounds=2, warmup=5, runs=30, max_seconds=0.3
    )
    assert 2 <= stats.runs <= 2 * 3  # 0.15 s a round at 0.05 s a pass: up to three timed, the probe the only warm-up
    assert _time.perf_counter() - t0 < 1.0
