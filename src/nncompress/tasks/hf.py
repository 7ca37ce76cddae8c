"""Tasks for Hugging Face models built from a model, a tokenizer and texts (or token ids).

A raw ``transformers`` model takes keyword inputs (``input_ids``, ``attention_mask``) and returns
a ``ModelOutput``; nncompress passes the inputs as keyword arguments and scores the output's
``logits`` (see :mod:`nncompress.tasks.outputs`), so the model is compressed as it is, unwrapped.

- :func:`causal_lm_task`: next-token prediction, metric ``perplexity`` (weighted by tokens),
  loss per-token cross-entropy. Texts are tokenized and cut into windows of ``max_length`` tokens.
- :func:`sequence_classification_task`: one label per text, metric ``accuracy``, loss
  cross-entropy of the logits.

Batches are padded per batch to their longest sequence (right padding, ``attention_mask`` 0 on
padding, targets -100 there), so sequence lengths, and output shapes, vary from batch to batch.

Example:
    >>> task = causal_lm_task(model, texts, tokenizer=tokenizer, max_length=128)  # doctest: +SKIP
    >>> result = nncompress.compress(model, [nncompress.MagnitudePrune(sparsity=0.5)], task)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nncompress.tasks.metrics import cross_entropy, token_cross_entropy
from nncompress.tasks.task import Task

IGNORE_INDEX = -100  # targets skipped by the loss and by perplexity
Texts = Sequence[str] | Sequence[Sequence[int]] | torch.Tensor


class TokenBatches:
    """``({"input_ids", "attention_mask"}, targets)`` batches over token sequences of any lengths,
    each batch padded to its longest sequence; shuffled reproducibly (from ``seed`` and the epoch)
    when ``shuffle`` is set.

    Args:
        sequences: token id sequences (1-D tensors or lists of ints).
        targets: one target per sequence (a label), or None for next-token targets (each
            position's target is the following token; the last position and padding get -100).
        batch_size: sequences per batch.
        pad_id: the id written on padding (masked out, so any id in the vocabulary works).

    Example:
        >>> batches = TokenBatches([[1, 2, 3], [4, 5]], batch_size=2)
        >>> x, y = next(iter(batches))
        >>> x["input_ids"].tolist(), x["attention_mask"].tolist(), y.tolist()
        ([[1, 2, 3], [4, 5, 0]], [[1, 1, 1], [1, 1, 0]], [[2, 3, -100], [5, -100, -100]])
    """

    def __init__(
        self,
        sequences: Sequence[Sequence[int] | torch.Tensor],
        targets: Sequence[int] | torch.Tensor | None = None,
        *,
        batch_size: int = 8,
        pad_id: int = 0,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.sequences = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in sequences]
        if any(len(s) == 0 for s in self.sequences):
            raise ValueError("a token sequence is empty; every sequence needs at least one token")
        self.targets = None if targets is None else torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if self.targets is not None and len(self.targets) != len(self.sequences):
            raise ValueError(f"{len(self.sequences)} sequences but {len(self.targets)} targets: give one per sequence")
        self.batch_size, self.pad_id, self.shuffle, self.seed = batch_size, pad_id, shuffle, seed
        self._epoch = 0

    def __len__(self) -> int:
        return -(-len(self.sequences) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.sequences)

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self._epoch)
        self._epoch += 1
        n = len(self.sequences)
        order = torch.randperm(n, generator=gen).tolist() if self.shuffle else list(range(n))
        for start in range(0, n, self.batch_size):
            yield self._batch(order[start : start + self.batch_size])

    def _batch(self, rows: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        seqs = [self.sequences[i] for i in rows]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)], mask[r, : len(s)] = s, 1
        if self.targets is not None:
            return {"input_ids": ids, "attention_mask": mask}, self.targets[rows]
        nxt = torch.full_like(ids, IGNORE_INDEX)  # (B, T): position t predicts token t + 1
        nxt[:, :-1] = torch.where(mask[:, 1:].bool(), ids[:, 1:], IGNORE_INDEX)
        return {"input_ids": ids, "attention_mask": mask}, nxt

    def reset(self) -> None:
        """Restart the epoch counter, so the next pass repeats the first epoch's order."""
        self._epoch = 0

    def reseeded(self, seed: int) -> TokenBatches:
        """The same batches in an order that also depends on a run's ``seed`` (0: these batches)."""
        if seed == 0:
            return self
        other = copy.copy(self)
        other.seed, other._epoch = self.seed * 7919 + seed, 0
        return other


def tokenize(texts: Texts, tokenizer: Any = None) -> list[torch.Tensor]:
    """Token id sequences from texts (with ``tokenizer``: a ``transformers`` tokenizer or any
    callable ``text -> ids | {"input_ids": ids}``), or from ids given as lists or a 2-D tensor."""
    if isinstance(texts, torch.Tensor):
        if texts.dim() != 2:
            raise ValueError(f"token ids as a tensor must be 2-D (sequences, tokens), got shape {tuple(texts.shape)}")
        return list(texts.long())
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a list of strings or of token id lists, got {type(texts).__name__}")
    out = []
    for text in texts:
        if isinstance(text, str):
            if tokenizer is None:
                raise ValueError(
                    "texts are strings: give tokenizer= (a transformers tokenizer or a callable "
                    "text -> token ids), or pass token ids instead"
                )
            ids = tokenizer(text)
            if isinstance(ids, Mapping):
                ids = ids["input_ids"]
            out.append(torch.as_tensor(ids, dtype=torch.long).reshape(-1))
        else:
            out.append(torch.as_tensor(text, dtype=torch.long).reshape(-1))
    return out


def windows(sequences: Sequence[torch.Tensor], max_length: int, *, min_length: int = 2) -> list[torch.Tensor]:
    """Each sequence cut into consecutive windows of at most ``max_length`` tokens; windows shorter
    than ``min_length`` (too short to predict a next token) are dropped.

    Example:
        >>> [w.tolist() for w in windows([torch.arange(5)], 2)]
        [[0, 1], [2, 3]]
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < min_length:
        raise ValueError(f"max_length must be an integer >= {min_length}, got {max_length!r}")
    return [w for s in sequences for w in s.split(max_length) if len(w) >= min_length]


def _splits(items: list, fractions: tuple[float, float, float]) -> tuple[list, list, list]:
    """Consecutive train / val / test parts by ``fractions`` (each non-empty part stays non-empty)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not abs(sum(fractions) - 1) < 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    n = len(items)
    if n < 3:
        raise ValueError(f"{n} sequences cannot make train, val and test splits: give at least 3, or val= and test=")
    n_val, n_test = max(1, round(n * fractions[1])), max(1, round(n * fractions[2]))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n} sequences leave no training split at fractions {fractions}")
    return items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :]


