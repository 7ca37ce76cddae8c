"""Measurement figures against hand-computed values."""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.measure import (
    artifact_bytes,
    count_macs,
    count_nonzero,
    count_params,
    dense_fp32_bytes,
    estimate_energy,
    interleaved_latency,
    layer_stats,
    measure_latency,
)
from nncompress.measure.energy import PJ_PER_DRAM_BYTE, PJ_PER_MAC


def test_linear_macs_by_hand():
    # y = xW^T + b for x (1, 10), W (20, 10): 10 multiply-accumulates per output, 20 outputs.
    assert count_macs(nn.Linear(10, 20), torch.randn(1, 10)) == 200
    assert count_macs(nn.Linear(10, 20), torch.randn(3, 10)) == 600


def test_conv_macs_by_hand():
    # Each of 8 x 16 x 16 outputs sums 3 channels x 3 x 3 taps.
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.randn(1, 3, 16, 16)) == 8 * 16 * 16 * 3 * 9
    # stride 2, no padding: outputs (16 - 3) // 2 + 1 = 7 per side.
    conv = nn.Conv2d(3, 8, 3, stride=2)
    assert count_macs(conv, torch.randn(1, 3, 16, 16)) == 8 * 7 * 7 * 3 * 9
    # groups=4: each output sees only 8/4 = 2 input channels.
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=4)
    assert count_macs(conv, torch.randn(1, 8, 10, 10)) == 8 * 10 * 10 * 2 * 9


def test_lenet300_macs_equal_weight_count():
    from nncompress.models import LeNet300100

    model = LeNet300100()
    assert count_macs(model, torch.randn(1, 1, 28, 28)) == 784 * 300 + 300 * 100 + 100 * 10


def test_param_counts_and_bytes():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, bias=False))
    assert count_params(model) == 4 * 3 + 3 + 3 * 2
    assert dense_fp32_bytes(model) == 4 * count_params(model)
    with torch.no_grad():
        model[0].weight.zero_()
    assert count_nonzero(model) == count_params(model) - 12 - int((model[0].bias == 0).sum())


def test_tied_parameters_counted_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    assert count_params(model) == 40


def test_artifact_bytes_is_the_file_size(tmp_path):
    model = nn.Linear(100, 50)
    path = nc.save(model, tmp_path / "m.ncz")
    assert artifact_bytes(model) == os.path.getsize(path)
    # a dense fp32 layer's artifact holds about its raw bytes (DEFLATE may shave a few %), plus a small header
    assert 0.85 * 4 * 5050 <= os.path.getsize(path) < 4 * 5050 + 4096


def test_latency_stats_are_consistent():
    stats = measure_latency(nn.Linear(8, 8), torch.randn(1, 8), batch_size=1, warmup=1, runs=7)
    assert stats.runs >= 7
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.threads == torch.get_num_threads()
    with pytest.raises(ValueError, match="runs"):
        measure_latency(nn.Linear(8, 8), torch.randn(1, 8), batch_size=1, runs=0)


class Sleeps(nn.Module):
    """A forward that takes at least ``ms`` milliseconds."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms = ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.ms / 1e3)
        return x


def test_interleaved_latency_times_each_model_in_every_round():
    calls: list[str] = []
    fast, slow = nn.Identity(), Sleeps(3.0)
    fast.register_forward_hook(lambda *_: calls.append("fast"))
    slow.register_forward_hook(lambda *_: calls.append("slow"))
    stats = interleaved_latency([fast, slow], torch.randn(1, 8), batch_size=1, rounds=3, warmup=0, runs=6)
    assert [s.runs for s in stats] == [6, 6]  # 2 per round
    assert calls == ["fast", "fast", "slow", "slow"] * 3  # two passes each, alternating, three rounds
    assert stats[1].median_ms >= 3.0 > stats[0].median_ms
    with pytest.raises(ValueError, match="rounds"):
        interleaved_latency([fast], torch.randn(1, 8), batch_size=1, rounds=0)


def test_energy_estimate_from_table():
    e = estimate_energy(macs=1_000_000, weight_bytes=4_000)
    assert e.compute_uj == pytest.approx(1e6 * PJ_PER_MAC["fp32"] / 1e6)
    assert e.memory_uj == pytest.approx(4_000 * PJ_PER_DRAM_BYTE / 1e6)
    assert "estimate" in e.source
    assert estimate_energy(1_000_000, 0, "int8").total_uj < e.compute_uj
    with pytest.raises(ValueError, match="precision"):
        estimate_energy(1, 1, "fp8")


def test_measure_report_fields(task):
    model = task.baseline()
    report = nc.measure(model, task, config=nc.MeasureConfig(runs=3, min_seconds=0))
    d = report.to_dict()
    for key in (
        "metric",
        "params",
        "nonzero_params",
        "size_bytes",
        "dense_fp32_bytes",
        "macs",
        "latency_ms",
        "steps",
    ):
        assert key in d
    assert d["metric"]["name"] == "accuracy" and 0 <= d["metric"]["value"] <= 1
    assert d["macs"] == 784 * 300 + 300 * 100 + 100 * 4
    assert d["latency"]["batch_1"]["batch_size"] == 1
    assert d["latency"]["batch_64"]["batch_size"] == 64
    assert d["latency_ms"] == d["latency"]["batch_1"]["median_ms"]


def test_macs_by_module_matches_layers():
    from nncompress.measure.flops import macs_by_module
    from nncompress.models import LeNet300100

    per_layer = macs_by_module(LeNet300100(), torch.randn(1, 1, 28, 28))
    assert per_layer == {"fc1": 784 * 300, "fc2": 300 * 100, "fc3": 100 * 10}


def test_layer_stats_counts_each_layer_and_its_sparsity():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False), nn.LayerNorm(2))
    with torch.no_grad():
        model[0].weight[0].zero_()  # 4 of 12 weights
        model[0].bias.zero_()  # 3 more zeros, counted in non-zeros but not in weight sparsity
    rows = {row["name"]: row for row in layer_stats(model)}
    assert list(rows) == ["0", "2", "3"]
    assert rows["0"] == {
        "name": "0",
        "type": "Linear",
        "shape": [3, 4],
        "params": 15,
        "nonzero_params": 8,
        "weight_sparsity": pytest.approx(4 / 12),
        "format": "float32",
        "bits": 32,
        "granularity": None,
        "group_size": None,
    }
    assert rows["2"]["params"] == 6 and rows["2"]["weight_sparsity"] == 0.0
    assert rows["3"]["type"] == "LayerNorm" and rows["3"]["params"] == 4


def test_layer_stats_lists_tied_weights_once():
    emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    rows = layer_stats(nn.ModuleDict({"emb": emb, "head": head}))
    assert [row["name"] for row in rows] == ["emb"]


def test_latency_keeps_each_models_fastest_thread_count_and_restores_threads(task):
    threads = torch.get_num_threads()
    report = nc.measure(task.baseline(), task, config=nc.MeasureConfig(runs=3, min_seconds=0, thread_counts=(1,)))
    assert report.latency["threads"] == 1 and report.latency["thread_counts"] == [1]
    assert report.latency_ms == report.latency["batch_1"]["median_ms"] > 0
    assert report.latency["batch_64"]["batch_size"] == 64
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match=r"thread_counts must be integers >= 1, got \[0\]"):
        nc.MeasureConfig(thread_counts=(0,))
