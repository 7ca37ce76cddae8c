"""The table of built-in steps: class name -> (recipe kind, defining module).

It is the one list to edit when a step is added: ``nncompress``'s lazy exports and ``__all__`` and
``core.step.BUILTIN_STEP_MODULES`` (the modules imported to fill the registry) are derived from it,
and ``tests/test_architecture.py`` checks that it names every registered step and nothing else. It
imports nothing, so ``import nncompress`` (and ``nncompress.load``) stays free of compression code.
"""

from __future__ import annotations

BUILTIN_STEPS: dict[str, tuple[str, str]] = {
    "FineTune": ("finetune", "nncompress.train.finetune"),
    "Distill": ("distill", "nncompress.distill.recovery"),
    "DistillStudent": ("distill-student", "nncompress.distill.assistants"),
    "UnstructuredPrune": ("unstructured-prune", "nncompress.prune.magnitude"),
    "MagnitudePrune": ("magnitude-prune", "nncompress.prune.magnitude"),
    "GradualPrune": ("gradual-prune", "nncompress.prune.schedule"),
    "IterativePrune": ("iterative-prune", "nncompress.prune.schedule"),
    "LotteryTicket": ("lottery-ticket", "nncompress.prune.lottery"),
    "NMPrune": ("nm-prune", "nncompress.prune.nm"),
    "ChannelPrune": ("channel-prune", "nncompress.prune.structured"),
    "HeadPrune": ("head-prune", "nncompress.prune.structured"),
    "WandaPrune": ("wanda", "nncompress.prune.wanda"),
    "SparseGPTPrune": ("sparsegpt", "nncompress.prune.sparsegpt"),
    "StaticInt8Quantize": ("int8-static", "nncompress.quantize.int8"),
    "DynamicInt8Quantize": ("int8-dynamic", "nncompress.quantize.int8"),
    "WeightQuantize": ("weight-quantize", "nncompress.quantize.ptq"),
    "Float16Weights": ("fp16", "nncompress.quantize.ptq"),
    "KMeansQuantize": ("kmeans-quantize", "nncompress.quantize.kmeans"),
    "QuantizationAwareTraining": ("qat", "nncompress.quantize.qat"),
    "Binarize": ("binarize", "nncompress.quantize.binary"),
    "MixedPrecisionQuantize": ("mixed-precision", "nncompress.quantize.mixed"),
    "RTNQuantize": ("rtn", "nncompress.quantize.gptq"),
    "GPTQQuantize": ("gptq", "nncompress.quantize.gptq"),
    "AWQQuantize": ("awq", "nncompress.quantize.awq"),
    "HQQQuantize": ("hqq", "nncompress.quantize.hqq"),
    "TuneScales": ("scale-tune", "nncompress.quantize.scale_tune"),
    "W8A8Quantize": ("w8a8", "nncompress.quantize.smoothquant"),
    "SmoothQuant": ("smoothquant", "nncompress.quantize.smoothquant"),
    "SVDFactorize": ("svd", "nncompress.lowrank.steps"),
    "TuckerFactorize": ("tucker", "nncompress.lowrank.steps"),
    "CPFactorize": ("cp", "nncompress.lowrank.steps"),
    "SpatialSVDFactorize": ("spatial-svd", "nncompress.lowrank.steps"),
    "LowRankBudget": ("lowrank-budget", "nncompress.lowrank.budget"),
}


def step_modules() -> tuple[str, ...]:
    """The modules whose import registers the built-in steps, each once, in table order."""
    return tuple(dict.fromkeys(module for _, module in BUILTIN_STEPS.values()))


def step_module(name: str) -> str | None:
    """The module that defines the built-in step class ``name`` (None: not a built-in step)."""
    entry = BUILTIN_STEPS.get(name)
    return entry[1] if entry else None
