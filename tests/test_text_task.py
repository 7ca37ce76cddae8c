"""The byte-level text corpus (split by module file), its windows and batches, and the stdlib-gpt task."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import nncompress as nc
from nncompress.measure.metric import evaluate
from nncompress.tasks import text, zoo
from nncompress.tasks.metrics import perplexity

SMALL = text.CorpusConfig(context=16, train_bytes=2_000, val_windows=8, test_windows=8)


@pytest.fixture
def corpus(tmp_path):
    """60 small modules in packages, plus test and site-packages folders that must be skipped."""
    root = tmp_path / "lib"
    for i in range(60):
        pkg = root / f"pkg{i % 3}"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x * {i}  # module {i}\n" * 8)
    for skipped in ("test", "site-packages", "pkg0/tests"):
        (root / skipped).mkdir(parents=True, exist_ok=True)
        (root / skipped / "skipme.py").write_text("SKIPPED = True\n")
    (root / "pkg1" / "notes.txt").write_text("not python")
    return root


def test_module_files_skip_tests_and_site_packages(corpus):
    files = text.module_files(corpus)
    assert len(files) == 60 and all(f.endswith(".py") and "skipme" not in f for f in files)


def test_split_is_by_module_file_and_deterministic(corpus):
    files = text.module_files(corpus)
    splits = text.split_files(files, text.CorpusConfig())
    seen = [f for s in text.SPLITS for f in splits[s]]
    assert sorted(seen) == sorted(files) and len(set(seen)) == len(seen)  # no file in two splits
    assert splits["val"] and splits["test"]
    assert splits == text.split_files(list(reversed(files)), text.CorpusConfig())  # order-independent
    assert all(text.split_of(f, text.CorpusConfig()) == s for s in text.SPLITS for f in splits[s])


def test_stdlib_split_has_no_module_in_two_splits():
    splits = text.split_files(text.module_files(text.stdlib_root()), text.CorpusConfig())
    sets = [set(splits[s]) for s in text.SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert all(len(s) > 20 for s in sets)
    assert not any("/test/" in f or f.startswith(("test/", "site-packages/")) for s in sets for f in s)


def test_windows_targets_are_inputs_shifted_by_one(corpus):
    splits = text.load_text_splits(corpus, SMALL)
    for inputs, targets in (splits.train, splits.val, splits.test):
        assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == targets.shape
        assert inputs.shape[1] == 16 and len(inputs) > 0
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
    train_in, train_out = splits.train
    assert torch.equal(train_in[1:, 0], train_out[:-1, -1])  # stride = context: each byte a target once
    assert len(splits.val[0]) <= 8 and len(splits.test[0]) <= 8
    assert 1_900 <= len(splits.train_tokens) <= 2_000  # the train cap
    again = text.load_text_splits(corpus, SMALL)  # from the cache
    assert torch.equal(again.test[0], splits.test[0]) and again.files == splits.files


def test_windows_hold_the_module_text(corpus):
    files = text.split_files(text.module_files(corpus), SMALL)["test"]
    splits = text.load_text_splits(corpus, SMALL)
    stream = b"\n".join((corpus / f).read_bytes() for f in files)
    first = bytes(splits.test[0][0].tolist()) + bytes([int(splits.test[1][0, -1])])
    assert first == stream[:17]


def test_unigram_perplexity_hand_value():
    # add-one counts over 4 symbols from [0, 0, 0, 1] -> (4, 2, 1, 1) / 8; target 0 -> perplexity 2
    assert text.unigram_perplexity(torch.tensor([0, 0, 0, 1]), torch.tensor([0]), vocab=4) == pytest.approx(2.0)


def test_corpus_errors_name_the_problem(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text.load_text_splits(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .py files"):
        text.load_text_splits(tmp_path / "empty")
    with pytest.raises(ValueError, match="context must be a positive integer, got 0"):
        text.CorpusConfig(context=0)
    with pytest.raises(ValueError, match="sum to less than 1"):
        text.CorpusConfig(val_fraction=0.6, test_fraction=0.5)


def test_stdlib_gpt_task_batches_and_direction():
    assert "stdlib-gpt" in nc.tasks.names()
    task = nc.tasks.get("stdlib-gpt")
    assert task.metric_name == "perplexity" and not task.higher_is_better
    assert "trained" in task.info["trained_here"]
    x, y = next(iter(task.test))
    assert x.shape == y.shape == (64, 128) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 256
    assert sum(len(b[0]) for b in task.test) == 256 and sum(len(b[0]) for b in task.val) == 128
    assert task.single_example().shape == (1, 128)


def test_shipped_stdlib_gpt_reproduces_its_recorded_perplexity():
    info_path = zoo.PACKAGED_DIR / "stdlib-gpt.json"
    assert info_path.is_file(), "stdlib-gpt has no shipped checkpoint: run `nncompress zoo train stdlib-gpt`"
    info = json.loads(info_path.read_text())
    e = zoo.TEXT_ENTRIES["stdlib-gpt"]
    assert info["fingerprint"] == e.fingerprint(), "checkpoint is stale: retrain it"
    assert (zoo.PACKAGED_DIR / "stdlib-gpt.safetensors").stat().st_size <= 4 * 2**20
    task = nc.tasks.get("stdlib-gpt")
    measured = evaluate(task.baseline(), task.test, perplexity)
    if info["python"] == sys.version.split()[0]:  # same standard library: the same held-out text
        assert measured == pytest.approx(info["test_perplexity"], rel=1e-5)
    assert measured <= e.target < info["unigram_test_perplexity"] / 2


def test_zoo_knows_the_gpt_checkpoint_and_its_direction():
    info = zoo.checkpoint_info("stdlib-gpt")
    assert info is not None and info["metric"] == "perplexity" and info["higher_is_better"] is False
    assert info["test_perplexity"] <= zoo.entry("stdlib-gpt").target
    assert "stdlib-gpt" in zoo.all_entries() and "stdlib-gpt" not in zoo.ENTRIES  # ENTRIES: Fashion-MNIST only
