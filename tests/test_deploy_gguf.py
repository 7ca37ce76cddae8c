"""`--to gguf`: our symmetric 4-bit groups of 32 become Q4_0 blocks, integer-zero ones Q4_1, 8-bit Q8_0,
that decode (gguf's own dequantizer) to exactly our weights and that llama.cpp runs to our logits; other
codes fall back to F16, named. A tiny Llama with a tiny template GGUF (tokenizer metadata); skipped
without the gguf extra (gguf + llama-cpp-python)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nncompress as nc
from nncompress.base.modules import replace_module
from nncompress.quantize.layers import quantize_weight_module
from nncompress.quantize.primitives import QuantSpec

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed: pip install 'nncompress[gguf]'")
pytest.importorskip(
    "llama_cpp", reason="the gguf extra is not installed (llama-cpp-python): pip install 'nncompress[gguf]'"
)
transformers = pytest.importorskip("transformers", reason="the tiny Llama needs transformers")

from nncompress.core.step import StepContext  # noqa: E402
from nncompress.deploy.gguf import GgufTarget, exact_q8_0, permute, q4_0_blocks, q4_1_blocks  # noqa: E402
from nncompress.tasks.smollm2 import GGUF_BLOCK_NAMES, unpermute  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

VOCAB, WIDTH, LAYERS, HEADS, KV_HEADS, FFN = 64, 64, 2, 4, 2, 128
BLOCK = {hf.split(".")[1]: gguf.removesuffix(".weight") for gguf, hf in GGUF_BLOCK_NAMES.items() if "proj" in hf}


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        use_cache=False,
    )
    return transformers.LlamaForCausalLM(config).eval()


def tiny_template(path) -> None:
    """A tensor-free GGUF holding what llama.cpp needs besides weights: sizes and a vocabulary."""
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_context_length(128)
    w.add_embedding_length(WIDTH)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_rope_dimension_count(WIDTH // HEADS)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", *[f"t{i}" for i in range(VOCAB - 3)]])
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([2, 3, 3, *[1] * (VOCAB - 3)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_permute_inverts_unpermute_and_q4_1_layout() -> None:
    w = torch.randn(16, 3)
    assert torch.equal(unpermute(permute(w, 4), 4), w)
    codes = torch.arange(32).remainder(16).reshape(1, 32)
    block = q4_1_blocks(codes, torch.tensor([[0.5]]), torch.tensor([[3.0]]))
    assert block.shape == (1, 20)
    d, m = block[0, :4].view("float16")
    assert (d, m) == (0.5, -1.5) and block[0, 4] == (0 | 0 << 4) and block[0, 5] == (1 | 1 << 4)
    block = q4_0_blocks(codes, torch.tensor([[0.25]]))
    assert block.shape == (1, 18) and block[0, :2].view("float16")[0] == 0.25 and block[0, 3] == (1 | 1 << 4)
    assert exact_q8_0(torch.randn(2, 32)) is None  # arbitrary floats are not Q8_0
    assert exact_q8_0(torch.tensor([[127.0, -3.0, *[0.0] * 30]]) * 0.25) is not None


def test_gguf_keeps_our_codes_and_llama_cpp_matches_our_logits(tmp_path) -> None:
    model = tiny_llama()
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and "layers." in name:
            if name.endswith("down_proj"):
                spec = QuantSpec(bits=8, symmetric=True, granularity="group", group_size=32)
            elif name.endswith("layers.1.mlp.up_proj"):
                spec = QuantSpec(bits=8, symmetric=False, granularity="group", group_size=32)
            elif name.endswith("layers.1.mlp.gate_proj"):
                spec = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=32)
            elif name.endswith("v_proj"):
                spec = QuantSpec(bits=4, symmetric=True, granularity="group", group_size=64)
            else:
                spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32)
            model = replace_module(model, name, quantize_weight_module(module, spec, scale_dtype=torch.float16))
    tiny_template(tmp_path / "template.gguf")
    ids = torch.randint(3, VOCAB, (2, 24))
    exported = GgufTarget(tmp_path / "template.gguf").export(model, tmp_path / "m.gguf", ids)
    assert exported.layers["model.layers.0.self_attn.q_proj"] == "Q4_1 (our codes)"
    assert exported.layers["model.layers.0.mlp.down_proj"] == "Q8_0 (our codes)"
    assert exported.layers["model.layers.0.self_attn.v_proj"] == "Q4_0 (our codes)"
    assert exported.layers["model.layers.1.mlp.gate_proj"] == "Q4_1 (our 3-bit codes)"
    assert exported.layers["model.layers.1.mlp.up_proj"] == "F16 (dequantized)"
    assert exported.layers["model.norm"] == "F32"
    rounded, fallback = exported.notes  # Q4_1's m = -s z needs more bits than fp16 holds in some groups
    assert (
        rounded.startswith("model.layers.0.self_attn.q_proj, ")
        and "Q4_1 with m = -s z rounded to fp16 (s z is not" in rounded
    )
    assert fallback.startswith("model.layers.1.mlp.up_proj: no GGUF block")
    with torch.no_grad():
        ours = model(ids).logits
    theirs = exported.runner(ids)
    assert theirs.shape == ours.shape
    # llama.cpp's own matmul quantizes activations to 8 bits for Q4_0/Q4_1/Q8_0 weights: close, not exact
    assert float((theirs - ours).abs().max()) < 0.05 * float(ours.abs().max())
    assert float((theirs.argmax(-1) == ours.argmax(-1)).float().mean()) > 0.9


def gguf_weights(path) -> dict[str, tuple[str, torch.Tensor]]:
    """Every tensor of a GGUF decoded by the gguf package's own dequantizer: name -> (type, float32 weight)."""
    from gguf.quants import dequantize

    out = {}
    for t in gguf.GGUFReader(path).tensors:
        w = torch.from_numpy(np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).copy())
        out[t.name] = (t.tensor_type.name, w.reshape(*reversed([int(n) for n in t.shape])))
    return out


