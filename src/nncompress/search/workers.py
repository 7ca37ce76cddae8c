"""Evaluating candidates: build, score on the val split, save to measure the artifact's bytes,
count MACs; in this process, in worker processes, or on a Ray cluster.

Every evaluator holds the task and the baseline model once (loaded when its worker starts) and
turns ``params`` into a :class:`Measured`. Pools yield results as they complete, so the search
can record each finished trial at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from nncompress.core.recipe import describe_recipe
from nncompress.measure.flops import count_macs
from nncompress.measure.latency import measure_latency
from nncompress.measure.metric import evaluate_with_loss
from nncompress.search.space import Params, SearchSpace, build, search_layers
from nncompress.tasks.task import Task

RAY_EXTRA = "pip install 'nncompress[ray]'"


@dataclass(frozen=True)
class Measured:
    """What one candidate measured: the metric and the task loss on the val split, the artifact's
    bytes as saved, MACs per sample, batch-1 median latency (None unless asked), seconds taken."""

    metric: float
    size_bytes: int
    macs: int
    latency_ms: float | None
    seconds: float
    loss: float | None = None


def run_metadata(task_name: str, recipe: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """The metadata ``io.run.write_run`` stores in ``model.ncz``: saving a trial with it gives
    the very bytes the chosen model's file will have."""
    from nncompress.core.compress import versions

    return {"task": task_name, "recipe": recipe, "seed": seed, "versions": versions()}


def saved_bytes(model: nn.Module, metadata: dict[str, Any]) -> int:
    """The size of ``model`` saved with ``nncompress.save`` (to a temporary file)."""
    from nncompress.io.artifact import save

    with tempfile.TemporaryDirectory(prefix="nncompress-search-") as tmp:
        return os.path.getsize(save(model, Path(tmp) / "model.ncz", metadata=metadata))


def _no_baseline() -> nn.Module:
    raise RuntimeError("a search worker's task has no baseline callable; the model is passed to it")


@dataclass(frozen=True)
class Setup:
    """What a worker needs to rebuild the evaluator: the task (a spec such as ``fmnist-resnet``
    or ``file.py:factory``, or a Task object), the model (None: the task's baseline), settings."""

    task: str | Task
    space: SearchSpace
    seed: int = 0
    latency: bool = False
    data_dir: str | None = None
    model: nn.Module | None = None

    def portable(self) -> Setup:
        """A copy that pickles: a Task object loses its baseline callable (the model travels instead)."""
        if isinstance(self.task, str):
            return self
        model = self.model if self.model is not None else self.task.baseline()
        return dataclasses.replace(self, task=dataclasses.replace(self.task, baseline=_no_baseline), model=model)


class Evaluator:
    """Turns ``params`` into :class:`Measured` for one task and baseline model."""

    def __init__(self, setup: Setup) -> None:
        from nncompress.tasks import get

        self.setup = setup
        self.task = get(setup.task, data_dir=setup.data_dir) if isinstance(setup.task, str) else setup.task
        self.model = (setup.model if setup.model is not None else self.task.baseline()).eval()
        self.layers = search_layers(self.model)
        self.example = self.task.single_example()
        self.macs_by_shape: dict[tuple, int] = {}

    def _macs(self, model: nn.Module) -> int:
        """MACs counted once per architecture: they depend on the layers' types and shapes only
        (pruned zeros and packed codes run the same convolutions as float weights), and counting is slow."""
        shape = tuple(
            (n, tuple(getattr(m, "weight_shape", ()) or getattr(getattr(m, "weight", None), "shape", ())))
            for n, m in model.named_modules()
        )
        if shape not in self.macs_by_shape:
            self.macs_by_shape[shape] = count_macs(model, self.example)
        return self.macs_by_shape[shape]

    def __call__(self, params: Params) -> Measured:
        start = time.perf_counter()
        model, recipe = build(self.model, params, self.task, self.layers, self.setup.space, seed=self.setup.seed)
        metric, loss = evaluate_with_loss(model, self.task.val, self.task.metric_fn, self.task.loss)
        size = saved_bytes(model, run_metadata(self.task.name, describe_recipe(recipe), self.setup.seed))
        macs = self._macs(model)
        latency = None
        if self.setup.latency:
            latency = measure_latency(model, self.example, batch_size=1, warmup=5, runs=30, min_seconds=0.2).median_ms
        return Measured(metric, size, macs, latency, time.perf_counter() - start, loss)


