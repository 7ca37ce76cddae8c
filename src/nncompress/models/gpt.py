"""A small GPT-style causal language model (decoder-only transformer, Radford et al. 2018/2019).

Built so that per-layer compression reaches every matrix as an ordinary ``nn.Linear``: attention
keeps separate ``q``, ``k``, ``v`` and ``proj`` layers (no fused qkv), the MLP is ``fc1``/GELU/
``fc2``, and the output layer ``lm_head`` is *not* tied to the token embedding. Tying would make one
tensor both an embedding table and a Linear weight, so quantizing or pruning ``lm_head`` would
silently change the embedding too (and an artifact would have to store it twice or special-case
it); untied, each is compressed (or kept) on its own, at the cost of ``vocab * dim`` parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a :class:`GPT`.

    Args:
        vocab_size: number of token ids (256 for byte-level text).
        context: the longest sequence the learned position table covers.
        dim: model width; multiples of 128 let group-128 weight quantization apply everywhere.
        depth: number of transformer blocks.
        num_heads: attention heads (``dim`` must be divisible by it).
        mlp_hidden: width of each block's MLP.
        dropout: dropout on embeddings, attention output and MLP output while training.
    """

    vocab_size: int = 256
    context: int = 128
    dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_hidden: int = 512
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "dim", "depth", "num_heads", "mlp_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"GPTConfig.dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and earlier positions."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, dim)
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            # Heads inferred from the width (-1), so a model whose heads were pruned still runs.
            return y.view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)

        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True)
        return self.drop(self.proj(out.transpose(1, 2).reshape(b, t, -1)))  # (B, T, heads * head_dim)


class MLP(nn.Module):
    """Position-wise feed-forward: Linear-GELU-Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = CausalSelfAttention(config.dim, config.num_heads, config.dropout)
        self.norm2 = nn.LayerNorm(config.dim)
        self.mlp = MLP(config.dim, config.mlp_hidden, config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token + learned position embeddings, pre-norm causal blocks, final LayerNorm, untied head.

    ``forward(input_ids)`` maps token ids ``(B, T)`` (T <= ``config.context``) to next-token
    logits ``(B, T, vocab_size)``: position t's logits predict token t + 1 from tokens 0..t.

    Example:
        >>> model = GPT(GPTConfig(dim=32, depth=1, num_heads=2, mlp_hidden=64, context=16))
        >>> model(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 256])
    """

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GPTConfig()
        self.tok_embed = nn.Embedding(config.vocab_size, config.dim)
        self.pos_embed = nn.Embedding(config.context, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(config.dim)
        self.lm_head = nn.Linear(config.dim, config.vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's scheme: N(0, 0.02) weights, zero biases, and residual-output layers (``proj``,
        ``fc2``) scaled by 1/sqrt(2 * depth) so the residual stream's variance does not grow with depth."""
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # biases stay zero below, LayerNorm keeps (1, 0)
            std = 0.02 / (2 * self.config.depth) ** 0.5 if name.endswith(("proj.weight", "fc2.weight")) else 0.02
            nn.init.normal_(p, 0.0, std)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # input_ids: (B, T)
        t = input_ids.shape[-1]
        if t > self.pos_embed.num_embeddings:
            raise ValueError(f"sequence length {t} exceeds the model's context {self.pos_embed.num_embeddings}")
        positions = torch.arange(t, device=input_ids.device)
        x = self.drop(self.tok_embed(input_ids.long()) + self.pos_embed(positions))  # (B, T, dim)
        return self.lm_head(self.norm(self.blocks(x)))  # (B, T, vocab)
