"""A tiny randomly initialized decoder-only transformer and helpers for the one-shot compression tests.

Pre-norm blocks in an ``nn.ModuleList`` named ``blocks`` (separate q/k/v/proj Linears, an MLP
fc1/fc2), token-id inputs, an LM head: the shape the sequential engine must handle, independent
of the package's own GPT model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nc
from nncompress.tasks.batches import TensorBatches


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim)
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:  # (B, heads, T, head_dim)
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.fc1, self.act, self.fc2 = (
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyLM(nn.Module):
    """Token ids (B, T) -> logits (B, T, vocab)."""

    def __init__(self, vocab: int = 48, dim: int = 32, depth: int = 2, heads: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.1)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def tiny_lm(seed: int = 0, outliers: bool = True, **kwargs: int) -> TinyLM:
    """A TinyLM whose norms scale a few channels up (like the outlier features of real LLMs)."""
    torch.manual_seed(seed)
    model = TinyLM(**kwargs).eval()
    if outliers:
        with torch.no_grad():
            for block in model.blocks:
                for norm in (block.norm1, block.norm2):
                    norm.weight[:3] = torch.tensor([12.0, -9.0, 7.0])
                    norm.bias.normal_(0, 0.1)
    return model


def lm_task(vocab: int = 48, n: int = 64, seq: int = 16, seed: int = 1) -> nc.Task:
    """Random token sequences; the target is the next token (loss and metric barely matter here)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    targets = torch.roll(ids, -1, dims=1)
    batches = TensorBatches(ids, targets, batch_size=16)
    return nc.Task(
        name="tiny-lm",
        train=batches,
        val=batches,
        test=batches,
        baseline=tiny_lm,
        loss=lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten()),
        metric=lambda out, y: float((out.argmax(-1) == y).float().mean()),
    )


def outlier_inputs(rows: int, features: int, seed: int = 0, outliers: tuple[int, ...] = (1, 5, 9)) -> torch.Tensor:
    """Correlated inputs (a fixed low-rank mix plus noise) whose ``outliers`` columns are ~20x larger;
    ``seed`` draws the rows, so two seeds give two samples of one distribution."""
    mix = torch.randn(features // 2, features, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features // 2, generator=g) @ mix / features**0.5 + 0.3 * torch.randn(
        rows, features, generator=g
    )
    x[:, list(outliers)] *= 20.0
    return x


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||X W^T - X Ŵ^T||_F: the layer-output error every one-shot method minimizes."""
    return float((x @ (w - w_hat).T).norm())
