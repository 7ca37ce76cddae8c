"""Byte-level text for language modelling: the Python standard library's source, split by module.

Every Python ships its standard library as source, so this corpus needs no download and no hub.
Files (``*.py`` under ``sysconfig.get_paths()["stdlib"]``, without ``site-packages`` and the test
folders) are assigned to train / val / test by a hash of their relative path, never by line, so
held-out perplexity is measured on modules the model never saw. Tokens are bytes (vocabulary
256), so there is no tokenizer to ship. Each split's files are concatenated (in hash order) and
cut into windows of ``context + 1`` bytes with stride ``context``: inputs are a window's first
``context`` bytes, targets the same window shifted by one. Train text is capped (a few MB: enough
for minutes of CPU training); val and test keep a fixed number of windows spread evenly over
their whole stream. The token tensors are cached, so loading takes well under a second.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nncompress.io.atomic import atomic_write_bytes
from nncompress.paths import cache_dir

SPLITS = ("train", "val", "test")
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
FORMAT_VERSION = "stdlib-bytes-v1"  # bump when the way windows are cut changes


@dataclass(frozen=True)
class CorpusConfig:
    """How the corpus is split and cut into windows.

    Args:
        context: tokens per input window (targets are the next ``context`` tokens).
        val_fraction, test_fraction: share of module files (by path hash) held out for each.
        train_bytes: cap on the training text; files are taken in hash order until it is reached.
        val_windows, test_windows: windows kept for val and test, spread evenly over each split.
    """

    context: int = 128
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    train_bytes: int = 4_000_000
    val_windows: int = 128
    test_windows: int = 256

    def __post_init__(self) -> None:
        for name in ("context", "train_bytes", "val_windows", "test_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CorpusConfig.{name} must be a positive integer, got {value!r}")
        if not (
            0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1
        ):
            raise ValueError(
                f"val_fraction ({self.val_fraction}) and test_fraction ({self.test_fraction}) must be in "
                "(0, 1) and sum to less than 1"
            )


@dataclass(frozen=True)
class TextSplits:
    """Token windows for each split: inputs and targets, both int64 ``(N, context)``."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    files: dict[str, int]  # module files in each split (all of them for val/test, those read for train)

    @property
    def train_tokens(self) -> torch.Tensor:
        """Every training token once: windows overlap by one token, so the inputs and the last target."""
        inputs, targets = self.train
        return torch.cat([inputs.flatten(), targets[-1:, -1]]) if len(inputs) else inputs.flatten()


def stdlib_root() -> Path:
    """The folder of this Python's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def module_files(root: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the ``*.py`` files under ``root``, skipping ``SKIP_DIRS``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"text corpus folder {root} does not exist (expected a folder of .py files)")
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        rel = Path(folder).relative_to(root)
        out += [(rel / f).as_posix() for f in files if f.endswith(".py")]
    if not out:
        raise FileNotFoundError(f"no .py files under {root}")
    return sorted(out)


def path_hash(rel_path: str) -> float:
    """A stable pseudo-random number in [0, 1) from a file's relative path (same on every machine)."""
    return int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big") / 2**64


def split_of(rel_path: str, config: CorpusConfig) -> str:
    """``"test"``, ``"val"`` or ``"train"``: where a module file belongs, by the hash of its path."""
    u = path_hash(rel_path)
    if u < config.test_fraction:
        return "test"
    return "val" if u < config.test_fraction + config.val_fraction else "train"


def split_files(files: list[str], config: CorpusConfig) -> dict[str, list[str]]:
    """The files of each split, each list in hash order (the order their text is concatenated)."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for f in sorted(files, key=path_hash):
        out[split_of(f, config)].append(f)
    return out


def _read(root: Path, files: list[str], cap: int | None) -> tuple[bytes, int]:
    """The files' bytes joined by newlines, stopping once ``cap`` bytes are read; also files used."""
    parts, size, used = [], 0, 0
    for f in files:
        if cap is not None and size >= cap:
            break
        data = (root / f).read_bytes()
        parts.append(data)
        size, used = size + len(data) + 1, used + 1
    stream = b"\n".join(parts)
    return (stream[:cap] if cap is not None else stream), used


