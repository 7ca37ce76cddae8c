"""The built-in reference tasks: Fashion-MNIST with four architectures (see tasks/zoo.py)."""

from __future__ import annotations

from nncompress.tasks.fmnist import load_splits
from nncompress.tasks.task import Task
from nncompress.tasks.zoo import ENTRIES, entry, eval_batches, load_baseline, train_batches


def reference_task(name: str, *, data_dir: str | None = None) -> Task:
    """The task ``name`` (``fmnist-mlp``, ``fmnist-lenet5``, ``fmnist-resnet``, ``fmnist-vit``)."""
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


def reference_names() -> list[str]:
    """Names of the built-in tasks."""
    return list(ENTRIES)
