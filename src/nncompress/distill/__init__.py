"""Knowledge distillation: losses, and the ``distill`` recovery step (teacher = the model before
compression)."""

from nncompress.distill.losses import kd_loss, soft_kl
from nncompress.distill.recovery import Distill

__all__ = ["Distill", "kd_loss", "soft_kl"]
