"""Attention heads of models nncompress did not write: where they live, and keeping counts right after a cut.

Three layouts are recognised, each by its layers and sizes, never by class name:

- separate q/k/v projections with an integer head size (``head_dim``, ``attention_head_size`` or
  T5's ``key_value_proj_dim``): Llama / Mistral / Qwen2 / Gemma / Phi / ViT / Whisper
  (``q_proj k_proj v_proj`` + ``o_proj`` / ``dense`` / ``out_proj``), DistilBERT (``q_lin ...
  out_lin``), T5 (``q k v o``) and BERT (``query key value``, the output projection in the sibling
  ``output.dense``). Grouped key/value heads go with the query heads sharing them.
- one fused q|k|v projection: GPT-2's ``c_attn`` / ``c_proj`` (``split_size``) and timm's
  ``qkv`` / ``proj`` (``attn_dim``).
- T5's relative position bias is computed by a stack's first attention and reused by the rest, so
  every attention of a stack that shares it keeps the same heads, and the bias table loses the
  cut heads' columns.

After a cut, :func:`refresh_head_counts` sets the counts the model's code reads (``num_heads``,
``n_heads``, ``num_attention_heads``, ``all_head_size``, ``inner_dim``, ``attn_dim``,
``split_size``, ``num_key_value_groups``) from the weights, and the Hugging Face config's head
fields where every attention it describes agrees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from nncompress.prune.graph import ChannelGroup, Member

QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"), ("query", "key", "value"), ("q", "k", "v"))
OUTPUT_PROJECTIONS = ("o_proj", "dense", "out_proj", "out_lin", "o")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim")
QK_NORMS = ("q_norm", "k_norm", "q_layernorm", "k_layernorm", "rotary_emb")
POSITION_BIAS = "relative_attention_bias"  # T5: an Embedding(buckets, heads) shared down the stack
HEAD_COUNT_ATTRS = ("num_heads", "n_heads", "num_attention_heads")
WIDTH_ATTRS = ("all_head_size", "inner_dim", "attn_dim")
CONFIG_HEAD_FIELDS = ("num_attention_heads", "n_heads", "num_heads")


@dataclass(frozen=True)
class Heads:
    """One attention's heads: full names of its q/k/v and output projections, query heads,
    key/value heads, head size, and the bias table cut with them (T5's), if any."""

    q: str
    k: str
    v: str
    out: str
    heads: int
    kv: int
    head_dim: int
    bias_table: str | None = None


def _passive(module: nn.Module) -> bool:
    return isinstance(module, (nn.Dropout, nn.Identity))


def _head_dim(module: nn.Module) -> int | None:
    for attr in HEAD_DIM_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _output_projection(model: nn.Module, name: str, module: nn.Module, width: int) -> tuple[str | None, str | None]:
    """(full name, child name) of the projection reading the heads: a child, or BERT's ``output.dense``
    beside the ``self`` attention."""
    at = f"{name}." if name else ""
    own = next((n for n in OUTPUT_PROJECTIONS if isinstance(getattr(module, n, None), nn.Linear)), None)
    if own is not None:
        return f"{at}{own}", own
    parent_name, _, leaf = name.rpartition(".")
    if leaf != "self":
        return None, None
    parent = model.get_submodule(parent_name) if parent_name else model
    dense = getattr(getattr(parent, "output", None), "dense", None)
    if isinstance(dense, nn.Linear) and dense.in_features == width:
        return f"{parent_name}.output.dense" if parent_name else "output.dense", None
    return None, None


def separate_heads(model: nn.Module, name: str, module: nn.Module, *, check_groups: bool = True) -> Heads | None:
    """The heads of an attention with separate q/k/v ``nn.Linear`` projections (see the module
    docstring), else None. ``check_groups``: a ``num_key_value_groups`` attribute must match the
    weights (off after a cut, before the counts are refreshed)."""
    names = next((t for t in QKV_NAMES if all(isinstance(getattr(module, n, None), nn.Linear) for n in t)), None)
    hd = _head_dim(module)
    if names is None or hd is None:
        return None
    q, k, v = (getattr(module, n) for n in names)
    out, own = _output_projection(model, name, module, q.out_features)
    if out is None or model.get_submodule(out).in_features != q.out_features:
        return None
    if q.out_features % hd or k.out_features % hd or k.out_features != v.out_features:
        return None
    heads, kv = q.out_features // hd, k.out_features // hd
    groups = getattr(module, "num_key_value_groups", None)
    if heads % kv or (check_groups and groups is not None and groups != heads // kv):
        return None
    table = getattr(module, POSITION_BIAS, None)
    if table is not None and not (isinstance(table, nn.Embedding) and table.embedding_dim == heads and heads == kv):
        return None
    known = {*names, *QK_NORMS, *([own] if own else []), POSITION_BIAS}
    children = module.named_children()
    if any(n not in known and not _passive(c) for n, c in children) or any(True for _ in module.parameters(False)):
        return None
    at = f"{name}." if name else ""
    bias_table = f"{at}{POSITION_BIAS}" if table is not None else None
    return Heads(*(f"{at}{n}" for n in names), out, heads, kv, hd, bias_table)


def attention_heads(module: nn.Module) -> tuple[str, int, int, int] | None:
    """``(output projection, heads, kv_heads, head_dim)`` of an attention whose output projection
    is its own child (see :func:`separate_heads`), else None."""
    found = separate_heads(module, "", module)
    return None if found is None else (found.out, found.heads, found.kv, found.head_dim)


def fused_attention_heads(module: nn.Module) -> tuple[str, str, int, int] | None:
    """``(qkv, output projection, heads, head_dim)`` of an attention writing q|k|v with one
    ``nn.Linear`` (GPT-2's ``c_attn`` after canonicalization, ``split_size`` = heads * head_dim;
    timm's ``qkv``, ``attn_dim``), else None."""
    for qkv_name, out_name, width_attr, known in (
        ("c_attn", "c_proj", "split_size", ("attn_dropout", "resid_dropout")),
        ("qkv", "proj", "attn_dim", ("q_norm", "k_norm", "attn_drop", "proj_drop", "norm")),
    ):
        qkv, proj = getattr(module, qkv_name, None), getattr(module, out_name, None)
        heads, hd, width = (getattr(module, k, None) for k in ("num_heads", "head_dim", width_attr))
        if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (heads, hd, width)
        ):
            continue
        if width != heads * hd or qkv.out_features != 3 * width or proj.in_features != width:
            continue
        if hasattr(module, "q_attn") or getattr(module, "gate", None) is not None:
            continue
        if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity):
            continue  # timm's scale_norm normalizes across heads
        children = module.named_children()
        if any(n not in (qkv_name, out_name, *known) for n, _ in children):
            continue
        return qkv_name, out_name, heads, hd
    return None


