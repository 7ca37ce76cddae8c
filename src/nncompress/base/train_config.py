"""``TrainConfig``: how to train (optimizer, schedule, length), in the low layer so that the model zoo
(``tasks/zoo.py``) can declare its baselines' training without importing the training loop."""

from __future__ import annotations

from dataclasses import dataclass

from nncompress.base.checks import check_count, check_number
from nncompress.base.settings import MAX_EPOCHS, OPTIMIZERS


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, schedule, length. Defaults suit fine-tuning a small model."""

    epochs: float = 1.0
    lr: float = 1e-3
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | onecycle | constant
    warmup_fraction: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        check_number("epochs", self.epochs, low=0, high=MAX_EPOCHS, low_open=True)
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("weight_decay", self.weight_decay, low=0)
        if self.max_steps is not None:
            check_count("max_steps", self.max_steps)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "onecycle", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'onecycle' or 'constant', got {self.schedule!r}")
