"""Training: one loop for every step that trains."""

from nncompress.train.loop import TrainConfig, TrainHistory, cross_entropy_loss, fit

__all__ = ["TrainConfig", "TrainHistory", "cross_entropy_loss", "fit"]
