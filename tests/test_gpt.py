"""The small GPT: shapes, causality, layer layout for per-layer compression, save/load, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.models import GPT, GPTConfig
from nncompress.tasks.metrics import perplexity, token_cross_entropy

TINY = GPTConfig(vocab_size=32, context=16, dim=32, depth=2, num_heads=4, mlp_hidden=64)


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY).eval()


def test_logits_shape_and_shorter_sequences():
    model = tiny()
    assert model(torch.zeros(3, 16, dtype=torch.long)).shape == (3, 16, 32)
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 32)


def test_longer_than_context_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds the model's context 16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_causal_changing_a_token_leaves_earlier_logits_unchanged():
    model = tiny()
    x = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    t = 9
    y[:, t] = (y[:, t] + 1) % 32
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().max() > 1e-4  # and later positions do see it


def test_layers_are_separate_linears_and_the_head_is_untied():
    model = GPT()  # the reference shape
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for i in range(4):
        for leaf in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2"):
            assert f"blocks.{i}.{leaf}" in names
    assert "lm_head" in names
    assert model.lm_head.weight.data_ptr() != model.tok_embed.weight.data_ptr()
    # every Linear's input width is a multiple of 128: group-128 weight quantization applies
    assert all(m.in_features % 128 == 0 for m in model.modules() if isinstance(m, nn.Linear))
    assert sum(p.numel() for p in model.parameters()) == 875_520


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="dim 30 is not divisible by num_heads 4"):
        GPTConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="depth must be a positive integer, got 0"):
        GPTConfig(depth=0)


def test_save_load_round_trip(tmp_path):
    model = tiny()
    x = torch.randint(0, 32, (2, 16))
    nc.save(model, tmp_path / "gpt.ncz")
    loaded = nc.load(tmp_path / "gpt.ncz")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_learns_a_periodic_sequence():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8, context=12, dim=32, depth=1, num_heads=2, mlp_hidden=64))
    seq = torch.arange(13) % 4  # 0 1 2 3 0 1 ...: deterministic after the first token
    x, y = seq[:-1].repeat(8, 1), seq[1:].repeat(8, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        token_cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        assert perplexity(model.eval()(x), y) < 1.2
