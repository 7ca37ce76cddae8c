"""Which weights a pruning step may touch: Linear and Conv weights, and the gate matrices of
LSTM / GRU / RNN layers (``weight_ih_l*`` / ``weight_hh_l*``), minus configured exclusions."""

from __future__ import annotations

from torch import nn

from nncompress.base.modules import CONV_KINDS, edge_layers
from nncompress.base.selection import check_patterns, is_excluded

PRUNABLE = (nn.Linear, *CONV_KINDS)
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)  # their gate matrices are plain parameters, pruned in place


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear/Conv layer (subclasses included), in definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def recurrent_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every LSTM/GRU/RNN layer, in definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, RECURRENT)]


def gate_weights(name: str, module: nn.Module) -> dict[str, nn.Parameter]:
    """``{"<module>.weight_ih_l0": parameter, ...}``: a recurrent layer's gate matrices (biases left dense)."""
    return {f"{name}.{p}": getattr(module, p) for p in module._flat_weights_names if p.startswith("weight_")}


WEIGHT_ONLY_FOR_RECURRENT = ("wanda",)  # criteria reading a layer's inputs, which a recurrent layer's gates do not have


def recurrent_note(model: nn.Module, criterion: str, exclude: tuple[str, ...], kind: str) -> tuple[bool, str | None]:
    """(whether ``criterion`` can score recurrent gate matrices, the note naming those left dense)."""
    if criterion not in WEIGHT_ONLY_FOR_RECURRENT:
        return True, None
    left = [f"{n} ({type(m).__name__})" for n, m in recurrent_layers(model) if not is_excluded(n, exclude)]
    return False, (f"{kind}: left dense, {criterion} scores no recurrent gates: {', '.join(left)}" if left else None)


def prunable_weights(
    model: nn.Module,
    *,
    keep_first_conv: bool = True,
    keep_classifier: bool = True,
    exclude: tuple[str, ...] = (),
    recurrent: bool = True,
) -> dict[str, nn.Parameter]:
    """``{"<module>.weight": parameter}`` for the Linear/Conv layers a pruner may sparsify, plus
    (``recurrent``) the gate matrices of LSTM/GRU/RNN layers, by parameter name.

    ``exclude`` holds module names or regexes (``base.selection``): a match leaves the module and its
    children dense.
    """
    layers = prunable_layers(model)
    rnns = recurrent_layers(model) if recurrent else []
    check_patterns(model, tuple(exclude), "exclude", list_layers=lambda m: prunable_layers(m) + recurrent_layers(m))
    kept = edge_layers(layers, first_conv=keep_first_conv, classifier=keep_classifier)
    found = {f"{n}.weight": m.weight for n, m in layers if n not in kept and not is_excluded(n, tuple(exclude))}
    for name, module in rnns:
        if not is_excluded(name, tuple(exclude)):
            found.update(gate_weights(name, module))
    return found
