"""Head pruning on attention nncompress did not write: BERT, DistilBERT, T5, ViT, Whisper (separate
q/k/v projections), timm's fused qkv, and the Hugging Face config fields that follow the cut."""

from __future__ import annotations

import foreign_zoo as fz
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.prune.heads import separate_heads
from nncompress.prune.structured import HeadPrune
from nncompress.tasks.task import call_model

pytest.importorskip("transformers")


def _attentions(model: nn.Module):
    return [(n, h) for n, m in model.named_modules() if (h := separate_heads(model, n, m)) is not None]


def _zero_last_head(model: nn.Module) -> None:
    """Zero the last head of every attention: q/k/v rows (and biases) and output columns."""
    with torch.no_grad():
        for _, h in _attentions(model):
            rows = slice(-h.head_dim, None)
            for name in (h.q, h.k, h.v):
                layer = model.get_submodule(name)
                layer.weight[rows] = 0
                if layer.bias is not None:
                    layer.bias[rows] = 0
            model.get_submodule(h.out).weight[:, rows] = 0


@pytest.mark.parametrize("name", ["hf-bert", "hf-distilbert", "hf-t5", "hf-vit", "hf-whisper-encoder"])
def test_a_zeroed_head_is_the_one_cut_and_outputs_stay_equal_through_save_and_load(name, tmp_path):
    entry = fz.get(name)
    model = entry.build()
    before_heads = _attentions(model)
    assert before_heads, "no attention recognised"
    _zero_last_head(model)
    x = entry.example()
    with torch.no_grad():
        before = fz.logits_of(call_model(model, x))
    ctx = StepContext(task=entry.task(batches=1))
    pruned = HeadPrune(sparsity=0.25).apply(model, ctx)
    after_heads = _attentions(pruned)
    assert [n for n, _ in after_heads] == [n for n, _ in before_heads]
    for (_, old), (_, new) in zip(before_heads, after_heads):
        assert new.heads == old.heads - 1 and pruned.get_submodule(new.out).in_features == new.heads * new.head_dim
    with torch.no_grad():
        after = fz.logits_of(call_model(pruned, x))
    assert torch.allclose(after, before, atol=1e-5), float((after - before).abs().max())
    heads_field = "encoder_attention_heads" if name == "hf-whisper-encoder" else "num_attention_heads"
    assert getattr(pruned.config, heads_field) == before_heads[0][1].heads - 1, ctx.log
    nc.save(pruned, tmp_path / "m.ncz")
    again = nc.load(tmp_path / "m.ncz", trust=("transformers",))
    with torch.no_grad():
        assert torch.equal(fz.logits_of(call_model(again, x)), after)


def test_t5_cuts_the_same_heads_in_every_layer_sharing_the_position_bias():
    entry = fz.get("hf-t5")
    model = entry.build()
    ctx = StepContext(task=entry.task(batches=1))
    pruned = HeadPrune(sparsity=0.5).apply(model, ctx)
    table = pruned.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
    assert table.embedding_dim == 2
    for block in pruned.encoder.block:
        attn = block.layer[0].SelfAttention
        assert (attn.n_heads, attn.inner_dim, attn.q.out_features) == (2, 2 * attn.key_value_proj_dim, 2 * 16)
    with torch.no_grad():
        out = fz.logits_of(call_model(pruned, entry.example()))
    assert torch.isfinite(out).all()


def test_a_llama_rebuilt_from_its_updated_config_takes_the_pruned_weights():
    entry = fz.get("hf-llama")
    model = entry.build()
    pruned = HeadPrune(sparsity=0.5).apply(model, StepContext(task=entry.task(batches=1)))
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (2, 1)
    fresh = type(pruned)(pruned.config).eval()
    fresh.load_state_dict(pruned.state_dict())
    x = entry.example()
    with torch.no_grad():
        assert torch.equal(fz.logits_of(call_model(fresh, x)), fz.logits_of(call_model(pruned, x)))


def test_timm_fused_qkv_attention_loses_heads():
    entry = fz.get("timm-mobilevit_xxs")
    model = entry.build()
    pruned = HeadPrune(sparsity=0.5).apply(model, StepContext(task=entry.task(batches=1)))
    attn = pruned.stages[3][1].transformer[0].attn
    assert attn.num_heads * attn.head_dim == attn.attn_dim == attn.qkv.out_features // 3 == attn.proj.in_features
    with torch.no_grad():
        assert pruned(entry.example()).shape == (fz.BATCH, fz.NUM_CLASSES)


def test_a_model_without_attention_is_left_unchanged_with_a_note():
    entry = fz.get("rnn-gru")
    model = entry.build()
    ctx = StepContext(task=entry.task(batches=1))
    assert HeadPrune(sparsity=0.5).apply(model, ctx) is model
    assert "no attention with whole heads" in ctx.log[-1]
