"""Tasks: data, loss, metric and baseline model; the built-in reference tasks and their zoo."""

from nncompress.tasks.batches import TensorBatches
from nncompress.tasks.fmnist import DatasetNotFoundError
from nncompress.tasks.loading import get, names, task_from_file
from nncompress.tasks.metrics import Metric, higher_is_better, register_metric
from nncompress.tasks.task import Task

__all__ = [
    "DatasetNotFoundError",
    "Metric",
    "Task",
    "TensorBatches",
    "get",
    "higher_is_better",
    "names",
    "register_metric",
    "task_from_file",
]
