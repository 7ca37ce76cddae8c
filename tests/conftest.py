"""Shared fixtures: a tiny synthetic task and small models, so most tests run in milliseconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.base.compat import import_torchvision
from nncompress.models import LeNet5, LeNet300100, ResNet, VisionTransformer
from nncompress.tasks.batches import TensorBatches

# Artifacts of the models these test helpers define load back: loading imports only nncompress's and
# torch.nn's classes unless told (nncompress.io.trust), and these two modules are ours.
nc.io.trust_modules("llm_archs", "prune_archs")

import_torchvision()  # before anything (transformers included) imports it: see nncompress/base/compat.py


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes caches into a temporary folder, never the user's home."""
    cache = tmp_path_factory.getbasetemp() / "nncompress-cache"
    monkeypatch.setenv("NNCOMPRESS_CACHE", str(cache))
    monkeypatch.setenv("NNCOMPRESS_PROGRESS", "0")


def synthetic_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n,1,28,28) whose class (of 4) is set by which quadrant is bright: learnable fast."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 28, 28, generator=g) * 0.3
    for c in range(4):
        r, col = divmod(c, 2)
        x[y == c, :, r * 14 : (r + 1) * 14, col * 14 : (col + 1) * 14] += 1.0
    return x, y


def tiny_task(model: nn.Module, shape: tuple[int, ...], batches: int = 3) -> nc.Task:
    """Random inputs labelled by the model itself: accuracy 1.0 for the model, so any change shows."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, *shape, generator=g) for _ in range(batches)]
    with torch.no_grad():
        labelled = [(x, model(x).argmax(1)) for x in xs]
    return nc.Task("tiny", train=labelled, val=labelled, test=labelled, baseline=lambda: model)


def make_task(model_factory=None, n_train: int = 512) -> nc.Task:
    model_factory = model_factory or (lambda: LeNet300100(num_classes=4))
    xtr, ytr = synthetic_data(n_train, 1)
    xte, yte = synthetic_data(256, 2)
    return nc.Task(
        name="synthetic",
        train=TensorBatches(xtr, ytr, batch_size=64, shuffle=True),
        val=TensorBatches(xte[:128], yte[:128], batch_size=64),
        test=TensorBatches(xte, yte, batch_size=64),
        baseline=model_factory,
    )


@pytest.fixture
def task() -> nc.Task:
    return make_task()


SMALL_MODELS = {
    "mlp": lambda: LeNet300100(num_classes=4),
    "lenet5": lambda: LeNet5(num_classes=4),
    "resnet": lambda: ResNet(widths=(4, 8), num_classes=4),
    "vit": lambda: VisionTransformer(patch_size=7, dim=16, depth=2, num_heads=2, mlp_hidden=32, num_classes=4),
}


def init_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SMALL_MODELS[name]().eval()


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster and steadier than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
