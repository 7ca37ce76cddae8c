"""Model selection on the validation split: keep the weights of the best checkpoint seen while
training, not the last (early stopping without stopping). The test split stays untouched."""

from __future__ import annotations

import copy

import torch
from torch import nn

from nncompress.measure.metric import evaluate
from nncompress.tasks.task import Task


class BestOnValidation:
    """Evaluates ``model`` on ``task.val`` at the checkpoints it is shown; ``restore`` loads the best.

    Example:
        >>> best = BestOnValidation(task)  # doctest: +SKIP
        >>> best.check(model, step)       # at each epoch end  # doctest: +SKIP
        >>> best.restore(model)           # doctest: +SKIP
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.value: float | None = None
        self.step: int | None = None
        self.checked = 0
        self._state: dict[str, torch.Tensor] | None = None

    def check(self, model: nn.Module, step: int) -> None:
        """Evaluate now (training mode is restored afterwards); remember the weights if they are the best."""
        value = evaluate(model, self.task.val, self.task.metric_fn)
        self.checked += 1
        if self.value is None or (value > self.value if self.task.higher_is_better else value < self.value):
            self.value, self.step = value, step
            self._state = copy.deepcopy(model.state_dict())

    def restore(self, model: nn.Module) -> None:
        """Load the best checkpoint's weights into ``model`` (nothing to do before any check)."""
        if self._state is not None:
            model.load_state_dict(self._state)

    def describe(self) -> str:
        """For a log line: which checkpoint won, with its validation metric."""
        if self.step is None:
            return "no validation checkpoint"
        return f"best on val at step {self.step} of {self.checked} checked ({self.task.metric_name} {self.value:.4f})"
