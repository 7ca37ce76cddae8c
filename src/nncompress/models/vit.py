"""A small Vision Transformer (Dosovitskiy et al. 2021): patch embedding, class token, pre-norm blocks.

Attention keeps separate q/k/v projections and an explicit head count so that later steps
(head pruning, low-rank, quantization) can reach each piece as an ordinary ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v and output projections."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
            head_dim = dim // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q, self.k, self.v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:  # x: (B, T, dim)
        """Attention of every token (or, with ``queries``, of only the first ``queries`` tokens) over
        all tokens: (B, T or queries, dim)."""
        b, t, _ = x.shape
        tq = t if queries is None else queries
        q = self.q(x if queries is None else x[:, :queries]).view(b, tq, self.num_heads, self.head_dim)
        k = self.k(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)
        v = self.v(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v)  # (B, heads, tq, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, tq, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """Transformer feed-forward: Linear-GELU-Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), MultiHeadSelfAttention(dim, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """The block on every token, or (``keep``) only the first ``keep`` tokens' outputs, which
        still attend to all tokens: (B, T or keep, dim)."""
        residual = x if keep is None else x[:, :keep]
        x = residual + self.attn(self.norm1(x), queries=keep)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patchify with a strided conv, prepend a class token, add learned positions, classify it.

    The head reads only the class token, so the last block computes only that token's output
    (its attention over all tokens and its MLP): the same logits as the full last block, with
    about three quarters of that block's work skipped. ``cls_only_last_block=False`` runs it on
    every token (e.g. to read all the last block's token features with a hook).
    """

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 4,
        in_channels: int = 1,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_hidden: int = 128,
        num_classes: int = 10,
        cls_only_last_block: bool = True,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads, mlp_hidden) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)
        self.cls_only_last_block = cls_only_last_block

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, patches, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, patches + 1, dim)
        if getattr(self, "cls_only_last_block", False) and len(self.blocks):  # (older artifacts lack the flag)
            *first, last = self.blocks
            for block in first:
                x = block(x)
            x = last(x, keep=1)
        else:
            x = self.blocks(x)
        return self.head(self.norm(x)[:, 0])
