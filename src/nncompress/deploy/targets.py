"""The registry of export targets: one class per runtime, each importing its runtime only when used.

A target writes a model nncompress produced (``nc.load``) into its runtime's own format, keeping
what compression did (smaller dense graphs, int8 with our scales, low-bit weights where the runtime
has them), and hands back an :class:`Exported`: the file, its size, a module that runs it in the
runtime (torch tensors in and out, so ``evaluate`` and ``interleaved_latency`` time it like ours),
each weighted layer's form there, and one note per layer the runtime could not keep as it was.

Example:
    >>> target = get_target("openvino")  # doctest: +SKIP
    >>> exported = target.export(model, "model.xml", example_inputs)  # doctest: +SKIP
    >>> exported.layers["fc1"]  # doctest: +SKIP
    'u4 weights, group 64'
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn


@dataclass
class Exported:
    """What a target wrote and how to run it.

    Attributes:
        path: the main file (``.onnx``, ``.xml``, ``.pte``, ``.tflite``, ``.gguf``).
        bytes: size on disk of every file it needs (OpenVINO's ``.xml`` plus ``.bin``).
        runner: an ``nn.Module`` running the export in the target's runtime (None: not runnable here).
        layers: weighted layer -> its form in the target (``int8 per-channel``, ``u4 group 64``, ``fp32``).
        notes: one line per layer kept in a nearer form than ours, and fallbacks taken.
    """

    path: str
    bytes: int
    runner: nn.Module | None
    layers: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Target:
    """An export target: ``name`` (CLI ``--to``), the pip ``extra`` that installs its runtime, the
    modules it needs, the file ``suffix``; ``export`` writes and returns an :class:`Exported`."""

    name: ClassVar[str] = ""
    extra: ClassVar[str] = ""
    modules: ClassVar[tuple[str, ...]] = ()
    suffix: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def missing(self) -> str | None:
        """None when the runtime is installed, else one line saying what to install."""
        absent = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if not absent:
            return None
        return f"--to {self.name} needs {', '.join(absent)}: pip install 'nncompress[{self.extra}]'"

    def export(
        self, model: nn.Module, path: str | os.PathLike, example_inputs: Any, *, max_batch: int = 1024
    ) -> Exported:
        """Write ``model`` to ``path`` in the target's format; ``example_inputs`` trace it and
        ``max_batch`` bounds the batch axis where the format needs a bound."""
        raise NotImplementedError


TARGETS: dict[str, type[Target]] = {}


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator: make ``cls`` available as ``--to cls.name``."""
    if not cls.name or cls.name in TARGETS:
        raise ValueError(f"target name {cls.name!r} is empty or already registered")
    TARGETS[cls.name] = cls
    return cls


TARGET_MODULES = {
    "onnx": "nncompress.deploy.onnx",
    "openvino": "nncompress.deploy.openvino",
    "executorch": "nncompress.deploy.executorch",
    "litert": "nncompress.deploy.litert",
    "gguf": "nncompress.deploy.gguf",
}


def target_names() -> tuple[str, ...]:
    """Every target name, whether or not its runtime is installed."""
    return tuple(TARGET_MODULES)


def get_target(name: str) -> Target:
    """The target called ``name``, its runtime checked (ValueError naming the accepted names, or
    what to install)."""
    if name not in TARGET_MODULES:
        raise ValueError(f"unknown export target {name!r}; accepted: {', '.join(TARGET_MODULES)}")
    importlib.import_module(TARGET_MODULES[name])  # registers the class; imports no runtime
    target = TARGETS[name]()
    reason = target.missing()
    if reason:
        raise ValueError(reason)
    return target


def file_bytes(*paths: str | os.PathLike) -> int:
    """Total size of the files a target wrote."""
    return sum(os.path.getsize(p) for p in paths)