def _tie_key(name: str, module: nn.Module) -> str | None:
    """Attentions sharing one position bias (T5's stack) share a key: the name without layer indices."""
    if isinstance(getattr(module, "has_relative_attention_bias", None), bool):
        return re.sub(r"\.\d+(?=\.|$)", ".*", name)
    return None


def attention_head_groups(model: nn.Module, groups: list[ChannelGroup] | None = None) -> list[ChannelGroup]:
    """One group per attention of a model nncompress did not write (see the module docstring):
    its key/value heads, each with the query heads sharing it (q/k/v rows, output-projection
    columns); attentions sharing T5's position bias form one group. Attentions whose tensors
    ``groups`` (from tracing) already hold are left out."""
    taken = {(m.kind, m.name) for g in groups or [] for m in g.members}
    found: list[ChannelGroup] = []
    tied: dict[str, ChannelGroup] = {}
    for name, module in model.named_modules():
        at = f"{name}." if name else ""
        sep, fused = separate_heads(model, name, module), fused_attention_heads(module)
        if sep is not None and sep.kv == 1:  # one key/value head (MQA): its query heads go alone
            kv, hd = sep.heads, sep.head_dim  # the group's channels are the query heads
            members: tuple[Member, ...] = (Member("out", sep.q, 0, hd), Member("in", sep.out, 0, hd))
        elif sep is not None:
            kv, hd, rep = sep.kv, sep.head_dim, sep.heads // sep.kv
            members = (
                Member("out", sep.q, 0, rep * hd),
                Member("out", sep.k, 0, hd),
                Member("out", sep.v, 0, hd),
                Member("in", sep.out, 0, rep * hd),
            )
            if sep.bias_table is not None:
                members += (Member("out", sep.bias_table, 0, 1),)
        elif fused is not None:
            qkv, out, kv, hd = fused  # every head has its own key/value
            members = tuple(Member("out", f"{at}{qkv}", part * kv * hd, hd) for part in range(3))
            members += (Member("in", f"{at}{out}", 0, hd),)
        else:
            continue
        if kv <= 1 or any((m.kind, m.name) in taken for m in members):
            continue
        key = _tie_key(name, module)
        if key is not None and key in tied and tied[key].size == kv:
            tied[key].members += members
            continue
        group = ChannelGroup(kv, members)
        found.append(group)
        if key is not None:
            tied.setdefault(key, group)
    return found


