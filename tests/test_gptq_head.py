"""head_bits: the LM head packed by round-to-nearest, and an embedding tied to it reading the same
packed table (stored once, tie kept through save and load)."""

from __future__ import annotations

import pytest
import torch
from llm_archs import lm_task, tiny_lm
from torch import nn

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.quantize.gptq import GPTQQuantize, PackedEmbedding, RTNQuantize
from nncompress.quantize.layers import QuantizedLinear


def _tied_lm() -> nn.Module:
    model = tiny_lm(vocab=48, dim=32)
    model.head.weight = model.embed.weight  # tied, as in SmolLM2
    return model


@pytest.mark.parametrize("step_cls", [RTNQuantize, GPTQQuantize])
def test_head_bits_packs_the_head_and_the_tied_embedding_once(tmp_path, step_cls):
    task = lm_task()
    ids = next(iter(task.test))[0]
    extra = {"calibration_batches": 1} if step_cls is GPTQQuantize else {}
    sizes, outputs = {}, {}
    for head_bits in (None, 8, 4):
        ctx = StepContext(task=task)
        model = step_cls(bits=4, group_size=16, head_bits=head_bits, rest_bits=16, **extra).apply(_tied_lm(), ctx)
        if head_bits is None:
            assert type(model.head) is nn.Linear and type(model.embed) is nn.Embedding
        else:
            assert isinstance(model.head, QuantizedLinear) and model.head.spec.bits == head_bits
            assert isinstance(model.embed, PackedEmbedding) and model.embed.table is model.head
            assert any(f"LM head head packed at {head_bits} bits" in n and "tied to embed" in n for n in ctx.log)
            torch.testing.assert_close(model.embed(ids), model.head.weight[ids])
        path = nc.save(model, tmp_path / f"{step_cls.__name__}-{head_bits}.ncz")
        sizes[head_bits] = path.stat().st_size
        loaded = nc.load(path)
        with torch.no_grad():
            outputs[head_bits] = model(ids)
            torch.testing.assert_close(loaded(ids), outputs[head_bits], rtol=0, atol=0)
        if head_bits is not None:
            assert loaded.embed.table is loaded.head  # the tie survives loading
    table = 48 * 32  # the tied table's values; stored once at head_bits bits (+ scales)
    assert sizes[4] < sizes[8] < sizes[None]
    assert sizes[None] - sizes[8] > table * 0.5  # fp16 -> 8 bits (+ scales) saves over half a byte a value: stored once
    err8 = float((outputs[8] - outputs[None]).norm() / outputs[None].norm())
    err4 = float((outputs[4] - outputs[None]).norm() / outputs[None].norm())
    assert err8 < err4 < 0.5


def test_head_bits_is_checked():
    with pytest.raises(ValueError, match=r"head_bits must be an integer in \[2, 8\]"):
        RTNQuantize(head_bits=16)
    with pytest.raises(ValueError, match="head_bits packs the LM head by round-to-nearest: it needs keep_classifier"):
        RTNQuantize(head_bits=8, keep_classifier=False)


def test_fp16_keeps_a_tied_embedding_tied_and_stores_the_table_once(tmp_path):
    """Float16Weights on a tied LM: the embedding reads the converted head's float16 table (before,
    the head got a float16 copy and the embedding kept its float32 one: 1.5x the bytes)."""
    ids = next(iter(lm_task().test))[0]
    ctx = StepContext(task=lm_task())
    model = nc.Float16Weights().apply(_tied_lm(), ctx)
    assert isinstance(model.embed, PackedEmbedding) and model.embed.table is model.head
    assert any("1 embedding(s) tied" in line for line in ctx.log)
    torch.testing.assert_close(model.embed(ids), model.head.weight[ids])
    path = nc.save(model, tmp_path / "half.ncz")
    loaded = nc.load(path)
    assert loaded.embed.table is loaded.head
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    untied = _tied_lm()
    untied.head.weight = nn.Parameter(untied.head.weight.detach().clone())  # the same model, not tied
    separate = nc.save(nc.Float16Weights().apply(untied, StepContext(task=lm_task())), tmp_path / "untied.ncz")
    assert separate.stat().st_size - path.stat().st_size > 48 * 32 * 3  # a float32 table less (fp16 head in both)
