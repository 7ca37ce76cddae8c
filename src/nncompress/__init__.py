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
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from nncompress import tasks  # noqa: E402
from nncompress.core.compress import CompressionReport, Result, compress  # noqa: E402
from nncompress.core.recipe import load_recipe  # noqa: E402
from nncompress.core.step import Step, StepContext, register_step  # noqa: E402
from nncompress.io.artifact import ArtifactError, load, save  # noqa: E402
from nncompress.io.onnx_export import OnnxExport, export_onnx  # noqa: E402
from nncompress.measure.report import MeasureConfig, Report, measure  # noqa: E402
from nncompress.tasks.task import Task  # noqa: E402

# Step classes, imported on first use (PEP 562): step name -> module that defines it.
_LAZY_STEPS = {
    "FineTune": "nncompress.train.finetune",
    "Distill": "nncompress.distill",
    "StaticInt8Quantize": "nncompress.quantize.int8",
    "DynamicInt8Quantize": "nncompress.quantize.int8",
    "WeightQuantize": "nncompress.quantize.ptq",
    "Float16Weights": "nncompress.quantize.ptq",
    "MixedPrecisionQuantize": "nncompress.quantize.mixed",
    "KMeansQuantize": "nncompress.quantize.kmeans",
    "QuantizationAwareTraining": "nncompress.quantize.qat",
    "Binarize": "nncompress.quantize.binary",
    **{name: "nncompress.prune" for name in (
        "ChannelPrune", "GradualPrune", "HeadPrune", "IterativePrune", "LotteryTicket",
        "MagnitudePrune", "NMPrune", "UnstructuredPrune")},
    "DistillStudent": "nncompress.distill.assistants",
    "RTNQuantize": "nncompress.quantize.gptq",
    "GPTQQuantize": "nncompress.quantize.gptq",
    "AWQQuantize": "nncompress.quantize.awq",
    "HQQQuantize": "nncompress.quantize.hqq",
    "W8A8Quantize": "nncompress.quantize.smoothquant",
    "SmoothQuant": "nncompress.quantize.smoothquant",
    "WandaPrune": "nncompress.prune.wanda",
    "SparseGPTPrune": "nncompress.prune.sparsegpt",
    **{name: "nncompress.lowrank" for name in (
        "SVDFactorize", "TuckerFactorize", "CPFactorize", "SpatialSVDFactorize", "LowRankBudget")},
}

__all__ = [
    "STEPS", "ArtifactError", "ChannelPrune", "CompressionReport", "Distill", "DynamicInt8Quantize",
    "FineTune", "GradualPrune", "StaticInt8Quantize", "WeightQuantize", "Float16Weights", "KMeansQuantize",
    "QuantizationAwareTraining", "Binarize", "MixedPrecisionQuantize",
    "HeadPrune", "IterativePrune", "LotteryTicket", "MagnitudePrune", "MeasureConfig", "NMPrune",
    "Report", "Result", "Step", "StepContext", "Task", "UnstructuredPrune", "compress", "load",
    "load_recipe", "measure", "register_step", "save", "tasks",
    "OnnxExport", "export_onnx",
    "DistillStudent",
    "RTNQuantize", "GPTQQuantize", "AWQQuantize", "HQQQuantize", "W8A8Quantize", "SmoothQuant",
    "WandaPrune", "SparseGPTPrune",
    "SVDFactorize", "TuckerFactorize", "CPFactorize", "SpatialSVDFactorize", "LowRankBudget",
]


def __getattr__(name: str) -> Any:
    if name == "STEPS":
        from nncompress.core.step import builtin_steps

        return builtin_steps()
    if name in _LAZY_STEPS:
        return getattr(importlib.import_module(_LAZY_STEPS[name]), name)
    raise AttributeError(f"module 'nncompress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from nncompress.core.step import STEPS
    from nncompress.distill import Distill
    from nncompress.lowrank import (
        CPFactorize,
        LowRankBudget,
        SpatialSVDFactorize,
        SVDFactorize,
        TuckerFactorize,
    )
    from nncompress.prune import (
        ChannelPrune,
        GradualPrune,
        HeadPrune,
        IterativePrune,
        LotteryTicket,
        MagnitudePrune,
        NMPrune,
        UnstructuredPrune,
    )
    from nncompress.prune.sparsegpt import SparseGPTPrune
    from nncompress.prune.wanda import WandaPrune
    from nncompress.quantize.awq import AWQQuantize
    from nncompress.quantize.binary import Binarize
    from nncompress.quantize.gptq import GPTQQuantize, RTNQuantize
    from nncompress.quantize.hqq import HQQQuantize
    from nncompress.quantize.int8 import DynamicInt8Quantize, StaticInt8Quantize
    from nncompress.quantize.kmeans import KMeansQuantize
    from nncompress.quantize.mixed import MixedPrecisionQuantize
    from nncompress.quantize.ptq import Float16Weights, WeightQuantize
    from nncompress.quantize.qat import QuantizationAwareTraining
    from nncompress.quantize.smoothquant import SmoothQuant, W8A8Quantize
    from nncompress.train.finetune import FineTune
