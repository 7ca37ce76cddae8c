"""Tasks: data, loss, metric and baseline model; the built-in reference tasks and their zoo."""

from nncompress.tasks.batches import TensorBatches
from nncompress.tasks.fmnist import DatasetNotFoundError
from nncompress.tasks.hf import TokenBatches, causal_lm_task, sequence_classification_task
from nncompress.tasks.loading import get, names, task_from_file
from nncompress.tasks.metrics import Metric, MetricAccumulator, higher_is_better, register_metric
from nncompress.tasks.outputs import primary_output
from nncompress.tasks.task import Task

__all__ = [
    "DatasetNotFoundError",
    "Metric",
    "MetricAccumulator",
    "Task",
    "TensorBatches",
    "TokenBatches",
    "causal_lm_task",
    "get",
    "higher_is_better",
    "names",
    "primary_output",
    "register_metric",
    "sequence_classification_task",
    "task_from_file",
]
