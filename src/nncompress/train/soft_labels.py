"""Soft labels (Hinton et al. 2015): the loss every fine-tuning step can mix in from a teacher.

It lives in ``train/`` because fine-tuning, QAT, pruning schedules and distillation all use it;
``distill.losses`` re-exports it beside the feature and relation losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch.

    The T^2 factor keeps the soft-label gradients' scale independent of T.

    Example:
        >>> soft_kl(torch.zeros(2, 3), torch.zeros(2, 3), 4.0)
        tensor(0.)
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(student / temperature, dim=-1)
    log_q = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * temperature**2


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, hard: torch.Tensor, *, alpha: float, temperature: float
) -> torch.Tensor:
    """``alpha * soft_kl + (1 - alpha) * hard``: soft labels mixed with the task's hard-label loss."""
    return alpha * soft_kl(student, teacher, temperature) + (1.0 - alpha) * hard