def _pad_id(tokenizer: Any, model: nn.Module) -> int:
    for source in (tokenizer, getattr(model, "config", None)):
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(source, attr, None)
            if isinstance(value, int):
                return value
    return 0


def _name(model: nn.Module, kind: str) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"{model_type or type(model).__name__.lower()}-{kind}"


def causal_lm_task(
    model: nn.Module,
    texts: Texts,
    *,
    tokenizer: Any = None,
    val: Texts | None = None,
    test: Texts | None = None,
    max_length: int = 256,
    batch_size: int = 8,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    name: str | None = None,
    seed: int = 0,
) -> Task:
    """A next-token task for a causal LM: perplexity (lower is better, weighted by tokens) and
    per-token cross-entropy, with ``{"input_ids", "attention_mask"}`` batches.

    Args:
        model: the model to compress (a ``transformers`` causal LM, or any module taking
            ``input_ids``/``attention_mask`` and returning ``(B, T, V)`` logits or a ``ModelOutput``).
        texts: strings (tokenized with ``tokenizer``), token id lists, or a 2-D id tensor; cut into
            windows of ``max_length`` tokens. Without ``val``/``test`` they are split into
            consecutive train / val / test parts by ``fractions``.
        tokenizer: a ``transformers`` tokenizer or a callable ``text -> ids``; its pad id pads.
        val, test: held-out texts (then ``texts`` is the train split alone).
        batch_size: windows per batch (train batches shuffled reproducibly from ``seed``).

    Example:
        >>> task = causal_lm_task(gpt2, ["some text", ...], tokenizer=tok, max_length=64)  # doctest: +SKIP
    """
    parts = [windows(tokenize(t, tokenizer), max_length) if t is not None else None for t in (texts, val, test)]
    train_seqs, val_seqs, test_seqs = _splits(parts[0], fractions) if val is None and test is None else _explicit(parts)
    pad = _pad_id(tokenizer, model)
    return Task(
        name or _name(model, "causal-lm"),
        train=TokenBatches(train_seqs, batch_size=batch_size, pad_id=pad, shuffle=True, seed=seed),
        val=TokenBatches(val_seqs, batch_size=batch_size, pad_id=pad),
        test=TokenBatches(test_seqs, batch_size=batch_size, pad_id=pad),
        baseline=lambda: model,
        metric="perplexity",
        loss=token_cross_entropy,
        info={
            "kind": "causal-lm",
            "max_length": max_length,
            "tokens": {
                s: sum(len(x) for x in q) for s, q in (("train", train_seqs), ("val", val_seqs), ("test", test_seqs))
            },
        },
    )