class Pool(Protocol):
    """Runs evaluations; ``run`` yields ``(index into jobs, Measured)`` as each completes."""

    def run(self, jobs: Sequence[Params]) -> Iterator[tuple[int, Measured]]: ...

    def close(self) -> None: ...


class InlinePool:
    """Evaluations one after another in this process (``workers=1``)."""

    def __init__(self, setup: Setup) -> None:
        self.evaluator = Evaluator(setup)

    def run(self, jobs: Sequence[Params]) -> Iterator[tuple[int, Measured]]:
        for i, params in enumerate(jobs):
            yield i, self.evaluator(params)

    def close(self) -> None:
        pass


_WORKER: Evaluator | None = None


def _init_worker(setup: Setup, threads: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = Evaluator(setup)


def _evaluate_in_worker(params: Params) -> Measured:
    assert _WORKER is not None, "worker not initialized"
    return _WORKER(params)


class ProcessPool:
    """Evaluations in ``workers`` spawned processes, each loading the task and model once and
    using an equal share of this machine's cores."""

    def __init__(self, setup: Setup, workers: int) -> None:
        threads = max(1, (os.cpu_count() or 1) // workers)
        self.executor = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(setup.portable(), threads),
        )

    def run(self, jobs: Sequence[Params]) -> Iterator[tuple[int, Measured]]:
        futures = {self.executor.submit(_evaluate_in_worker, params): i for i, params in enumerate(jobs)}
        try:
            for future in cf.as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def import_ray() -> Any:
    """The ``ray`` module, or a ValueError naming the extra that installs it."""
    try:
        import ray
    except ImportError as e:
        raise ValueError(f"--ray-address needs Ray, which is not installed: {RAY_EXTRA}") from e
    return ray


class RayPool:
    """Evaluations as Ray tasks on the cluster at ``address`` (``"auto"``, ``"ray://host:10001"``,
    or ``"local"`` to start one on this machine); each Ray worker process loads the task once."""

    def __init__(self, setup: Setup, address: str) -> None:
        ray = import_ray()
        self.ray = ray
        if not ray.is_initialized():
            ray.init(
                address=None if address == "local" else address,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
            )
        self.setup_ref = ray.put(setup.portable())
        self.remote = ray.remote(num_cpus=1)(_ray_evaluate)

    def run(self, jobs: Sequence[Params]) -> Iterator[tuple[int, Measured]]:
        pending = {self.remote.remote(self.setup_ref, params): i for i, params in enumerate(jobs)}
        try:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), self.ray.get(ref)
        finally:
            for ref in pending:
                self.ray.cancel(ref)

    def close(self) -> None:
        pass  # the cluster belongs to the user; a local one ends with this process


_RAY_EVALUATORS: dict[str, Evaluator] = {}


def _ray_evaluate(setup: Setup, params: Params) -> Measured:
    """A Ray task: evaluate ``params``, reusing this worker process's evaluator for ``setup``."""
    name = setup.task if isinstance(setup.task, str) else setup.task.name
    key = repr((name, setup.space, setup.seed, setup.latency, setup.data_dir))
    if key not in _RAY_EVALUATORS:
        torch.set_num_threads(1)
        _RAY_EVALUATORS[key] = Evaluator(setup)
    return _RAY_EVALUATORS[key](params)


def make_pool(setup: Setup, *, workers: int = 1, ray_address: str | None = None) -> Pool:
    """A pool for ``workers`` local processes (1: this process), or a Ray cluster when
    ``ray_address`` is given."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if ray_address:
        return RayPool(setup, ray_address)
    return InlinePool(setup) if workers == 1 else ProcessPool(setup, workers)