def refresh_head_counts(model: nn.Module) -> list[str]:
    """After heads were cut, set each attention's head counts and widths from its weights, and the
    Hugging Face config's head fields where all its attentions agree; returns notes on what was
    set (and on config fields left, where layers differ)."""
    notes: list[str] = []
    per_config: dict[int, tuple[object, dict[str, set[int]], int]] = {}
    for name, module in model.named_modules():
        counts = _counts_from_weights(model, name, module)
        if counts is None:
            continue
        heads, kv, hd = counts
        changed = _set_counts(module, heads, kv, hd)
        if changed:
            notes.append(f"{name}: {', '.join(changed)}")
        config = getattr(module, "config", None) or getattr(model, "config", None)
        if config is not None:
            entry = per_config.setdefault(id(config), (config, {}, hd))
            side = "encoder" if ".encoder." in f".{name}." else "decoder" if ".decoder." in f".{name}." else ""
            entry[1].setdefault(side, set()).add(heads)
            entry[1].setdefault("kv", set()).add(kv)
    top = getattr(model, "config", None)
    if top is not None and per_config and id(top) not in per_config:  # T5's stacks hold copies of it
        merged: dict[str, set[int]] = {}
        for _, seen, _ in per_config.values():
            for side, values in seen.items():
                merged.setdefault(side, set()).update(values)
        per_config[id(top)] = (top, merged, next(iter(per_config.values()))[2])
    for config, seen, hd in per_config.values():
        owner = "config" if config is top else "a layer's config"
        notes += [f"{owner}{note.removeprefix('config')}" for note in _refresh_config(config, seen, hd)]
    return notes


def _counts_from_weights(model: nn.Module, name: str, module: nn.Module) -> tuple[int, int, int] | None:
    """(heads, kv heads, head size) of an attention as its weights now say."""
    sep = separate_heads(model, name, module, check_groups=False)
    if sep is not None:
        return sep.heads, sep.kv, sep.head_dim
    qkv_name = next((n for n in ("c_attn", "qkv") if isinstance(getattr(module, n, None), nn.Linear)), None)
    hd = getattr(module, "head_dim", None)
    width_attr = "split_size" if qkv_name == "c_attn" else "attn_dim"
    if qkv_name is None or not isinstance(hd, int) or not isinstance(getattr(module, width_attr, None), int):
        return None
    out_features = getattr(module, qkv_name).out_features
    if out_features % (3 * hd):
        return None
    heads = out_features // (3 * hd)
    return heads, heads, hd


def _set_counts(module: nn.Module, heads: int, kv: int, hd: int) -> list[str]:
    """Set the count and width attributes ``module`` has to ``heads`` / ``kv`` / ``hd``; what changed."""
    wanted = {
        **dict.fromkeys(HEAD_COUNT_ATTRS, heads),
        **dict.fromkeys((*WIDTH_ATTRS, "split_size"), heads * hd),
        "num_key_value_heads": kv,
        "num_key_value_groups": heads // kv,
    }
    changed = []
    for attr, value in wanted.items():
        old = getattr(module, attr, None)
        if isinstance(old, int) and not isinstance(old, bool) and old != value:
            setattr(module, attr, value)
            changed.append(f"{attr} {old} -> {value}")
    return changed


def _refresh_config(config: object, seen: dict[str, set[int]], hd: int) -> list[str]:
    """Set a Hugging Face config's head fields where every attention it describes agrees."""
    notes = []
    fields = {side: [f"{side}_attention_heads"] if side else list(CONFIG_HEAD_FIELDS) for side in seen if side != "kv"}
    if any(hasattr(config, f"{side}_attention_heads") for side in ("encoder", "decoder")):
        fields.pop("", None)
    elif "" not in fields and seen.keys() - {"kv"}:  # encoder/decoder paths with one shared field (T5)
        merged = set().union(*(v for k, v in seen.items() if k != "kv"))
        seen, fields = {"": merged, "kv": seen["kv"]}, {"": list(CONFIG_HEAD_FIELDS)}
    changed = False
    for side, names in fields.items():
        for field_name in names:
            old = getattr(config, field_name, None)
            if not isinstance(old, int) or isinstance(old, bool):
                continue
            if len(seen[side]) != 1:
                notes.append(f"config.{field_name} left at {old}: its attentions now hold {sorted(seen[side])} heads")
                continue
            new = next(iter(seen[side]))
            if new != old:
                setattr(config, field_name, new)
                notes.append(f"config.{field_name} {old} -> {new}")
                changed = True
    kv_old = getattr(config, "num_key_value_heads", None)
    if isinstance(kv_old, int) and len(seen.get("kv", ())) == 1 and next(iter(seen["kv"])) != kv_old:
        config.num_key_value_heads = next(iter(seen["kv"]))
        notes.append(f"config.num_key_value_heads {kv_old} -> {config.num_key_value_heads}")
    if changed and getattr(config, "head_dim", None) != hd and hasattr(config, "to_dict"):
        config.head_dim = hd  # hidden_size // heads no longer gives it; ViT and Llama read this field
        notes.append(f"config.head_dim = {hd}")
    return notes
