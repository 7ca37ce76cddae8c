"""Module surgery: cut given channels out of layers so the model physically shrinks.

Each function takes the indices to *keep* (a 1-D LongTensor, ascending; ``None`` keeps all),
replaces the affected parameters and buffers with smaller ones, updates the size attributes
(``out_features``, ``in_channels``, ``groups``, ``num_heads`` ...) that ``repr`` and the saved
skeleton rely on, and returns the *slicers* it applied: ``{local tensor name: fn}``, where
``fn`` maps a tensor of the old shape to the new one. Callers reuse them to cut anything shaped
like a parameter, e.g. the boolean masks of earlier pruning steps.

Deciding *which* channels go (and which layers must lose the same ones) is ``graph.py``'s job.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nncompress.models.vit import MultiHeadSelfAttention

Slicer = Callable[[torch.Tensor], torch.Tensor]
Slicers = dict[str, Slicer]
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)  # hidden units cut as channels (without proj_size)


def rnn_gates(m: nn.Module) -> int:
    """Gate blocks stacked in a recurrent layer's weight rows: 4 (LSTM), 3 (GRU), 1 (RNN)."""
    return m.weight_ih_l0.shape[0] // m.hidden_size


def along(dim: int, keep: torch.Tensor) -> Slicer:
    """A slicer that keeps ``keep`` along ``dim``."""
    return lambda t: t.index_select(dim, keep.to(t.device))


def _replace(module: nn.Module, name: str, slicer: Slicer) -> None:
    """Swap parameter or buffer ``name`` of ``module`` for its sliced copy (no-op when None)."""
    if name in module._parameters:
        old = module._parameters[name]
        if old is not None:
            new = slicer(old.detach()).clone()
            module._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)
    elif module._buffers.get(name) is not None:
        module._buffers[name] = slicer(module._buffers[name]).clone()


def _apply(module: nn.Module, slicers: Slicers) -> Slicers:
    for name, slicer in slicers.items():
        owner, _, leaf = name.rpartition(".")
        _replace(module.get_submodule(owner) if owner else module, leaf, slicer)
    return slicers


def _then(first: Slicer, second: Slicer) -> Slicer:
    return lambda t: second(first(t))


def cut_linear(m: nn.Linear, out_keep: torch.Tensor | None = None, in_keep: torch.Tensor | None = None) -> Slicers:
    """Keep rows ``out_keep`` (output features) and columns ``in_keep`` (input features)."""
    slicers: Slicers = {}
    if out_keep is not None:
        slicers["weight"] = along(0, out_keep)
        slicers["bias"] = along(0, out_keep)
        m.out_features = len(out_keep)
    if in_keep is not None:
        cols = along(1, in_keep)
        slicers["weight"] = _then(slicers["weight"], cols) if "weight" in slicers else cols
        m.in_features = len(in_keep)
    return _apply(m, slicers)


