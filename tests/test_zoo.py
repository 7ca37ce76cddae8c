"""The shipped reference checkpoints: they meet their targets and reproduce their recorded metric."""

from __future__ import annotations

import json

import pytest

from nncompress.measure.metric import evaluate
from nncompress.tasks import fmnist, zoo
from nncompress.tasks.metrics import accuracy

needs_fmnist = pytest.mark.skipif(not fmnist.DEBIAN_DIR.is_dir(), reason="Fashion-MNIST not installed")


@needs_fmnist
@pytest.mark.parametrize("name", list(zoo.ENTRIES))
def test_shipped_checkpoint_meets_target_and_reproduces(name):
    info_path = zoo.PACKAGED_DIR / f"{name}.json"
    assert info_path.is_file(), f"{name} has no shipped checkpoint: run `nncompress zoo train {name}`"
    info = json.loads(info_path.read_text())
    assert info["fingerprint"] == zoo.ENTRIES[name].fingerprint(), "checkpoint is stale: retrain it"
    model = zoo.load_baseline(name)
    splits = fmnist.load_splits()
    measured = evaluate(model, zoo.eval_batches(splits.test), accuracy)
    assert measured == info["test_accuracy"]
    assert measured >= zoo.ENTRIES[name].target


@needs_fmnist
def test_training_the_mlp_reproduces_the_shipped_checkpoint(tmp_path):
    _, info = zoo.train_baseline("fmnist-mlp", out_dir=tmp_path)
    shipped = json.loads((zoo.PACKAGED_DIR / "fmnist-mlp.json").read_text())
    assert info["test_accuracy"] == pytest.approx(shipped["test_accuracy"], abs=2e-3)
    assert info["test_accuracy"] >= zoo.ENTRIES["fmnist-mlp"].target


def test_unknown_zoo_name():
    with pytest.raises(ValueError, match="fmnist-mlp"):
        zoo.entry("imagenet")
