"""nncompress: make trained PyTorch models smaller and faster, and report honestly what it cost.

Example:
    >>> import nncompress as nc
    >>> task = nc.tasks.get("fmnist-mlp")  # doctest: +SKIP
    >>> result = nc.compress(task.baseline(), [nc.MagnitudePrune(sparsity=0.9), nc.FineTune()], task)  # doctest: +SKIP
    >>> nc.save(result.model, "mlp.ncz")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from nncompress import tasks
from nncompress.core.compress import CompressionReport, Result, compress
from nncompress.core.recipe import load_recipe
from nncompress.core.step import STEPS, Step, StepContext, register_step
from nncompress.io.artifact import ArtifactError, load, save
from nncompress.measure.report import MeasureConfig, Report, measure
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
from nncompress.tasks.task import Task
from nncompress.train.finetune import FineTune

__all__ = [
    "ChannelPrune", "GradualPrune", "HeadPrune", "IterativePrune", "LotteryTicket", "NMPrune",
    "UnstructuredPrune",
    "STEPS",
    "ArtifactError",
    "CompressionReport",
    "FineTune",
    "MagnitudePrune",
    "MeasureConfig",
    "Report",
    "Result",
    "Step",
    "StepContext",
    "Task",
    "compress",
    "load",
    "load_recipe",
    "measure",
    "register_step",
    "save",
    "tasks",
]
