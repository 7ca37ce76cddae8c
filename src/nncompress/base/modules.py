"""Weight layers of a model: which modules a step can handle, which it skips, and how to swap one.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Embedding(4, 2), nn.Linear(2, 1))
    >>> [n for n, _ in weight_layers(model)]
    ['0', '3']
    >>> skipped_layers(model)
    [('2', 'Embedding')]
"""

from __future__ import annotations

from torch import nn

LayerKinds = tuple[type[nn.Module], ...]
# The layer kinds most steps handle: plain (not already replaced) Linear and 2-D convolutions.
LINEAR_CONV: LayerKinds = (nn.Linear, nn.Conv2d)
CONV_KINDS: LayerKinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_layers(model: nn.Module, kinds: LayerKinds = LINEAR_CONV) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module whose type is exactly one of ``kinds``, in definition order.

    Exact types, not ``isinstance``: a layer a step already replaced (a packed or fake-quant
    subclass) is not a plain layer any more.
    """
    return [(n, m) for n, m in model.named_modules() if type(m) in kinds]


def has_weight_matrix(module: nn.Module) -> bool:
    """True when the module itself (not a child) holds a parameter of 2 or more dimensions."""
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


def skipped_layers(model: nn.Module, kinds: LayerKinds = LINEAR_CONV) -> list[tuple[str, str]]:
    """``(name, type name)`` of the weight-bearing modules (a parameter of 2+ dims: Embedding, LSTM,
    Conv1d, MultiheadAttention...) whose type is not one of ``kinds``: what a step should name in its
    notes as left untouched."""
    return [(n, type(m).__name__) for n, m in model.named_modules() if type(m) not in kinds and has_weight_matrix(m)]


def skipped_note(kind: str, skipped: list[tuple[str, str]], limit: int = 6) -> str | None:
    """One note line naming the weight layers a step left as they are, or None when there are none."""
    if not skipped:
        return None
    shown = ", ".join(f"{n} ({t})" for n, t in skipped[:limit]) + (", ..." if len(skipped) > limit else "")
    return f"{kind}: {len(skipped)} weight layer(s) of kinds it does not handle left as they are: {shown}"


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model`` (a dotted path); returns the model (``new`` for name "")."""
    if not name:
        return new
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
    return model


def values_per_channel(module: nn.Module) -> int:
    """Input values of one output channel: in_features, or in_channels / groups * kh * kw."""
    return module.weight[0].numel()


def check_supported(layers: list[tuple[str, nn.Module]]) -> None:
    """Raise ValueError for a convolution whose padding mode the packed layers cannot run."""
    for name, m in layers:
        if isinstance(m, CONV_KINDS) and m.padding_mode != "zeros":
            raise ValueError(
                f"layer {name!r} uses padding_mode={m.padding_mode!r}; packed layers support 'zeros' only "
                "(exclude the layer)"
            )


def edge_layers(layers: list[tuple[str, nn.Module]], *, first_conv: bool, classifier: bool) -> set[str]:
    """Names of the first convolution (``first_conv``) and the last Linear (``classifier``) among
    ``layers``: the layers that see the raw input and produce the logits, the most sensitive ones."""
    convs = [n for n, m in layers if isinstance(m, CONV_KINDS)]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    return set(convs[:1] if first_conv else []) | set(linears[-1:] if classifier else [])
