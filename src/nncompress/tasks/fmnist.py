"""Fashion-MNIST from the standard IDX files (Debian's `dataset-fashion-mnist` or a user folder).

Decoded once into a ``.npz`` cache; splits are fixed and seeded: 55,000 train and 5,000 val
carved from the official training set, and the official 10,000-image test set.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nncompress.io.atomic import atomic_write_bytes
from nncompress.paths import cache_dir

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "NNCOMPRESS_FMNIST_DIR"
MEAN, STD = 0.2860, 0.3530
VAL_SIZE = 5_000
SPLIT_SEED = 0
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
INSTALL_HINT = (
    "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point "
    f"--data-dir / ${ENV_VAR} at a folder holding the four IDX files "
    "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz]; torchvision's FashionMNIST/raw layout works)"
)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are not where we looked; the message says how to install them."""


@dataclass(frozen=True)
class Splits:
    """Normalized float images (N,1,28,28) and int64 labels for train, val and test."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def _candidate_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        roots = [Path(data_dir)]
    elif os.environ.get(ENV_VAR):
        roots = [Path(os.environ[ENV_VAR])]
    else:
        roots = [DEBIAN_DIR]
    out = []
    for root in roots:
        out += [root, root / "raw", root / "FashionMNIST" / "raw"]
    return out


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def locate(data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Find the four IDX files, raising a DatasetNotFoundError that says how to get them."""
    for folder in _candidate_dirs(data_dir):
        found = {key: _find_file(folder, stem) for key, stem in _FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    where = data_dir or os.environ.get(ENV_VAR) or DEBIAN_DIR
    raise DatasetNotFoundError(f"Fashion-MNIST not found in {where}: {INSTALL_HINT}")


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (optionally gzipped) into a uint8 array, checking its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {body.size} bytes")
    return body.reshape(dims)


def load_raw(data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The four arrays as uint8, from the npz cache when it matches the source files."""
    files = locate(data_dir)
    stamp = "-".join(str(int(files[k].stat().st_size)) for k in sorted(files))
    cached = cache_dir("data") / f"fashion-mnist-{stamp}.npz"
    if cached.is_file():
        with np.load(cached) as npz:
            return {k: npz[k] for k in npz.files}
    arrays = {key: read_idx(path) for key, path in files.items()}
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(cached, buf.getvalue())
    return arrays


def load_splits(data_dir: str | os.PathLike | None = None) -> Splits:
    """Normalized tensors for the fixed, seeded train/val/test splits."""
    raw = load_raw(data_dir)

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)  # astype copies: writable
        return (x - MEAN) / STD

    x_train, y_train = (
        images(raw["train_images"]),
        torch.from_numpy(raw["train_labels"].copy()).long(),
    )
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = order[:VAL_SIZE], order[VAL_SIZE:]
    return Splits(
        train=(x_train[train_idx], y_train[train_idx]),
        val=(x_train[val_idx], y_train[val_idx]),
        test=(images(raw["test_images"]), torch.from_numpy(raw["test_labels"].copy()).long()),
    )