def test_symmetric_w4_g32_is_q4_0_and_decodes_to_exactly_our_weights(tmp_path) -> None:
    model = tiny_llama()
    step = nc.RTNQuantize(bits=4, group_size=32, symmetric=True, head_bits=8, rest_bits=16)
    model = step.apply(model, StepContext(task=None))
    tiny_template(tmp_path / "template.gguf")
    ids = torch.randint(3, VOCAB, (2, 24))
    exported = GgufTarget(tmp_path / "template.gguf").export(model, tmp_path / "m.gguf", ids)
    assert exported.notes == []
    assert exported.layers["model.embed_tokens"] == "Q8_0 (our codes)" and "lm_head" not in exported.layers
    weights = gguf_weights(tmp_path / "m.gguf")
    assert "output.weight" not in weights  # tied: llama.cpp reads the packed head from token_embd
    assert weights["token_embd.weight"][0] == "Q8_0"
    assert torch.equal(weights["token_embd.weight"][1], model.lm_head.dequantized_weight().float())
    heads = {"attn_q": HEADS, "attn_k": KV_HEADS}
    for i, layer in enumerate(model.model.layers):
        for module in (layer.self_attn, layer.mlp):
            for proj_name, proj in module.named_children():
                if proj_name not in BLOCK:  # the MLP's activation
                    continue
                name = f"blk.{i}.{BLOCK[proj_name]}.weight"
                kind, w = weights[name]
                ours = proj.dequantized_weight().float()
                if BLOCK[proj_name] in heads:
                    w = unpermute(w, heads[BLOCK[proj_name]])
                assert kind == "Q4_0", name
                assert torch.equal(w, ours), f"{name}: max |gguf - ours| {float((w - ours).abs().max())}"
    with torch.no_grad():
        ours = model(ids).logits
    theirs = exported.runner(ids)
    assert float((theirs - ours).abs().max()) < 0.05 * float(ours.abs().max())


def test_scales_that_are_not_fp16_values_are_named(tmp_path) -> None:
    model = tiny_llama()
    spec = QuantSpec(bits=4, symmetric=True, granularity="group", group_size=32)
    name = "model.layers.0.mlp.up_proj"
    layer = quantize_weight_module(model.get_submodule(name), spec, scale_dtype=torch.float32)
    assert not torch.equal(layer.scale.half().float(), layer.scale)  # min-max scales are not fp16 values
    model = replace_module(model, name, layer)
    tiny_template(tmp_path / "template.gguf")
    exported = GgufTarget(tmp_path / "template.gguf").export(
        model, tmp_path / "m.gguf", torch.randint(3, VOCAB, (1, 8))
    )
    assert exported.layers[name] == "Q4_0 (our codes)"
    assert exported.notes == [
        f"{name}: written as Q4_0 with d = s rounded to fp16 (the scales are not fp16 values), each within 2^-11 "
        "(relative), the nearest GGUF form of their codes"
    ]
    w = gguf_weights(tmp_path / "m.gguf")["blk.0.ffn_up.weight"][1]
    ours = layer.dequantized_weight().float()
    assert 0 < float((w - ours).abs().max()) <= 2**-11 * float(ours.abs().max())
