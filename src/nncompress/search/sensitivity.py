"""Per-layer sensitivity: the task metric on the val split when only one layer is compressed,
for every searchable layer, technique and strength of the search space.

Each point is a real candidate (``{layer: {technique: strength}}``) built with the registered
steps, scored on the whole val split, saved to measure its artifact's bytes and counted for
MACs, so the allocation reads measured figures. Results are cached on disk, keyed by the task's
name, a digest of the model's tensors and the settings: a rerun reads them back at once.
``DIR/sensitivity.json`` follows the shared contract (task, metric, baseline_metric, split,
curves of points ``{strength, metric, size_bytes}``), with ``macs`` and the val ``loss`` per
point and the baseline's bytes, MACs and loss added.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.io.atomic import atomic_write_text
from nncompress.paths import cache_dir
from nncompress.search.space import Params, SearchSpace
from nncompress.search.workers import Measured, Pool

SENSITIVITY_NAME = "sensitivity.json"
CACHE_VERSION = 2


@dataclass(frozen=True)
class Point:
    """The model with one layer compressed at ``strength``: val metric, artifact bytes, MACs."""

    strength: float
    metric: float
    size_bytes: int | None
    macs: int | None = None
    loss: float | None = None


@dataclass(frozen=True)
class Curve:
    """One layer under one technique at each strength of the search space."""

    layer: str
    technique: str
    points: list[Point]


@dataclass
class Sensitivity:
    """Every curve, with the uncompressed model's figures on the same split."""

    task: str
    metric_name: str
    higher_is_better: bool
    baseline_metric: float
    baseline_size_bytes: int
    baseline_macs: int
    curves: list[Curve] = field(default_factory=list)
    split: str = "val"
    baseline_loss: float | None = None

    def curve(self, layer: str, technique: str) -> Curve | None:
        return next((c for c in self.curves if c.layer == layer and c.technique == technique), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": {"name": self.metric_name, "higher_is_better": self.higher_is_better},
            "baseline_metric": self.baseline_metric,
            "baseline_size_bytes": self.baseline_size_bytes,
            "baseline_macs": self.baseline_macs,
            "baseline_loss": self.baseline_loss,
            "split": self.split,
            "curves": [
                {
                    "layer": c.layer,
                    "technique": c.technique,
                    "points": [
                        {
                            "strength": p.strength,
                            "metric": p.metric,
                            "size_bytes": p.size_bytes,
                            "macs": p.macs,
                            "loss": p.loss,
                        }
                        for p in c.points
                    ],
                }
                for c in self.curves
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sensitivity:
        return cls(
            task=data["task"],
            metric_name=data["metric"]["name"],
            higher_is_better=data["metric"]["higher_is_better"],
            baseline_metric=data["baseline_metric"],
            baseline_size_bytes=data["baseline_size_bytes"],
            baseline_macs=data["baseline_macs"],
            split=data.get("split", "val"),
            baseline_loss=data.get("baseline_loss"),
            curves=[Curve(c["layer"], c["technique"], [Point(**p) for p in c["points"]]) for c in data["curves"]],
        )


def model_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes and bytes of every tensor)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(task_name: str, model: nn.Module, space: SearchSpace, seed: int) -> str:
    """The cache key of a sensitivity analysis: task, model digest, search space and seed."""
    settings = {
        "version": CACHE_VERSION,
        "task": task_name,
        "model": model_digest(model),
        "space": space.to_dict(),
        "seed": seed,
        "split": "val",
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def sensitivity_jobs(layers: dict[str, str | None], space: SearchSpace) -> list[tuple[str, str, float]]:
    """``(layer, technique, strength)`` of every point: each layer alone, each technique, each level."""
    jobs = []
    for layer, method in layers.items():
        for technique in space.techniques:
            if technique == "lowrank" and method is None:
                continue
            jobs += [(layer, technique, level) for level in space.levels(technique)]
    return jobs


def analyze(
    pool: Pool,
    *,
    task_name: str,
    metric_name: str,
    higher_is_better: bool,
    model: nn.Module,
    layers: dict[str, str | None],
    space: SearchSpace,
    seed: int = 0,
    use_cache: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Sensitivity:
    """Sensitivity curves of every searchable layer, from the cache or measured with ``pool``.

    Example:
        >>> sens = analyze(pool, task_name="fmnist-resnet", metric_name="accuracy",
        ...                higher_is_better=True, model=model, layers=search_layers(model),
        ...                space=SearchSpace())  # doctest: +SKIP
    """
    key = cache_key(task_name, model, space, seed)
    cached = cache_dir("search") / f"sensitivity-{key[:32]}.json"
    if use_cache and cached.is_file():
        return Sensitivity.from_dict(json.loads(cached.read_text()))
    jobs = sensitivity_jobs(layers, space)
    candidates: list[Params] = [{}] + [{layer: {t: s}} for layer, t, s in jobs]
    results: dict[int, Measured] = {}
    for i, measured in pool.run(candidates):
        results[i] = measured
        if progress:
            progress(f"sensitivity {len(results)}/{len(candidates)}")
    base = results[0]
    sens = Sensitivity(
        task_name, metric_name, higher_is_better, base.metric, base.size_bytes, base.macs, baseline_loss=base.loss
    )
    by_curve: dict[tuple[str, str], list[Point]] = {}
    for i, (layer, technique, strength) in enumerate(jobs, start=1):
        m = results[i]
        by_curve.setdefault((layer, technique), []).append(Point(strength, m.metric, m.size_bytes, m.macs, m.loss))
    sens.curves = [Curve(layer, t, points) for (layer, t), points in by_curve.items()]
    atomic_write_text(cached, json.dumps(sens.to_dict()) + "\n")
    return sens


def write_sensitivity(sens: Sensitivity, out_dir: str | Path) -> Path:
    """Write ``DIR/sensitivity.json`` atomically."""
    path = Path(out_dir) / SENSITIVITY_NAME
    atomic_write_text(path, json.dumps(sens.to_dict(), indent=2) + "\n")
    return path
