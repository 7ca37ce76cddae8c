"""Canonical layers: foreign weight layers rewritten as plain ``nn.Linear`` so every step sees them.

Steps find their layers by type (``nn.Linear``, ``nn.Conv1d``/``Conv2d``). Two common layer kinds
hide their matrices from that search without changing what they compute:

- Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2, GPT, ImageGPT): ``x @ W + b`` with
  ``W`` shaped ``(in, out)``, a transposed Linear. It becomes ``nn.Linear`` holding ``W.T``.
- ``nn.MultiheadAttention`` (torchvision ViT, ``nn.Transformer*``, many others): its q/k/v
  projections live in one fused ``in_proj_weight`` run by a fused kernel, and its ``out_proj``
  is a ``NonDynamicallyQuantizableLinear``. It becomes :class:`ProjectedMultiheadAttention`,
  with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` ``nn.Linear`` layers and the same
  forward contract, so pruning, quantization and factorization reach the projections and ONNX
  export writes MatMul/Softmax instead of the fused op.

:func:`canonicalize` rewrites a model in place, outputs unchanged (to float rounding), and
returns one :class:`Replacement` per layer rewritten, plus those it left alone and why. A
registry (:data:`CANONICALIZERS`) holds one rule per foreign kind.

Example:
    >>> model = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True))
    >>> [r.line() for r in canonicalize(model).replaced]
    ['0: MultiheadAttention -> ProjectedMultiheadAttention']
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Replacement:
    """One layer rewritten by :func:`canonicalize`: its dotted name, old and new type names."""

    name: str
    old: str
    new: str

    def line(self) -> str:
        """``"name: Old -> New"`` for logs and step notes."""
        return f"{self.name or '<model>'}: {self.old} -> {self.new}"


@dataclass
class CanonicalResult:
    """What :func:`canonicalize` did: the (same, or new root) model, layers replaced and left."""

    model: nn.Module
    replaced: list[Replacement] = field(default_factory=list)
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, why it was left)

    def log_lines(self) -> list[str]:
        """One line per layer replaced or left, for ``ctx.log``."""
        lines = [f"canonical: {r.line()}" for r in self.replaced]
        lines += [f"canonical: kept {n} ({t}): {why}" for n, t, why in self.kept]
        return lines


@dataclass(frozen=True)
class Canonicalizer:
    """A rule: ``matches(module)`` says it applies; ``convert(module)`` returns the replacement or
    a string saying why this instance is left as it is."""

    kind: str
    matches: Callable[[nn.Module], bool]
    convert: Callable[[nn.Module], nn.Module | str]


CANONICALIZERS: dict[str, Canonicalizer] = {}


def register_canonicalizer(rule: Canonicalizer) -> Canonicalizer:
    """Add a rule to :data:`CANONICALIZERS` (ValueError if its kind is taken)."""
    if rule.kind in CANONICALIZERS:
        raise ValueError(f"canonicalizer {rule.kind!r} is already registered")
    CANONICALIZERS[rule.kind] = rule
    return rule


# --- Hugging Face Conv1D ---------------------------------------------------------------------


def _is_hf_conv1d(module: nn.Module) -> bool:
    """A ``transformers.pytorch_utils.Conv1D`` (checked without importing transformers)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    cls = getattr(utils, "Conv1D", None) if utils is not None else None
    return cls is not None and isinstance(module, cls)