def windows(stream: bytes, context: int) -> torch.Tensor:
    """All ``(N, context + 1)`` uint8 windows of ``stream`` with stride ``context`` (each byte after the
    first is a target exactly once)."""
    tokens = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
    if len(tokens) < context + 1:
        return torch.empty(0, context + 1, dtype=torch.uint8)
    return tokens.unfold(0, context + 1, context).contiguous()


def spread(all_windows: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` windows evenly spaced over ``all_windows`` (all of them when there are fewer)."""
    if len(all_windows) <= count:
        return all_windows
    return all_windows[torch.linspace(0, len(all_windows) - 1, count).round().long()]


def _build(root: Path, files: dict[str, list[str]], config: CorpusConfig) -> dict[str, torch.Tensor]:
    train, used = _read(root, files["train"], config.train_bytes)
    out = {"train": windows(train, config.context), "train_files": torch.tensor(used)}
    for split, count in (("val", config.val_windows), ("test", config.test_windows)):
        stream, _ = _read(root, files[split], None)
        out[split] = spread(windows(stream, config.context), count)
    return out


def _cache_key(root: Path, files: list[str], config: CorpusConfig) -> str:
    sizes = [(f, (root / f).stat().st_size) for f in files]
    data = {"format": FORMAT_VERSION, "root": str(root.resolve()), "files": sizes, "config": asdict(config)}
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def load_text_splits(root: str | os.PathLike | None = None, config: CorpusConfig | None = None) -> TextSplits:
    """Byte-token windows for train / val / test, from the token cache when it matches the files.

    Args:
        root: a folder of ``.py`` files (default: this Python's standard library).
        config: split and window settings (default ``CorpusConfig()``).

    Example:
        >>> splits = load_text_splits()
        >>> splits.test[0].shape
        torch.Size([256, 128])
    """
    config = config or CorpusConfig()
    root = Path(root) if root is not None else stdlib_root()
    files = module_files(root)
    by_split = split_files(files, config)
    for split in ("val", "test"):
        if not by_split[split]:
            raise ValueError(f"the corpus under {root} has {len(files)} files: too few to hold out a {split} split")
    cached = cache_dir("data") / f"text-{_cache_key(root, files, config)}.pt"
    data = None
    if cached.is_file():
        try:
            data = torch.load(cached, weights_only=True)
        except Exception:  # a corrupt cache is rebuilt, never fatal
            data = None
    if data is None:
        data = _build(root, by_split, config)
        buf = io.BytesIO()
        torch.save(data, buf)
        atomic_write_bytes(cached, buf.getvalue())

    def pair(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = w.long()
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    counts = {"train": int(data["train_files"]), "val": len(by_split["val"]), "test": len(by_split["test"])}
    return TextSplits(pair(data["train"]), pair(data["val"]), pair(data["test"]), counts)


def unigram_perplexity(train_tokens: torch.Tensor, targets: torch.Tensor, vocab: int = 256) -> float:
    """Perplexity of a context-free byte-frequency model (add-one smoothed, fitted on ``train_tokens``)
    on ``targets``: the floor any language model should clearly beat.

    Example:
        >>> unigram_perplexity(torch.tensor([0, 1]), torch.tensor([0, 1]), vocab=2)
        2.0
    """
    counts = torch.bincount(train_tokens.flatten().long(), minlength=vocab).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return math.exp(-log_p[targets.flatten().long()].mean().item())


def corpus_description(root: str | os.PathLike | None = None) -> str:
    """Where the text comes from, for task descriptions and checkpoint metadata."""
    where = root if root is not None else f"Python {sys.version.split()[0]} standard library"
    return f"{where} (*.py, no tests/site-packages), split by module file hash, byte tokens"
