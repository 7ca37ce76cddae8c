"""LAMP (Lee et al. 2021): w^2 over the sum of w^2 of the layer's weights at least as large, so one
global ranking allocates sparsity across layers sensibly. Unstructured only."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from nncompress.prune import importance
from nncompress.prune.criteria.base import Criterion, register_criterion


@register_criterion("lamp")
class LAMP(Criterion):
    """Magnitude rescaled per layer (each layer's largest weight scores 1)."""

    structured = False

    def tensor_scores(self, t: torch.Tensor, name: str, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return importance.lamp(t)
