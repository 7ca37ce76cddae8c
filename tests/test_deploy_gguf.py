"""`--to gguf`: our 4-bit integer-zero groups of 32 become Q4_1 blocks (8-bit symmetric: Q8_0) that
llama.cpp runs to our logits; other codes fall back to F16, named. A tiny Llama with a tiny
template GGUF (tokenizer metadata); skipped without the gguf extra (gguf + llama-cpp-python)."""

from __future__ import annotations

import pytest
import torch

from nncompress.base.modules import replace_module
from nncompress.quantize.layers import quantize_weight_module
from nncompress.quantize.primitives import QuantSpec

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed: pip install 'nncompress[gguf]'")
pytest.importorskip(
    "llama_cpp", reason="the gguf extra is not installed (llama-cpp-python): pip install 'nncompress[gguf]'"
)
transformers = pytest.importorskip("transformers", reason="the tiny Llama needs transformers")

from nncompress.deploy.gguf import GgufTarget, exact_q8_0, permute, q4_1_blocks  # noqa: E402
from nncompress.tasks.smollm2 import unpermute  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

VOCAB, WIDTH, LAYERS, HEADS, KV_HEADS, FFN = 64, 64, 2, 4, 2, 128


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
    assert exact_q8_0(torch.randn(2, 32)) is None  # arbitrary floats are not Q8_0
    assert exact_q8_0(torch.tensor([[127.0, -3.0, *[0.0] * 30]]) * 0.25) is not None


def test_gguf_keeps_our_codes_and_llama_cpp_matches_our_logits(tmp_path) -> None:
    model = tiny_llama()
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and "layers." in name:
            if name.endswith("down_proj"):
                spec = QuantSpec(bits=8, symmetric=True, granularity="group", group_size=32)
            elif name.endswith("layers.1.mlp.up_proj"):
                spec = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=32)
            else:
                spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32)
            model = replace_module(model, name, quantize_weight_module(module, spec, scale_dtype=torch.float16))
    tiny_template(tmp_path / "template.gguf")
    ids = torch.randint(3, VOCAB, (2, 24))
    exported = GgufTarget(tmp_path / "template.gguf").export(model, tmp_path / "m.gguf", ids)
    assert exported.layers["model.layers.0.self_attn.q_proj"] == "Q4_1 (our codes)"
    assert exported.layers["model.layers.0.mlp.down_proj"] == "Q8_0 (our codes)"
    assert exported.layers["model.layers.1.mlp.up_proj"] == "F16 (dequantized)"
    assert exported.layers["model.norm"] == "F32"
    assert len(exported.notes) == 1 and exported.notes[0].startswith("model.layers.1.mlp.up_proj: no GGUF block")
    with torch.no_grad():
        ours = model(ids).logits
    theirs = exported.runner(ids)
    assert theirs.shape == ours.shape
    # llama.cpp's own matmul quantizes activations to 8 bits for Q4_1/Q8_0 weights: close, not exact
    assert float((theirs - ours).abs().max()) < 0.05 * float(ours.abs().max())
    assert float((theirs.argmax(-1) == ours.argmax(-1)).float().mean()) > 0.9