def _group_columns(
    m: nn.Conv1d | nn.Conv2d | nn.Conv3d, out_keep: torch.Tensor, in_keep: torch.Tensor
) -> tuple[int, torch.Tensor]:
    """New group count and, per kept output row, the local input columns it keeps: (out', in'/g').

    Groups that lose all their outputs must lose all their inputs too, and every surviving group
    must keep the same number of each (a convolution's groups are equal-sized).
    """
    g = m.groups
    per_in, per_out = m.in_channels // g, m.out_channels // g
    out_counts = torch.bincount(out_keep // per_out, minlength=g)
    in_counts = torch.bincount(in_keep // per_in, minlength=g)
    alive = out_counts > 0
    if (
        (in_counts[~alive] > 0).any()
        or len(set(out_counts[alive].tolist())) > 1
        or len(set(in_counts[alive].tolist())) > 1
        or (in_counts[alive] == 0).any()
    ):
        raise ValueError(
            f"unbalanced cut of a grouped convolution (groups={g}): kept outputs per group "
            f"{out_counts.tolist()}, kept inputs per group {in_counts.tolist()}"
        )
    local = [in_keep[in_keep // per_in == grp] - grp * per_in for grp in range(g)]
    cols = torch.stack([local[int(grp)] for grp in out_keep // per_out])
    return int(alive.sum()), cols


def cut_conv(
    m: nn.Conv1d | nn.Conv2d | nn.Conv3d,
    out_keep: torch.Tensor | None = None,
    in_keep: torch.Tensor | None = None,
) -> Slicers:
    """Keep output channels ``out_keep`` and input channels ``in_keep``, grouped convs included.

    Weight is (out, in / groups, *kernel). With groups, each output row keeps the columns of the
    inputs kept in its own group; a depthwise conv that loses an input loses the whole group.
    """
    out_keep = torch.arange(m.out_channels) if out_keep is None else out_keep.cpu()
    in_keep = torch.arange(m.in_channels) if in_keep is None else in_keep.cpu()
    groups, cols = _group_columns(m, out_keep, in_keep)

    def weight(t: torch.Tensor) -> torch.Tensor:
        rows = t.index_select(0, out_keep.to(t.device))  # (out', in/g, *k)
        index = cols.to(t.device).reshape(*cols.shape, *[1] * (t.dim() - 2))
        return rows.gather(1, index.expand(*cols.shape, *t.shape[2:]))  # (out', in'/g', *k)

    m.out_channels, m.in_channels, m.groups = len(out_keep), len(in_keep), groups
    return _apply(m, {"weight": weight, "bias": along(0, out_keep)})


def cut_batchnorm(m: nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d, keep: torch.Tensor) -> Slicers:
    """Keep features ``keep`` of a BatchNorm: affine parameters and running statistics."""
    m.num_features = len(keep)
    names = ("weight", "bias", "running_mean", "running_var")
    return _apply(m, {n: along(0, keep) for n in names})


def cut_layernorm(m: nn.LayerNorm, keep: torch.Tensor) -> Slicers:
    """Keep features ``keep`` of a LayerNorm over one (the last) dimension."""
    if len(m.normalized_shape) != 1:
        raise ValueError(f"can only cut a LayerNorm over one dimension, got {m.normalized_shape}")
    m.normalized_shape = (len(keep),)
    return _apply(m, {"weight": along(0, keep), "bias": along(0, keep)})


def cut_embedding(m: nn.Embedding, keep: torch.Tensor) -> Slicers:
    """Keep embedding dimensions ``keep`` (columns of the table)."""
    m.embedding_dim = len(keep)
    return _apply(m, {"weight": along(1, keep)})


def cut_attention(
    m: MultiHeadSelfAttention,
    out_keep: torch.Tensor | None = None,
    in_keep: torch.Tensor | None = None,
) -> Slicers:
    """Cut the model width that attention reads (q/k/v inputs) and writes (proj outputs)."""
    slicers: Slicers = {}
    if in_keep is not None:
        for name in ("q", "k", "v"):
            slicers.update({f"{name}.{k}": s for k, s in cut_linear(getattr(m, name), None, in_keep).items()})
    if out_keep is not None:
        slicers.update({f"proj.{k}": s for k, s in cut_linear(m.proj, out_keep, None).items()})
    return slicers


def cut_heads(m: MultiHeadSelfAttention, keep_heads: torch.Tensor) -> Slicers:
    """Keep attention heads ``keep_heads``: their q/k/v output rows and proj input columns."""
    d = m.head_dim
    rows = (keep_heads.cpu()[:, None] * d + torch.arange(d)).flatten()  # (kept * head_dim,)
    slicers: Slicers = {}
    for name in ("q", "k", "v"):
        slicers.update({f"{name}.{k}": s for k, s in cut_linear(getattr(m, name), rows).items()})
    slicers.update({f"proj.{k}": s for k, s in cut_linear(m.proj, None, rows).items()})
    m.num_heads = len(keep_heads)
    return slicers


def cut_rnn(m: nn.Module, out_keep: torch.Tensor | None = None, in_keep: torch.Tensor | None = None) -> Slicers:
    """Keep input features ``in_keep`` (columns of the first layer's ``weight_ih``) and the hidden
    units whose gate rows ``out_keep`` holds (rows ``g * hidden + u`` of every gate ``g``: the same
    units in every layer and direction, as ``hidden_size`` is one number): their rows in every gate
    matrix and bias, their columns in ``weight_hh`` and in the next layer's ``weight_ih``."""
    if getattr(m, "proj_size", 0):
        raise ValueError(f"cannot cut hidden units of a {type(m).__name__} with proj_size={m.proj_size}")
    slicers: Slicers = {}
    dirs = ("", "_reverse") if m.bidirectional else ("",)
    if in_keep is not None:
        for d in dirs:
            slicers[f"weight_ih_l0{d}"] = along(1, in_keep)
        m.input_size = len(in_keep)
    if out_keep is not None:
        hidden, gates = m.hidden_size, rnn_gates(m)
        units = out_keep[out_keep < hidden]
        rows = torch.cat([units + g * hidden for g in range(gates)])
        if not torch.equal(torch.sort(out_keep).values, torch.sort(rows).values):
            raise ValueError(f"{type(m).__name__}: the kept gate rows must be whole hidden units in every gate")
        cols = torch.cat([units + i * hidden for i in range(len(dirs))])  # the layer below's output features
        for layer in range(m.num_layers):
            for d in dirs:
                ih = along(0, rows) if layer == 0 else _then(along(0, rows), along(1, cols))
                first = slicers.get(f"weight_ih_l{layer}{d}")
                slicers[f"weight_ih_l{layer}{d}"] = _then(first, ih) if first is not None else ih
                slicers[f"weight_hh_l{layer}{d}"] = _then(along(0, rows), along(1, units))
                for b in ("bias_ih", "bias_hh"):
                    if m.bias:
                        slicers[f"{b}_l{layer}{d}"] = along(0, rows)
        m.hidden_size = len(units)
    _apply(m, slicers)
    m._init_flat_weights()  # the flat weight list still points at the old parameters
    return slicers


def cut_parameter(owner: nn.Module, name: str, dim: int, keep: torch.Tensor) -> Slicers:
    """Keep ``keep`` along ``dim`` of a free parameter or buffer (e.g. a ViT's ``pos_embed``)."""
    return _apply(owner, {name: along(dim, keep)})


def channel_counts(m: nn.Module) -> tuple[int, int]:
    """(output channels, input channels) of a layer the cutters know, as pruning sees them."""
    if isinstance(m, nn.Linear):
        return m.out_features, m.in_features
    if isinstance(m, CONVS):
        return m.out_channels, m.in_channels
    if isinstance(m, BATCHNORMS):
        return m.num_features, m.num_features
    if isinstance(m, nn.LayerNorm):
        return m.normalized_shape[-1], m.normalized_shape[-1]
    if isinstance(m, nn.Embedding):
        return m.embedding_dim, m.num_embeddings
    if isinstance(m, MultiHeadSelfAttention):
        return m.proj.out_features, m.q.in_features
    if isinstance(m, RECURRENT):
        return rnn_gates(m) * m.hidden_size, m.input_size
    raise TypeError(f"no channel surgery for {type(m).__name__}")


def cut_module(m: nn.Module, out_keep: torch.Tensor | None = None, in_keep: torch.Tensor | None = None) -> Slicers:
    """Dispatch to the cutter for ``m``'s type. Norm layers and embeddings use ``out_keep`` only."""
    if isinstance(m, nn.Linear):
        return cut_linear(m, out_keep, in_keep)
    if isinstance(m, CONVS):
        return cut_conv(m, out_keep, in_keep)
    if isinstance(m, MultiHeadSelfAttention):
        return cut_attention(m, out_keep, in_keep)
    if isinstance(m, RECURRENT):
        return cut_rnn(m, out_keep, in_keep)
    if in_keep is not None:
        raise ValueError(f"{type(m).__name__} has no separate input channels to cut")
    if out_keep is None:
        return {}
    if isinstance(m, BATCHNORMS):
        return cut_batchnorm(m, out_keep)
    if isinstance(m, nn.LayerNorm):
        return cut_layernorm(m, out_keep)
    if isinstance(m, nn.Embedding):
        return cut_embedding(m, out_keep)
    raise TypeError(f"no channel surgery for {type(m).__name__}")