def conv1d_to_linear(module: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` computing what an HF ``Conv1D`` (weight ``(in, out)``) computes."""
    weight = module.weight  # (in, out)
    bias = getattr(module, "bias", None)
    linear = nn.Linear(
        weight.shape[0], weight.shape[1], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight.detach().T)
        if bias is not None:
            linear.bias.copy_(bias.detach())
    linear.weight.requires_grad_(weight.requires_grad)
    linear.train(module.training)
    return linear


register_canonicalizer(Canonicalizer("hf-conv1d", _is_hf_conv1d, conv1d_to_linear))


# --- nn.MultiheadAttention -------------------------------------------------------------------


def _float_mask(mask: torch.Tensor | None, dtype: torch.dtype, name: str) -> torch.Tensor | None:
    """A bool mask (True = not allowed) as an additive float mask; a float mask as is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise ValueError(f"{name} must be a bool or float tensor, got dtype {mask.dtype}")
    return mask.to(dtype)


class ProjectedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linears.

    Same forward contract: ``forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False) -> (output, weights | None)``,
    batched or unbatched inputs, ``batch_first``, bool or float masks, ``kdim``/``vdim``, dropout on
    the attention weights while training. The number of heads is read from the projections at run
    time (``q_proj`` outputs / ``head_dim``), so a step that removes whole heads keeps it right.
    ``bias_k``/``bias_v``/``add_zero_attn`` are not supported (:func:`from_mha` refuses them).

    ``in_proj_weight``/``in_proj_bias`` are None and ``_qkv_same_embed_dim`` False: that keeps
    ``nn.TransformerEncoderLayer`` off its fused fast path, which reads the fused weight.

    Example:
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
        >>> x = torch.randn(2, 5, 8)
        >>> torch.allclose(ProjectedMultiheadAttention.from_mha(mha)(x, x, x)[0], mha(x, x, x)[0], atol=1e-6)
        True
    """

    in_proj_weight = None
    in_proj_bias = None
    bias_k = None
    bias_v = None
    add_zero_attn = False
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = float(dropout), batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> ProjectedMultiheadAttention:
        """The equivalent module holding copies of ``mha``'s projections (ValueError for bias_k/add_zero_attn)."""
        if mha.bias_k is not None or mha.bias_v is not None or mha.add_zero_attn:
            raise ValueError("nn.MultiheadAttention with bias_k/bias_v or add_zero_attn is not supported")
        ref = mha.out_proj.weight
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device=ref.device,
            dtype=ref.dtype,
        )
        e = mha.embed_dim
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().split(e)
        else:
            weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        biases = mha.in_proj_bias.detach().split(e) if mha.in_proj_bias is not None else (None,) * 3
        with torch.no_grad():
            for proj, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight.detach())
            if mha.out_proj.bias is not None and new.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias.detach())
        new.train(mha.training)
        return new

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # (L, E): a batch of one, batch first
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        b, tgt, src = q.shape[0], q.shape[1], k.shape[1]
        q = q.reshape(b, tgt, -1, self.head_dim).transpose(1, 2)  # (B, H, L, D)
        k = k.reshape(b, src, -1, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        v = v.reshape(b, src, q.shape[1], -1).transpose(1, 2)  # (B, H, S, Dv)
        dtype = q.dtype
        mask = _float_mask(attn_mask, dtype, "attn_mask")
        if mask is None and is_causal:
            mask = _float_mask(torch.ones(tgt, src, dtype=torch.bool, device=q.device).triu(1), dtype, "attn_mask")
        if mask is not None and mask.dim() == 3:  # (B * H, L, S)
            mask = mask.reshape(b, -1, tgt, src)
        pad = _float_mask(key_padding_mask, dtype, "key_padding_mask")
        if pad is not None:  # (B, S)
            mask = pad[:, None, None, :] if mask is None else mask + pad[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, H, L, S)
            weights = (scores if mask is None else scores + mask).softmax(dim=-1)
            if dropout:  # as nn.MultiheadAttention: the returned weights are the dropped-out ones
                weights = F.dropout(weights, p=dropout)
            out = weights @ v
        else:  # one fused kernel (and one ONNX Attention pattern) where the weights are not returned
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, tgt, -1)  # (B, L, H * Dv)
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is None:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, (weights if batched else weights.squeeze(0))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _mha_to_projected(module: nn.Module) -> nn.Module | str:
    try:
        return ProjectedMultiheadAttention.from_mha(module)  # type: ignore[arg-type]
    except ValueError as e:
        return str(e)


register_canonicalizer(
    Canonicalizer("multihead-attention", lambda m: type(m) is nn.MultiheadAttention, _mha_to_projected)
)


# --- the pass ----------------------------------------------------------------------------------


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _unnest_encoders(model: nn.Module) -> list[str]:
    """Turn off ``nn.TransformerEncoder``'s nested-tensor path where its layers' attention was
    rewritten: that path packs padded batches for the fused kernel only the original runs."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoder) and getattr(module, "use_nested_tensor", False):
            first = module.layers[0] if len(module.layers) else None
            if isinstance(getattr(first, "self_attn", None), ProjectedMultiheadAttention):
                module.use_nested_tensor = False
                names.append(name)
    return names


def canonicalize(model: nn.Module, *, kinds: tuple[str, ...] | None = None) -> CanonicalResult:
    """Rewrite every foreign layer that a rule in :data:`CANONICALIZERS` matches, in place.

    Args:
        model: any ``nn.Module``; modified in place (``result.model`` is it, or its replacement
            when the root itself was rewritten).
        kinds: rule kinds to apply (None: all registered), e.g. ``("hf-conv1d",)``.

    Outputs stay equal to float rounding; modules inside a rewritten one are not visited again.

    Example:
        >>> res = canonicalize(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True))
        >>> res.replaced[0].new, type(res.model.self_attn.q_proj).__name__
        ('ProjectedMultiheadAttention', 'Linear')
    """
    rules = list(CANONICALIZERS.values()) if kinds is None else [_rule(k) for k in kinds]
    result = CanonicalResult(model)
    done: list[str] = []
    for name, module in list(model.named_modules()):
        if any(name.startswith(f"{d}.") for d in done):
            continue
        rule = next((r for r in rules if r.matches(module)), None)
        if rule is None:
            continue
        new = rule.convert(module)
        if isinstance(new, str):
            result.kept.append((name, type(module).__name__, new))
            continue
        if name:
            _set(model, name, new)
        else:
            result.model = new
        done.append(name)
        result.replaced.append(Replacement(name, type(module).__name__, type(new).__name__))
    for name in _unnest_encoders(result.model):
        result.kept.append((name, "TransformerEncoder", "use_nested_tensor turned off (attention rewritten)"))
    return result


def _rule(kind: str) -> Canonicalizer:
    if kind not in CANONICALIZERS:
        raise ValueError(f"unknown canonical layer kind {kind!r}; accepted: {', '.join(CANONICALIZERS)}")
    return CANONICALIZERS[kind]
