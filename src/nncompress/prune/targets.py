"""Which weights a pruning step may touch: Linear and Conv weights, minus configured exclusions."""

from __future__ import annotations

from torch import nn

from nncompress.base.modules import CONV_KINDS, edge_layers
from nncompress.base.selection import check_patterns, is_excluded

PRUNABLE = (nn.Linear, *CONV_KINDS)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear/Conv layer (subclasses included), in definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def prunable_weights(
    model: nn.Module,
    *,
    keep_first_conv: bool = True,
    keep_classifier: bool = True,
    exclude: tuple[str, ...] = (),
) -> dict[str, nn.Parameter]:
    """``{"<module>.weight": parameter}`` for the Linear/Conv layers a pruner may sparsify.

    ``exclude`` holds module names or regexes (``base.selection``): a match leaves the module and its
    children dense.
    """
    layers = prunable_layers(model)
    check_patterns(model, tuple(exclude), "exclude", list_layers=prunable_layers)
    kept = edge_layers(layers, first_conv=keep_first_conv, classifier=keep_classifier)
    return {f"{n}.weight": m.weight for n, m in layers if n not in kept and not is_excluded(n, tuple(exclude))}