def _explicit(parts: list[list | None]) -> tuple[list, list, list]:
    """train / val / test when val and test were given (both are needed)."""
    train, val, test = parts
    if val is None or test is None:
        raise ValueError("give both val= and test= (or neither, to split texts by fractions)")
    for split, seqs in (("texts", train), ("val", val), ("test", test)):
        if not seqs:
            raise ValueError(f"{split} holds no sequence of at least 2 tokens")
    return train, val, test


def sequence_classification_task(
    model: nn.Module,
    inputs: Texts,
    labels: Sequence[int] | torch.Tensor,
    *,
    tokenizer: Any = None,
    val: tuple[Texts, Sequence[int] | torch.Tensor] | None = None,
    test: tuple[Texts, Sequence[int] | torch.Tensor] | None = None,
    max_length: int = 512,
    batch_size: int = 8,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    metric: Any = "accuracy",
    name: str | None = None,
    seed: int = 0,
) -> Task:
    """A one-label-per-text task for a sequence classifier: ``metric`` (accuracy by default) and
    cross-entropy of the logits, with ``{"input_ids", "attention_mask"}`` batches.

    Args:
        model: the classifier (``transformers`` ``...ForSequenceClassification`` or any module
            taking ``input_ids``/``attention_mask`` and returning ``(B, classes)`` logits).
        inputs: strings (tokenized with ``tokenizer``, truncated to ``max_length`` tokens), token
            id lists, or a 2-D id tensor.
        labels: one class index per input.
        val, test: ``(inputs, labels)`` held out; without them the data is split by ``fractions``.

    Example:
        >>> task = sequence_classification_task(bert, texts, labels, tokenizer=tok)  # doctest: +SKIP
    """

    def labelled(x: Texts, y: Sequence[int] | torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        seqs = [s[:max_length] for s in tokenize(x, tokenizer)]
        ys = torch.as_tensor(y, dtype=torch.long).reshape(-1).tolist()
        if len(ys) != len(seqs):
            raise ValueError(f"{len(seqs)} inputs but {len(ys)} labels: give one label per input")
        return list(zip(seqs, ys))

    rows = labelled(inputs, labels)
    if val is None and test is None:
        splits = _splits(rows, fractions)
    elif val is None or test is None:
        raise ValueError("give both val= and test= (or neither, to split inputs by fractions)")
    else:
        splits = (rows, labelled(*val), labelled(*test))
    pad = _pad_id(tokenizer, model)

    def batches(part: list, shuffle: bool) -> TokenBatches:
        if not part:
            raise ValueError("a split of the classification data is empty")
        return TokenBatches(
            [s for s, _ in part], [y for _, y in part], batch_size=batch_size, pad_id=pad, shuffle=shuffle, seed=seed
        )

    return Task(
        name or _name(model, "classification"),
        train=batches(splits[0], True),
        val=batches(splits[1], False),
        test=batches(splits[2], False),
        baseline=lambda: model,
        metric=metric,
        loss=cross_entropy,
        info={"kind": "sequence-classification", "max_length": max_length},
    )
