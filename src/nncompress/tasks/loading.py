"""Resolving a task given by name or as ``path/to/file.py:factory`` (bring your own model and data)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from nncompress.tasks.reference import reference_names, reference_task
from nncompress.tasks.task import Task

ACCEPTED = "a reference task name ({names}) or path/to/file.py:factory returning a Task"


def user_module_name(path: Path) -> str:
    """The module name a user's task file is imported under: deterministic, so that artifacts
    pickling classes from this file find them again (and ``--trust`` can name it)."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    return f"nncompress_user_{path.stem}_{digest}"


_module_name = user_module_name  # the old private name, until cli/commands.py imports the public one


def task_from_file(spec: str) -> Task:
    """Import ``file.py`` and call ``factory()``; it must return a Task."""
    file_part, _, factory_name = spec.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist (expected path/to/file.py:factory)")
    name = user_module_name(path)
    module = sys.modules.get(name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception:
            del sys.modules[name]
            raise
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        found = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ValueError(f"{path} has no callable {factory_name!r}; callables there: {', '.join(found) or 'none'}")
    task = factory()
    if not isinstance(task, Task):
        raise TypeError(f"{spec} returned {type(task).__name__}, not an nncompress.Task")
    task.name = spec
    return task


def get(spec: str, *, data_dir: str | None = None) -> Task:
    """A task by reference name or ``file.py:factory``.

    Example:
        >>> task = nncompress.tasks.get("fmnist-lenet5")  # doctest: +SKIP
    """
    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        return task_from_file(spec)
    if spec in reference_names():
        return reference_task(spec, data_dir=data_dir)
    raise ValueError(f"unknown task {spec!r}; accepted: " + ACCEPTED.format(names=", ".join(reference_names())))


def names() -> list[str]:
    """Names of the built-in reference tasks."""
    return reference_names()
