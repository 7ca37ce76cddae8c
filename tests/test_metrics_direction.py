"""Metrics and their direction: perplexity against hand-computed values, the direction helpers, and
the call sites that compare metric values (tables, low-rank budget scoring, reports)."""

from __future__ import annotations

import math

import pytest
import torch

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.lowrank.budget import LowRankBudget
from nncompress.measure.report import MeasureConfig, Report, measure
from nncompress.measure.table import comparison_table
from nncompress.models import GPT, GPTConfig
from nncompress.tasks import metrics
from nncompress.tasks.batches import TensorBatches
from nncompress.tasks.metrics import (
    Metric,
    higher_is_better,
    improvement,
    is_better,
    meets,
    perplexity,
    resolve_metric,
    token_cross_entropy,
)


def test_uniform_logits_give_perplexity_equal_to_the_vocabulary():
    for vocab in (2, 256, 1000):
        logits = torch.randn(1).expand(3, 5, vocab)  # a constant row: uniform after softmax
        targets = torch.randint(0, vocab, (3, 5))
        assert perplexity(logits, targets) == pytest.approx(vocab, rel=1e-5)


def test_perplexity_matches_a_hand_computed_value():
    # p = (1/2, 1/4, 1/4); targets 0 and 1: mean CE = (ln 2 + ln 4) / 2, so perplexity = sqrt(8)
    logits = torch.tensor([[0.5, 0.25, 0.25]]).log().expand(2, 3).reshape(1, 2, 3)
    assert perplexity(logits, torch.tensor([[0, 1]])) == pytest.approx(math.sqrt(8), rel=1e-6)
    assert token_cross_entropy(logits, torch.tensor([[0, 1]])).item() == pytest.approx(math.log(8) / 2, rel=1e-6)


def test_perplexity_flattened_chunked_and_ignored_positions(monkeypatch):
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(4, 7, 11, generator=g), torch.randint(0, 11, (4, 7), generator=g)
    full = perplexity(logits, targets)
    assert full == pytest.approx(
        math.exp(torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)).item()), rel=1e-6
    )
    assert perplexity(logits.reshape(-1, 11), targets.reshape(-1)) == pytest.approx(full, rel=1e-12)
    monkeypatch.setattr(metrics, "_CE_CHUNK_ELEMENTS", 11 * 3)  # 3 rows per chunk
    assert perplexity(logits, targets) == pytest.approx(full, rel=1e-6)
    ignored = targets.clone()
    ignored[:, 3:] = -100
    assert perplexity(logits, ignored) == pytest.approx(perplexity(logits[:, :3], targets[:, :3]), rel=1e-6)


def test_perplexity_rejects_mismatched_shapes_and_empty_targets():
    with pytest.raises(ValueError, match="do not match targets"):
        perplexity(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="no target tokens"):
        perplexity(torch.zeros(1, 2, 5), torch.full((1, 2), -100))


def test_direction_of_named_metrics_and_callables():
    assert higher_is_better("accuracy") and higher_is_better("top5") and higher_is_better("cosine")
    assert not higher_is_better("perplexity")
    assert higher_is_better(lambda o, t: 0.0)  # the contract: callables are higher-is-better

    def bits_per_byte(o, t):
        return 1.0

    bits_per_byte.higher_is_better = False
    assert not higher_is_better(bits_per_byte)
    assert not higher_is_better(Metric("bpb", bits_per_byte, higher_is_better=False))
    with pytest.raises(ValueError, match="unknown metric 'bleu'.*perplexity"):
        higher_is_better("bleu")


def test_improvement_is_positive_when_better_in_either_direction():
    assert improvement(0.90, 0.92, "accuracy") == pytest.approx(0.02)
    assert improvement(10.0, 12.0, "perplexity") == pytest.approx(-2.0)
    assert is_better(9.0, 10.0, "perplexity") and not is_better(11.0, 10.0, "perplexity")
    assert is_better(0.9, 0.8, "accuracy")
    assert meets(5.0, 6.0, "perplexity") and not meets(6.5, 6.0, "perplexity")
    assert meets(0.9, 0.9, "accuracy") and not meets(0.89, 0.9, "accuracy")


def test_task_exposes_the_direction_and_accepts_a_metric_object():
    data = TensorBatches(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3, dtype=torch.long), batch_size=2)
    task = nc.Task("lm", data, data, data, baseline=lambda: None, metric="perplexity")
    assert task.metric_name == "perplexity" and not task.higher_is_better
    custom = Metric("bpb", lambda o, t: 1.0, higher_is_better=False)
    task = nc.Task("lm", data, data, data, baseline=lambda: None, metric=custom)
    assert task.metric_name == "bpb" and not task.higher_is_better
    assert resolve_metric("accuracy")[0] == "accuracy"
    assert nc.Task("c", data, data, data, baseline=lambda: None).higher_is_better


def _report(name: str, value: float, higher: bool | None) -> Report:
    metric = {"name": name, "value": value}
    if higher is not None:
        metric["higher_is_better"] = higher
    return Report(
        task="t",
        metric=metric,
        params=10,
        nonzero_params=10,
        size_bytes=40,
        dense_fp32_bytes=40,
        macs=10,
        latency_ms=None,
    )


def test_comparison_table_labels_a_perplexity_rise_as_worse():
    table = comparison_table([_report("perplexity", 4.0, False), _report("perplexity", 5.0, False)], ["a", "b"])
    assert "+25.00% (worse)" in table
    # reports written before the direction was recorded: looked up by name
    table = comparison_table([_report("perplexity", 4.0, None), _report("perplexity", 3.0, None)], ["a", "b"])
    assert "-25.00% (better)" in table
    table = comparison_table([_report("accuracy", 0.90, True), _report("accuracy", 0.88, True)], ["a", "b"])
    assert "-2.00 pts" in table


def _tiny_lm_task() -> nc.Task:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (8, 9), generator=g)
    data = TensorBatches(tokens[:, :-1], tokens[:, 1:], batch_size=4)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, context=8, dim=16, depth=1, num_heads=2, mlp_hidden=32)).eval()
    return nc.Task("tiny-lm", data, data, data, baseline=lambda: model, metric="perplexity", loss=token_cross_entropy)


def test_lowrank_budget_metric_criterion_scores_perplexity_unnegated():
    task = _tiny_lm_task()
    model = task.baseline()
    score = LowRankBudget(criterion="metric", val_batches=1)._scorer(StepContext(task=task))
    x, y = next(iter(task.val))
    assert score(model) == pytest.approx(perplexity(model(x), y), rel=1e-5)  # lower score = better


def test_measure_records_the_direction_in_the_report():
    task = _tiny_lm_task()
    report = measure(task.baseline(), task, config=MeasureConfig(latency=False))
    assert report.metric["name"] == "perplexity" and report.metric["higher_is_better"] is False
    assert 1.0 < report.metric["value"] < 40.0
