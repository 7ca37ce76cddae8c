"""Tasks: validation, loading from a file path, the Fashion-MNIST loader and its errors."""

from __future__ import annotations

import gzip
import struct
import textwrap

import numpy as np
import pytest
import torch

import nncompress as nc
from nncompress.tasks import fmnist
from nncompress.tasks.batches import TensorBatches, random_crop_flip
from nncompress.tasks.loading import get


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def fake_fmnist(tmp_path):
    """A torchvision-style folder (FashionMNIST/raw) of tiny but well-formed IDX files."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (5100, 28, 28)), True)
    write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, (5100,)), True)
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28)), False)
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, (30,)), False)
    return tmp_path


def test_loader_reads_user_folder_and_splits(fake_fmnist):
    splits = fmnist.load_splits(fake_fmnist)
    assert splits.train[0].shape == (100, 1, 28, 28) and splits.val[0].shape == (5000, 1, 28, 28)
    assert splits.test[0].shape == (30, 1, 28, 28)
    assert splits.train[1].dtype == torch.int64
    again = fmnist.load_splits(fake_fmnist)  # second time: from the cache, same split
    assert torch.equal(again.val[0], splits.val[0])


def test_loader_honours_environment_variable(fake_fmnist, monkeypatch):
    monkeypatch.setenv(fmnist.ENV_VAR, str(fake_fmnist))
    assert len(fmnist.load_splits().test[1]) == 30


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(fmnist.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fmnist.load_splits(tmp_path)


def test_bad_idx_file_is_rejected(tmp_path):
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="magic"):
        fmnist.read_idx(tmp_path / "x")


@pytest.mark.skipif(not fmnist.DEBIAN_DIR.is_dir(), reason="Fashion-MNIST package not installed")
def test_real_fmnist_splits():
    splits = fmnist.load_splits()
    assert [len(s[1]) for s in (splits.train, splits.val, splits.test)] == [55_000, 5_000, 10_000]
    assert sorted(splits.test[1].unique().tolist()) == list(range(10))
    # normalized with the dataset's own mean and std
    assert abs(splits.train[0].mean().item()) < 0.02
    assert abs(splits.train[0].std().item() - 1) < 0.02


def test_batches_are_reproducible_and_cover_everything():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    a = TensorBatches(x, y, batch_size=3, shuffle=True, seed=5)
    b = TensorBatches(x, y, batch_size=3, shuffle=True, seed=5)
    first = [t.tolist() for _, t in a]
    assert first == [t.tolist() for _, t in b]
    assert sorted(sum(first, [])) == list(range(10))
    assert first != [t.tolist() for _, t in a]  # next epoch reshuffles
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatches(x, y, batch_size=0)


def test_a_runs_seed_reorders_the_training_data():
    from conftest import make_task

    from nncompress.train.loop import TrainConfig, fit

    x, y = torch.arange(40.0)[:, None], torch.arange(40)
    batches = TensorBatches(x, y, batch_size=8, shuffle=True, seed=5)
    assert batches.reseeded(0) is batches  # seed-0 runs keep their order
    orders = {s: [t.tolist() for _, t in batches.reseeded(s)] for s in (1, 2)}
    assert orders[1] != orders[2] and orders[1] == [t.tolist() for _, t in batches.reseeded(1)]
    task = make_task()

    def trained(seed: int) -> torch.Tensor:
        model = task.baseline()
        torch.manual_seed(0)
        model.load_state_dict(task.baseline().state_dict())
        fit(model, task.train, TrainConfig(max_steps=5, lr=1e-2, seed=seed))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    task.train.reset()
    a = trained(1)
    task.train.reset()
    assert torch.equal(a, trained(1))
    task.train.reset()
    assert not torch.equal(a, trained(2))


def test_augmentation_keeps_shape():
    x = torch.randn(4, 1, 28, 28)
    out = random_crop_flip()(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape


def test_task_validation():
    with pytest.raises(TypeError, match="Task.train"):
        nc.Task("t", train=3, val=[], test=[], baseline=lambda: None)
    with pytest.raises(ValueError, match="unknown metric"):
        nc.Task("t", train=[], val=[], test=[], baseline=lambda: None, metric="f7")


def test_unknown_task_name_lists_accepted():
    with pytest.raises(ValueError, match="fmnist-mlp.*file.py:factory"):
        get("cifar-99")


TASK_FILE = """
import torch
from torch import nn
import nncompress as nc
from nncompress.tasks.batches import TensorBatches

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 16)
        self.head = nn.Linear(16, 3)
    def forward(self, x):
        return self.head(torch.relu(self.fc(x)))

def make():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    b = TensorBatches(x, y, batch_size=8)
    torch.manual_seed(0)
    return nc.Task("tiny", train=b, val=b, test=b, baseline=Tiny)

def not_a_task():
    return 42
"""


def test_task_from_file(tmp_path):
    path = tmp_path / "mytask.py"
    path.write_text(textwrap.dedent(TASK_FILE))
    task = get(f"{path}:make")
    assert task.name == f"{path}:make"
    assert task.single_example().shape == (1, 6)
    model = task.baseline()
    # artifacts of models defined in the file load back (the module name is stable)
    back = nc.load(nc.save(model, tmp_path / "m.ncz"), trust=(type(model).__module__,))  # the file it came from
    torch.testing.assert_close(back(task.single_example()), model(task.single_example()))
    with pytest.raises(ValueError, match="no callable 'nope'"):
        get(f"{path}:nope")
    with pytest.raises(TypeError, match="not an nncompress.Task"):
        get(f"{path}:not_a_task")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        get(f"{tmp_path}/missing.py:make")
