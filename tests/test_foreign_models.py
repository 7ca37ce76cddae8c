"""A fast subset of the foreign zoo (tests/foreign_zoo.py): models nncompress did not write.

Channel pruning must make torchvision, timm and Hugging Face models physically smaller and keep
them running; ONNX export must take keyword inputs and Hugging Face outputs and fall back to the
dynamo exporter where the TorchScript one fails, checked in ONNX Runtime. The full matrix (every
step family over every zoo model) is ``benchmarks/coverage.py``.
"""

from __future__ import annotations

import foreign_zoo as fz
import pytest
import torch
from torch import nn

from nncompress.core.step import StepContext
from nncompress.io.onnx_export import export_onnx
from nncompress.prune.graph import trace_channels
from nncompress.prune.heads import attention_heads
from nncompress.prune.structured import ChannelPrune, HeadPrune
from nncompress.tasks.task import call_model

pytest.importorskip("transformers")


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def channel_prune(name: str, sparsity: float = 0.5) -> tuple[nn.Module, nn.Module, list[str]]:
    """(original, pruned, log) of one zoo model at ``sparsity``."""
    entry = fz.get(name)
    original, model = entry.build(), entry.build()
    ctx = StepContext(task=entry.task(batches=1))
    with torch.no_grad():
        pruned = ChannelPrune(sparsity=sparsity).apply(model, ctx)
    return original, pruned, ctx.log


