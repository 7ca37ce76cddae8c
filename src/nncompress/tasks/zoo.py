"""The model zoo: reference architectures, how each is trained, and its cached checkpoint.

Two kinds of entries: Fashion-MNIST classifiers (``ENTRIES``) and byte-level GPTs trained on the
Python standard library's source (``TEXT_ENTRIES``; no pretrained causal LM installs offline, so
this one is trained here). ``entry``, ``load_baseline``, ``train_baseline`` and
``checkpoint_info`` accept either; ``all_entries()`` lists both.

A checkpoint is looked up in the user cache (written by ``nncompress zoo train``), then among the
checkpoints shipped with the package (trained here by the same code); one whose training
fingerprint does not match the current recipe is ignored. When none is found, training runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import safetensors.torch
import torch
from torch import nn

from nncompress.base.train_config import TrainConfig
from nncompress.io.atomic import atomic_path, atomic_write_text
from nncompress.models import GPT, GPTConfig, LeNet5, LeNet300100, ResNet, VisionTransformer
from nncompress.paths import cache_dir
from nncompress.tasks.batches import TensorBatches, random_crop_flip
from nncompress.tasks.fmnist import Splits, load_splits
from nncompress.tasks.metrics import accuracy, perplexity, token_cross_entropy
from nncompress.tasks.text import CorpusConfig, TextSplits, corpus_description, load_text_splits, unigram_perplexity

PACKAGED_DIR = Path(__file__).resolve().parent / "weights"
EVAL_BATCH = 500
TRAINED_BY = "nncompress zoo train (on this project's machines, from a fixed seed)"


@dataclass(frozen=True)
class ZooEntry:
    """A reference model: architecture, training recipe, and the accuracy it must reach."""

    name: str
    description: str
    architecture: str
    build: Callable[[], nn.Module]
    train: TrainConfig
    batch_size: int
    augment: bool
    target: float
    metric: ClassVar[str] = "accuracy"  # the target is a minimum test accuracy

    def fingerprint(self) -> str:
        """Hash of everything that determines the trained weights (architecture and recipe)."""
        data = {
            "architecture": self.architecture,
            "train": asdict(self.train),
            "batch_size": self.batch_size,
            "augment": self.augment,
            "data": "fmnist-v1",
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


ENTRIES: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "fmnist-mlp",
            "LeNet-300-100 (784-300-100-10 MLP) on Fashion-MNIST",
            "LeNet300100()",
            LeNet300100,
            TrainConfig(epochs=12, lr=2e-3, weight_decay=0.05, schedule="onecycle"),
            batch_size=128,
            augment=False,
            target=0.89,
        ),
        ZooEntry(
            "fmnist-lenet5",
            "LeNet-5 (2 conv + 3 fc) on Fashion-MNIST",
            "LeNet5()",
            LeNet5,
            TrainConfig(epochs=12, lr=3e-3, weight_decay=0.05, schedule="onecycle"),
            batch_size=128,
            augment=False,
            target=0.905,
        ),
        ZooEntry(
            "fmnist-resnet",
            "ResNet-8 (stride-2 stem, 32/64/128 channels, BatchNorm, projection shortcuts)",
            "ResNet(widths=(32,64,128), blocks_per_stage=1, stem_stride=2)",
            lambda: ResNet(widths=(32, 64, 128), blocks_per_stage=1, stem_stride=2),
            TrainConfig(epochs=10, lr=3e-3, weight_decay=0.05, schedule="onecycle"),
            batch_size=128,
            augment=False,
            target=0.92,
        ),
        ZooEntry(
            "fmnist-vit",
            "ViT (patch 4, dim 64, depth 4, 4 heads, class token)",
            "VisionTransformer(patch=4,dim=64,depth=4,heads=4,mlp=128)",
            VisionTransformer,
            TrainConfig(epochs=12, lr=2e-3, weight_decay=0.05, schedule="onecycle"),
            batch_size=128,
            augment=False,
            target=0.88,
        ),
    ]
}


@dataclass(frozen=True)
class TextZooEntry:
    """A reference causal language model: GPT shape, corpus, training recipe, the perplexity to reach."""

    name: str
    description: str
    model: GPTConfig
    corpus: CorpusConfig
    train: TrainConfig
    batch_size: int
    target: float
    metric: ClassVar[str] = "perplexity"  # the target is a maximum test perplexity

    @property
    def architecture(self) -> str:
        return f"GPT({', '.join(f'{k}={v}' for k, v in asdict(self.model).items())})"

    def build(self) -> nn.Module:
        return GPT(self.model)

    def fingerprint(self) -> str:
        """Hash of everything that determines the trained weights (model, corpus cut, recipe).

        The Python version is left out: another Python's standard library differs a little, and
        the shipped model stays a fair baseline there (its recorded perplexity is this one's).
        """
        data = {
            "architecture": asdict(self.model),
            "corpus": asdict(self.corpus),
            "train": asdict(self.train),
            "batch_size": self.batch_size,
            "data": "stdlib-bytes-v1",
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


TEXT_ENTRIES: dict[str, TextZooEntry] = {
    e.name: e
    for e in [
        TextZooEntry(
            "stdlib-gpt",
            "byte-level GPT (dim 128, 4 blocks, 4 heads, MLP 512, context 128) trained here on the Python "
            "standard library's source; perplexity on held-out modules",
            GPTConfig(vocab_size=256, context=128, dim=128, depth=4, num_heads=4, mlp_hidden=512),
            CorpusConfig(context=128, train_bytes=6_000_000),
            TrainConfig(epochs=1.0, lr=2e-3, weight_decay=0.1, schedule="cosine", warmup_fraction=0.05, grad_clip=1.0),
            batch_size=32,
            target=6.0,
        ),
    ]
}


def all_entries() -> dict[str, ZooEntry | TextZooEntry]:
    """Every zoo entry, image classifiers first."""
    return {**ENTRIES, **TEXT_ENTRIES}


def entry(name: str) -> ZooEntry | TextZooEntry:
    """The zoo entry called ``name``, or a ValueError listing the names."""
    entries = all_entries()
    if name not in entries:
        raise ValueError(f"unknown reference model {name!r}; known: {', '.join(entries)}")
    return entries[name]


def train_batches(e: ZooEntry, splits: Splits, seed: int = 0) -> TensorBatches:
    """The shuffled (and, where the entry says so, augmented) training batches."""
    return TensorBatches(
        *splits.train,
        batch_size=e.batch_size,
        shuffle=True,
        seed=seed,
        augment=random_crop_flip() if e.augment else None,
    )


def eval_batches(pair: tuple[torch.Tensor, torch.Tensor]) -> TensorBatches:
    """Unshuffled batches for evaluation."""
    return TensorBatches(*pair, batch_size=EVAL_BATCH)


def text_train_batches(e: TextZooEntry, splits: TextSplits, seed: int = 0) -> TensorBatches:
    """Shuffled training windows of a text entry."""
    return TensorBatches(*splits.train, batch_size=e.batch_size, shuffle=True, seed=seed)


def text_eval_batches(pair: tuple[torch.Tensor, torch.Tensor]) -> TensorBatches:
    """Unshuffled windows for evaluation (64 per batch: logits stay a few MB)."""
    return TensorBatches(*pair, batch_size=64)


def _find_checkpoint(e: ZooEntry | TextZooEntry) -> tuple[Path, dict[str, Any]] | None:
    for folder in (cache_dir("zoo"), PACKAGED_DIR):
        weights, info = folder / f"{e.name}.safetensors", folder / f"{e.name}.json"
        if weights.is_file() and info.is_file():
            meta = json.loads(info.read_text())
            if meta.get("fingerprint") == e.fingerprint():
                return weights, meta
    return None


def checkpoint_info(name: str) -> dict[str, Any] | None:
    """The metadata (measured metrics, training time) of the checkpoint in use, if any."""
    found = _find_checkpoint(entry(name))
    return None if found is None else {**found[1], "path": str(found[0])}


def load_baseline(name: str, data_dir: str | None = None) -> nn.Module:
    """The trained reference model: from a checkpoint, or trained now (and cached) if none fits."""
    e = entry(name)
    found = _find_checkpoint(e)
    if found is None:
        model, _ = train_baseline(name, data_dir=data_dir)
        return model
    model = e.build()
    model.load_state_dict(safetensors.torch.load_file(found[0]))
    return model.eval()


def train_baseline(
    name: str, *, data_dir: str | None = None, out_dir: Path | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a reference model from its fixed seed, save it to ``out_dir`` (the cache), return it.

    ``data_dir``: the Fashion-MNIST folder, or for a text entry a folder of ``.py`` files to use
    instead of the standard library.
    """
    e = entry(name)
    model, info = _train_text(e, data_dir) if isinstance(e, TextZooEntry) else _train_image(e, data_dir)
    folder = out_dir or cache_dir("zoo")
    with atomic_path(folder / f"{name}.safetensors") as tmp:
        safetensors.torch.save_file(model.state_dict(), tmp)
    atomic_write_text(folder / f"{name}.json", json.dumps(info, indent=2) + "\n")
    return model.eval(), info


def _train_image(e: ZooEntry, data_dir: str | None) -> tuple[nn.Module, dict[str, Any]]:
    from nncompress.measure.metric import evaluate  # here: measure and train sit above tasks
    from nncompress.train.loop import fit

    splits = load_splits(data_dir)
    torch.manual_seed(e.train.seed)
    model = e.build()
    start = time.perf_counter()
    history = fit(model, train_batches(e, splits, e.train.seed), e.train, description=e.name)
    seconds = time.perf_counter() - start
    info = {
        "name": e.name,
        "fingerprint": e.fingerprint(),
        "architecture": e.architecture,
        "test_accuracy": evaluate(model, eval_batches(splits.test), accuracy),
        "val_accuracy": evaluate(model, eval_batches(splits.val), accuracy),
        "target": e.target,
        "train_seconds": round(seconds, 1),
        "train_steps": history.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "trained_by": TRAINED_BY,
    }
    return model, info


def _lm_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return token_cross_entropy(model(inputs), targets)


def _train_text(e: TextZooEntry, data_dir: str | None) -> tuple[nn.Module, dict[str, Any]]:
    from nncompress.measure.metric import evaluate  # here: measure and train sit above tasks
    from nncompress.train.loop import fit

    splits = load_text_splits(data_dir, e.corpus)
    torch.manual_seed(e.train.seed)
    model = e.build()
    start = time.perf_counter()
    history = fit(model, text_train_batches(e, splits, e.train.seed), e.train, loss_fn=_lm_loss, description=e.name)
    seconds = time.perf_counter() - start
    info = {
        "name": e.name,
        "fingerprint": e.fingerprint(),
        "architecture": e.architecture,
        "params": sum(p.numel() for p in model.parameters()),
        "metric": e.metric,
        "higher_is_better": False,
        "test_perplexity": evaluate(model, text_eval_batches(splits.test), perplexity),
        "val_perplexity": evaluate(model, text_eval_batches(splits.val), perplexity),
        "unigram_test_perplexity": unigram_perplexity(splits.train_tokens, splits.test[1]),
        "target": e.target,
        "corpus": corpus_description(data_dir),
        "python": sys.version.split()[0],
        "files": splits.files,
        "windows": {s: len(getattr(splits, s)[0]) for s in ("train", "val", "test")},
        "train": {**asdict(e.train), "batch_size": e.batch_size, "loss": "token cross-entropy"},
        "train_seconds": round(seconds, 1),
        "train_steps": history.steps,
        "final_train_loss": history.losses[-1] if history.losses else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "trained_by": TRAINED_BY + "; no pretrained causal LM installs offline, so this one is trained here",
    }
    return model, info
