"""Streaming evaluation: metrics and losses updated batch by batch (never over a concatenated split),
outputs taken as models return them, callable / (total, count) / torchmetrics metrics combined per
the public contract, and today's callables giving the values they gave over a whole split."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nc
from nncompress.measure.metric import ModelCallError, evaluate, evaluate_loss, evaluate_with_loss
from nncompress.measure.report import MeasureConfig
from nncompress.tasks.batches import TensorBatches
from nncompress.tasks.metrics import (
    MetricAccumulator,
    accuracy,
    cross_entropy,
    higher_is_better,
    perplexity,
    resolve_metric,
)
from nncompress.tasks.outputs import batch_examples, primary_output


def _modeloutput(**fields):
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return CausalLMOutputWithPast(**fields)


def _uneven(n: int = 10, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Inputs, targets and batches of sizes 4, 4, 2 (uneven, so example weights matter)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 5, generator=g), torch.randint(0, classes, (n,), generator=g)
    return x, y, list(TensorBatches(x, y, batch_size=4))


class Linear3(nn.Module):
    """A linear classifier whose output form is chosen: tensor, tuple, dict or ModelOutput."""

    def __init__(self, form: str = "tensor") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.form = nn.Linear(5, 3), form

    def forward(self, x: torch.Tensor):
        logits = self.fc(x)
        if self.form == "tuple":
            return logits, x.sum()
        if self.form == "dict":
            return {"hidden": x, "logits": logits}
        if self.form == "first-tensor":
            return {"scores": logits, "aux": None}
        if self.form == "modeloutput":
            return _modeloutput(loss=logits.sum() * 0, logits=logits)
        return logits


def test_primary_output_of_each_form():
    t = torch.arange(3.0)
    assert primary_output(t) is t
    assert primary_output((t, torch.zeros(1))) is t
    assert primary_output([(t,), 1]) is t
    assert primary_output({"loss": torch.tensor(1.0), "logits": t}) is t  # logits wins over first
    assert primary_output({"last_hidden_state": t, "pooler_output": None}) is t
    assert primary_output(_modeloutput(loss=torch.tensor(2.0), logits=t)) is t
    with pytest.raises(TypeError, match="accepted: a tensor"):
        primary_output("text")
    with pytest.raises(TypeError, match="no tensor"):
        primary_output({"a": None})
    assert batch_examples(torch.zeros(7, 2)) == 7 and batch_examples(None, {"ids": torch.zeros(3, 4)}) == 3


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict", "first-tensor", "modeloutput"])
def test_builtin_metric_and_default_loss_read_every_output_form(form):
    x, y, batches = _uneven()
    reference = Linear3("tensor")
    logits = reference(x)
    want_acc = (logits.argmax(1) == y).double().mean().item()
    want_loss = F.cross_entropy(logits, y).item()
    model = Linear3(form)
    assert evaluate(model, batches, "accuracy") == pytest.approx(want_acc, abs=1e-7)  # float32-rounded
    # per-batch mean losses weighted by examples: equal to the split's mean loss
    assert evaluate_loss(model, batches, cross_entropy) == pytest.approx(want_loss, rel=1e-6)
    metric, loss = evaluate_with_loss(model, batches, "top5", cross_entropy)
    assert metric == 1.0 and loss == pytest.approx(want_loss, rel=1e-6)


def test_callable_metric_gets_each_batch_and_combines_weighted_by_examples():
    x, y, batches = _uneven()
    model = Linear3()
    seen: list[tuple[int, ...]] = []

    def old_style(outputs, targets):  # written for a whole split, returns a mean
        seen.append(tuple(outputs.shape))
        return (outputs.argmax(dim=1) == targets).float().mean().item()

    value = evaluate(model, batches, old_style)
    assert seen == [(4, 3), (4, 3), (2, 3)]  # one call per batch, never the split (10, 3)
    per_batch = [(model(bx).argmax(1) == by).float().mean().item() for bx, by in batches]
    assert value == pytest.approx((4 * per_batch[0] + 4 * per_batch[1] + 2 * per_batch[2]) / 10, rel=1e-12)
    # mean-decomposable: the same as the old whole-split value
    assert value == pytest.approx(old_style(model(x).detach(), y), abs=1e-6)


def test_total_count_metric_is_sum_of_totals_over_sum_of_counts():
    batches = [(torch.zeros(2, 1), torch.tensor([1.0, 3.0])), (torch.zeros(1, 1), torch.tensor([8.0]))]

    def mean_target(outputs, targets):
        return float(targets.sum()), len(targets)

    model = nn.Linear(1, 1)
    assert evaluate(model, batches, mean_target) == pytest.approx(12 / 3)  # not (2 + 8) / 2
    forms = iter([(1.0, 1), 1.0])
    acc = MetricAccumulator(lambda o, t: next(forms))
    acc.update(torch.zeros(1), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="same form"):  # a metric switching forms mid-split is refused
        acc.update(torch.zeros(1), torch.tensor([1.0]))


def test_perplexity_is_weighted_by_tokens_and_handles_lengths_that_change_per_batch():
    """A sequence model padded per batch: output (B, T_batch, V) with T changing; perplexity over
    the split equals exp(total NLL / tokens), which a mean of per-batch perplexities would miss."""
    torch.manual_seed(0)
    vocab = 7

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, vocab)

        def forward(self, ids: torch.Tensor):
            return _modeloutput(logits=self.emb(ids))

    lengths = [3, 9, 5]
    batches = []
    for i, t in enumerate(lengths):
        ids = torch.randint(0, vocab, (2 + i, t))
        target = torch.randint(0, vocab, (2 + i, t))
        target[0, t // 2 :] = -100  # padding, skipped
        batches.append((ids, target))
    model = Seq()
    got = evaluate(model, batches, "perplexity")
    nll = sum(
        F.cross_entropy(model.emb(x).reshape(-1, vocab), y.reshape(-1), reduction="sum").item() for x, y in batches
    )
    tokens = sum(int((y != -100).sum()) for _, y in batches)
    assert got == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    mean_of_batches = sum(perplexity(model.emb(x), y) for x, y in batches) / len(batches)
    assert abs(got - mean_of_batches) > 1e-3  # the token weighting is what makes it right
    # the default loss reads the ModelOutput and scores (B, T, V) logits per token
    loss = cross_entropy(model(batches[0][0]), batches[0][1])
    assert loss.item() == pytest.approx(
        F.cross_entropy(model.emb(batches[0][0]).reshape(-1, vocab), batches[0][1].reshape(-1)).item(), rel=1e-6
    )


def test_the_split_is_never_concatenated():
    """Each batch's logits are a (4, 4096, 262144) view of one row: 17 GB if materialized, 170 GB
    concatenated over the split. Streaming touches one batch at a time and never copies them."""
    vocab, length, n_batches = 262_144, 4096, 10

    class HugeVocab(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.row = nn.Parameter(torch.zeros(1, 1, vocab))

        def forward(self, ids: torch.Tensor):
            return {"logits": self.row.expand(len(ids), length, vocab)}

    def first_logit(outputs, targets):  # reads the view without materializing it
        out = outputs["logits"]
        assert out.shape == (4, length, vocab)
        return float(out[:, :, 0].sum()), out.shape[0] * out.shape[1]

    batches = [(torch.zeros(4, length, dtype=torch.long), torch.zeros(4, length, dtype=torch.long))] * n_batches
    calls = []

    def counted(outputs, targets):
        calls.append(1)
        return first_logit(outputs, targets)

    assert evaluate(HugeVocab(), batches, counted) == 0.0
    assert len(calls) == n_batches


def test_torchmetrics_metric_is_updated_per_batch_and_brings_its_direction():
    from torchmetrics.classification import MulticlassAccuracy
    from torchmetrics.regression import MeanSquaredError

    x, y, batches = _uneven()
    model = Linear3("modeloutput")  # torchmetrics gets the logits of a ModelOutput
    metric = MulticlassAccuracy(num_classes=3, average="micro")
    want = evaluate(Linear3(), batches, accuracy)
    assert evaluate(model, batches, metric) == pytest.approx(want, abs=1e-6)
    assert evaluate(model, batches, metric) == pytest.approx(want, abs=1e-6)  # fresh state each time
    task = nc.Task("tm", batches, batches, batches, baseline=Linear3, metric=metric)
    assert task.metric_name == "MulticlassAccuracy" and task.higher_is_better
    task = nc.Task("tm", batches, batches, batches, baseline=Linear3, metric=MeanSquaredError())
    assert not task.higher_is_better and not higher_is_better(MeanSquaredError())
    report = nc.measure(
        Linear3("tuple"),
        nc.Task("tm", batches, batches, batches, baseline=Linear3, metric=metric),
        config=MeasureConfig(latency=False),
    )
    assert report.metric["value"] == pytest.approx(want, abs=1e-6)
    assert resolve_metric(metric)[1].fn is metric


def test_empty_split_and_failing_model_are_named():
    with pytest.raises(ValueError, match="empty"):
        evaluate(nn.Linear(2, 2), [], "accuracy")
    with pytest.raises(ModelCallError, match=r"input_ids: \(2, 3\)"):
        evaluate(nn.Linear(2, 2), [({"input_ids": torch.zeros(2, 3)}, torch.zeros(2))], "accuracy")