@pytest.mark.parametrize(
    ("name", "at_least"),
    [
        ("tv-mobilenet_v3_small", 0.5),
        ("tv-shufflenet_v2_x0_5", 0.4),
        ("timm-efficientnet_b0", 0.5),  # BatchNormAct2d: 8% fewer parameters before it was traced as a norm
        ("timm-regnetx_002", 0.5),  # BatchNormAct2d inside ConvNormAct: nothing pruned before
        ("timm-convnext_atto", 0.5),  # LayerNorm2d
    ],
)
def test_channel_prune_shrinks_vision_models_and_they_still_run(name, at_least):
    original, pruned, _ = channel_prune(name)
    assert params(pruned) < (1 - at_least) * params(original)
    x = fz.get(name).example()
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == original(x).shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["hf-llama", "hf-t5", "hf-gpt2"])
def test_hugging_face_models_are_traced_part_by_part(name):
    """Parts of the model are not fx-traceable and are kept whole; its MLPs are traced, so their
    hidden width is cut (GPT-2's Conv1D layers rewritten as nn.Linear first)."""
    original, pruned, log = channel_prune(name)
    assert any("kept whole, torch.fx could not trace: " in line for line in log)  # attention, at least

    def mlp_widths(model: nn.Module) -> list[int]:
        return [
            m.weight.shape[0] if isinstance(m, nn.Linear) else m.weight.shape[1]  # HF Conv1D: (in, out)
            for n, m in model.named_modules()
            if n.endswith(("mlp.gate_proj", "DenseReluDense.wi", "mlp.c_fc"))
        ]

    before = mlp_widths(original)
    assert before and mlp_widths(pruned) == [w // 2 for w in before]
    assert params(pruned) < params(original)
    x = fz.get(name).example()
    with torch.no_grad():
        out = fz.logits_of(call_model(pruned, x))
    assert out.shape == fz.logits_of(call_model(original, x)).shape


@pytest.mark.parametrize("name", ["hf-llama", "hf-phi", "hf-gemma"])
def test_hugging_face_attention_loses_whole_heads(name):
    """A key/value head whose q/k/v rows and output columns are zero scores lowest and goes, with
    the query heads that share it (Gemma's one key/value head: a query head alone); with the MLPs
    excluded the outputs stay the same."""
    entry = fz.get(name)
    model = entry.build()
    out_name = "dense" if name == "hf-phi" else "o_proj"
    layers = model.model.layers
    heads = [attention_heads(layer.self_attn) for layer in layers]
    assert heads[0] is not None
    _, n_heads, kv, hd = heads[0]
    rep = n_heads // kv
    mqa = kv == 1
    if mqa:  # the group is the query heads, one at a time
        kv, rep = n_heads, 1
    with torch.no_grad():
        for layer in layers:  # zero the last key/value head and its query heads
            attn = layer.self_attn
            attn.q_proj.weight[-rep * hd :] = 0
            if not mqa:
                attn.k_proj.weight[-hd:] = 0
                attn.v_proj.weight[-hd:] = 0
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                if proj.bias is not None:
                    proj.bias[-(rep if proj is attn.q_proj else 1) * hd :] = 0
            getattr(attn, out_name).weight[:, -rep * hd :] = 0
    x = entry.example()
    before = fz.logits_of(call_model(model, x))
    mlps = tuple(f"model.layers.{i}.mlp" for i in range(len(layers)))
    ctx = StepContext(task=entry.task(batches=1))
    with torch.no_grad():
        pruned = ChannelPrune(sparsity=1 / kv, exclude=mlps).apply(model, ctx)
    for layer in pruned.model.layers:
        assert layer.self_attn.k_proj.out_features == (1 if mqa else kv - 1) * hd
        assert getattr(layer.self_attn, out_name).in_features == (kv - 1) * rep * hd
    with torch.no_grad():
        after = fz.logits_of(call_model(pruned, x))
    assert torch.allclose(after, before, atol=1e-5)


def test_gpt2_fused_attention_loses_whole_heads():
    """GPT-2's c_attn writes q|k|v in one matrix: a head is hd rows in each third, and the
    attention's split_size follows the cut."""
    entry = fz.get("hf-gpt2")
    model = entry.build()
    blocks = model.transformer.h
    heads, d = blocks[0].attn.num_heads, blocks[0].attn.split_size
    hd = d // heads
    with torch.no_grad():
        for block in blocks:  # Conv1D weights are (in, out): zero the last head's q, k, v columns
            for part in range(3):
                block.attn.c_attn.weight[:, (part + 1) * d - hd : (part + 1) * d] = 0
                block.attn.c_attn.bias[(part + 1) * d - hd : (part + 1) * d] = 0
            block.attn.c_proj.weight[-hd:, :] = 0
    x = entry.example()
    before = fz.logits_of(call_model(model, x))
    ctx = StepContext(task=entry.task(batches=1))
    with torch.no_grad():
        step = ChannelPrune(sparsity=1 / heads, exclude=("transformer.h.0.mlp", "transformer.h.1.mlp"))
        pruned = step.apply(model, ctx)
    for block in pruned.transformer.h:
        assert (block.attn.num_heads, block.attn.split_size) == (heads - 1, d - hd)
        assert block.attn.c_attn.out_features == 3 * (d - hd)
    with torch.no_grad():
        after = fz.logits_of(call_model(pruned, x))
    assert torch.allclose(after, before, atol=1e-5)


@pytest.mark.parametrize(("name", "attn", "rows"), [("hf-llama", "self_attn", "k_proj"), ("hf-gpt2", "attn", "c_attn")])
def test_head_prune_reaches_hugging_face_attention(name, attn, rows):
    entry = fz.get(name)
    model = entry.build()
    ctx = StepContext(task=entry.task(batches=1))
    with torch.no_grad():
        pruned = HeadPrune(sparsity=0.5).apply(model, ctx)
    blocks = pruned.model.layers if name == "hf-llama" else pruned.transformer.h
    widths = [getattr(getattr(b, attn), rows).out_features for b in blocks]
    assert widths == [16 if name == "hf-llama" else 96] * len(blocks)  # 32 -> 16 (2 -> 1 kv heads), 192 -> 96
    assert any("key/value heads" in line for line in ctx.log)
    with torch.no_grad():
        assert torch.isfinite(fz.logits_of(call_model(pruned, entry.example()))).all()


def test_timm_fused_norm_act_is_one_group_member():
    entry = fz.get("timm-efficientnet_b0")
    model = entry.build()
    graph = trace_channels(model, entry.example())
    norms = {m.name for g in graph.groups for m in g.members if m.kind == "norm"}
    assert "bn1" in norms and type(model.bn1).__name__ == "BatchNormAct2d"
    assert not graph.kept_whole


@pytest.mark.parametrize("name", ["hf-gpt2", "hf-t5", "hf-bert"])
def test_onnx_export_takes_keyword_inputs_and_model_outputs(name, tmp_path):
    entry = fz.get(name)
    model, x = entry.build(), entry.example()
    result = export_onnx(model, tmp_path / "m.onnx", x)
    assert result.input_names == list(x)
    assert result.max_abs_error < 1e-4 < result.max_abs_output
    if name != "hf-bert":
        assert any("use_cache=False" in note for note in result.notes)


class WithDiff(nn.Module):
    """torch.diff, which the TorchScript exporter cannot write (as in older HF mask code)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.diff(x, dim=-1, prepend=x[:, :1]))


def test_onnx_export_falls_back_to_the_dynamo_exporter(tmp_path):
    model = WithDiff().eval()
    result = export_onnx(model, tmp_path / "d.onnx", torch.randn(2, 8))
    assert result.max_abs_error < 1e-5 and result.opset >= 18
    assert any("dynamo exporter" in note and "aten::diff" in note for note in result.notes)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 8)  # another batch size: the batch axis stayed dynamic
    (out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-5)
