"""nncompress: make trained PyTorch models smaller and faster, and report honestly what it cost.

Step classes are imported on first use (PEP 562), so ``nncompress.load`` runs a saved model without
importing the compression code (pruning, quantization...) that produced it.

Example:
    >>> import nncompress as nc
    >>> task = nc.tasks.get("fmnist-mlp")  # doctest: +SKIP
    >>> result = nc.compress(task.baseline(), [nc.MagnitudePrune(sparsity=0.9), nc.FineTune()], task)  # doctest: +SKIP
    >>> nc.save(result.model, "mlp.ncz")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from nncompress import tasks  # noqa: E402
from nncompress.core.catalog import BUILTIN_STEPS, step_module  # noqa: E402
from nncompress.core.compress import CompressionReport, Result, compress  # noqa: E402
from nncompress.core.recipe import load_recipe  # noqa: E402
from nncompress.core.step import Step, StepContext, register_step  # noqa: E402
from nncompress.io.artifact import ArtifactError, load, save  # noqa: E402
from nncompress.io.onnx_export import OnnxExport, OnnxExportResult, export_onnx  # noqa: E402
from nncompress.measure.report import MeasureConfig, Report, measure  # noqa: E402
from nncompress.tasks.task import Task  # noqa: E402

# Step classes, imported on first use (PEP 562), from the step table (``core/catalog.py``).
__all__ = [
    "STEPS",
    "ArtifactError",
    "CompressionReport",
    "MeasureConfig",
    "OnnxExport",
    "OnnxExportResult",
    "Report",
    "Result",
    "Step",
    "StepContext",
    "Task",
    "compress",
    "export_onnx",
    "load",
    "load_recipe",
    "measure",
    "register_step",
    "save",
    "tasks",
    *BUILTIN_STEPS,
]


def __getattr__(name: str) -> Any:
    if name == "STEPS":
        from nncompress.core.step import builtin_steps

        return builtin_steps()
    module = step_module(name)
    if module is not None:
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'nncompress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
