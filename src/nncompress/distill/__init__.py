"""Knowledge distillation: losses, and the ``distill`` recovery step (teacher = the model before
compression)."""

from nncompress.distill.losses import (
    attention_map_loss,
    attention_probs,
    attention_transfer,
    hidden_state_loss,
    hint_loss,
    kd_loss,
    make_adapter,
    mse_logits,
    rkd_angle,
    rkd_distance,
    soft_kl,
)
from nncompress.distill.recovery import Distill

__all__ = [
    "Distill",
    "kd_loss",
    "soft_kl",
    "attention_map_loss",
    "attention_probs",
    "attention_transfer",
    "hidden_state_loss",
    "hint_loss",
    "make_adapter",
    "mse_logits",
    "rkd_angle",
    "rkd_distance",
]

# Student builders and teacher assistants (the ``distill-student`` step).
from nncompress.distill.assistants import DistillStudent, assistant_chain, assistant_sizes  # noqa: E402
from nncompress.distill.students import narrower, shallower, student_for  # noqa: E402

__all__ += ["DistillStudent", "assistant_chain", "assistant_sizes", "narrower", "shallower", "student_for"]

# The general distillation trainer (feature capture, layer mapping, checkpoints, DDP).
from nncompress.distill.features import FeatureCapture, auto_layer_pairs  # noqa: E402
from nncompress.distill.trainer import DistillConfig, DistillHistory, DistillLoss, distill  # noqa: E402

__all__ += ["DistillConfig", "DistillHistory", "DistillLoss", "FeatureCapture", "auto_layer_pairs", "distill"]
