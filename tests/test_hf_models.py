"""Raw Hugging Face models as first-class input: measured (metric, params, size, MACs, batch-1
latency) with keyword inputs, compressed through ``nc.compress``, and built into tasks by
``tasks.hf`` (causal LM perplexity, sequence classification). Tiny configs, random weights, nothing
from a hub."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nncompress as nc
from nncompress.measure.metric import evaluate
from nncompress.measure.report import MeasureConfig
from nncompress.tasks.hf import TokenBatches, causal_lm_task, sequence_classification_task, windows

VOCAB = 96


def _transformers():
    import transformers

    transformers.logging.set_verbosity_error()  # tiny configs keep the 50k-vocab special-token ids
    return transformers


def tiny(kind: str) -> torch.nn.Module:
    """A 2-layer, width-64 model of ``kind`` with random weights (seed 0), in eval mode."""
    tr = _transformers()
    torch.manual_seed(0)
    if kind == "gpt2":
        model = tr.GPT2LMHeadModel(
            tr.GPT2Config(
                vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
            )
        )
    elif kind == "llama":
        model = tr.LlamaForCausalLM(
            tr.LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=0,
            )
        )
    elif kind == "bert":
        model = tr.BertForSequenceClassification(
            tr.BertConfig(
                vocab_size=VOCAB,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=128,
                max_position_embeddings=64,
                num_labels=3,
            )
        )
    elif kind == "t5":
        model = tr.T5ForConditionalGeneration(
            tr.T5Config(
                vocab_size=VOCAB,
                d_model=64,
                d_kv=16,
                d_ff=128,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=4,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
            )
        )
    else:
        raise ValueError(kind)
    return model.eval()


def _sequences(n: int, seed: int, lo: int = 5, hi: int = 17) -> list[torch.Tensor]:
    """``n`` random token sequences of lengths in [lo, hi): batches pad to different widths."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, VOCAB, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g) for _ in range(n)]


def _t5_task(model: torch.nn.Module) -> nc.Task:
    """Encoder ids and decoder ids as keyword inputs; targets the next decoder tokens."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for t in (6, 9):
        ids, dec = torch.randint(2, VOCAB, (3, t), generator=g), torch.randint(2, VOCAB, (3, t - 2), generator=g)
        target = torch.cat([dec[:, 1:], torch.full((3, 1), -100)], 1)
        batches.append(({"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": dec}, target))
    return nc.Task("t5", batches, batches, batches, baseline=lambda: model, metric="perplexity")


def task_for(kind: str, model: torch.nn.Module) -> nc.Task:
    if kind in ("gpt2", "llama"):
        return causal_lm_task(model, _sequences(12, 0), max_length=16, batch_size=4)
    if kind == "bert":
        labels = torch.arange(12) % 3
        return sequence_classification_task(model, _sequences(12, 0), labels, batch_size=4)
    return _t5_task(model)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert", "t5"])
def test_measure_a_raw_hf_model_with_keyword_inputs(kind):
    model = tiny(kind)
    task = task_for(kind, model)
    report = nc.measure(
        model, task, config=MeasureConfig(warmup=1, runs=3, min_seconds=0.0, rounds=1, batch_size_large=2)
    )
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert report.params == params
    assert report.size_bytes > 0.8 * 4 * params  # the artifact holds the fp32 weights
    assert report.macs > 0 and report.latency_ms > 0
    # MACs: at least every Linear/Conv1D weight once per token of the batch-1 example
    one = task.single_example()
    tokens = one["input_ids"].numel() + (one["decoder_input_ids"].numel() if "decoder_input_ids" in one else 0)
    assert report.macs >= tokens * 64 * 64
    value = report.metric["value"]
    if kind == "bert":
        assert report.metric["name"] == "accuracy" and 0.0 <= value <= 1.0
    else:  # random weights: near-uniform next-token guesses, so perplexity is close to the vocabulary
        assert report.metric["name"] == "perplexity" and report.metric["higher_is_better"] is False
        assert VOCAB / 3 < value < VOCAB * 3


def test_causal_lm_perplexity_equals_hf_own_loss():
    """Equal-length windows: exp(HF's mean label loss over the test split) is our perplexity."""
    model = tiny("gpt2")
    ids = torch.randint(2, VOCAB, (10, 12), generator=torch.Generator().manual_seed(3))
    task = causal_lm_task(model, ids, max_length=12, batch_size=3, fractions=(0.4, 0.2, 0.4))
    test_ids = torch.stack([x for batch, _ in task.test for x in batch["input_ids"]])
    assert test_ids.shape == (4, 12)
    with torch.no_grad():
        hf_loss = model(input_ids=test_ids, labels=test_ids).loss.item()
    assert evaluate(model, task.test, task.metric_fn) == pytest.approx(math.exp(hf_loss), rel=1e-5)
    assert task.info["tokens"] == {"train": 48, "val": 24, "test": 48}


def test_causal_lm_padding_is_masked_and_skipped():
    """Padded per batch to different widths: perplexity is that of the unpadded sequences alone."""
    model = tiny("llama")
    seqs = _sequences(9, 5)
    task = causal_lm_task(model, seqs[:3], val=seqs[3:6], test=seqs[6:], max_length=32, batch_size=2)
    widths = [x["input_ids"].shape[1] for x, _ in task.test]
    assert len(set(widths)) == 2  # batches of different lengths
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in seqs[6:]:
            logits = model(input_ids=s[None]).logits[0, :-1]
            nll += F.cross_entropy(logits, s[1:], reduction="sum").item()
            count += len(s) - 1
    assert evaluate(model, task.test, "perplexity") == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_token_batches_and_windows():
    x, y = next(iter(TokenBatches([[5, 6, 7], [8]], batch_size=2, pad_id=1)))
    assert x["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]] and x["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert y.tolist() == [[6, 7, -100], [-100, -100, -100]]
    assert [w.tolist() for w in windows([torch.arange(7)], 3)] == [[0, 1, 2], [3, 4, 5]]  # [6] is too short
    shuffled = TokenBatches([[i, i] for i in range(8)], batch_size=8, shuffle=True, seed=1)
    first, second = (next(iter(shuffled))[0]["input_ids"][:, 0].tolist() for _ in range(2))
    assert sorted(first) == list(range(8)) and first != second  # reshuffled each epoch
    with pytest.raises(ValueError, match="batch_size"):
        TokenBatches([[1]], batch_size=0)
    with pytest.raises(ValueError, match="tokenizer"):
        causal_lm_task(tiny("gpt2"), ["some text"])
    with pytest.raises(ValueError, match="one label per input"):
        sequence_classification_task(tiny("bert"), _sequences(6, 0), [0, 1])


def test_tasks_from_texts_and_a_tokenizer():
    """A word-level tokenizer built in memory (tokenizers), wrapped as a transformers tokenizer."""
    tr = _transformers()
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "and", "fast"]
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    raw = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = Whitespace()
    tok = tr.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]")
    texts = [" ".join(words[i % 5 : i % 5 + 4 + i % 3]) for i in range(10)]
    task = causal_lm_task(tiny("gpt2"), texts, tokenizer=tok, max_length=8, batch_size=4)
    x, y = next(iter(task.test))
    assert x["input_ids"].max() < len(vocab) and (y[:, :-1][x["attention_mask"][:, 1:] == 1] >= 2).all()
    assert task.name == "gpt2-causal-lm" and not task.higher_is_better
    labels = [i % 3 for i in range(10)]
    cls = sequence_classification_task(tiny("bert"), texts, labels, tokenizer=tok, batch_size=4)
    assert cls.name == "bert-classification" and cls.higher_is_better
    assert 0.0 <= evaluate(cls.baseline(), cls.test, cls.metric_fn) <= 1.0
    # a tokenizer's own BatchEncoding (a Mapping, not a dict) is passed as keyword inputs too
    encoded = tok(texts[:4], return_tensors="pt", padding=True)
    assert not isinstance(encoded, dict)
    model, y = cls.baseline(), torch.tensor(labels[:4])
    with torch.no_grad():
        want = (model(**encoded).logits.argmax(-1) == y).float().mean().item()
    assert evaluate(model, [(encoded, y)], "accuracy") == want
    report = nc.measure(
        model,
        nc.Task("enc", [(encoded, y)], [(encoded, y)], [(encoded, y)], baseline=lambda: model),
        config=MeasureConfig(latency=False),
    )
    assert report.metric["value"] == want and report.macs > 0


@pytest.mark.parametrize("kind", ["gpt2", "bert"])  # GPT-2's Conv1D: nn.Linear by compress's canonical pass
def test_magnitude_prune_a_raw_hf_model_through_compress(kind):
    model = tiny(kind)
    task = task_for(kind, model)
    result = nc.compress(model, [nc.MagnitudePrune(sparsity=0.5)], task, measure_config=MeasureConfig(latency=False))
    base, final = result.report.baseline, result.report.final
    assert final.nonzero_params < base.nonzero_params - 0.3 * 4 * 2 * 64 * 64  # the blocks' matrices pruned
    block = {"gpt2": "transformer.h.0.mlp", "bert": "bert.encoder.layer.0.intermediate"}[kind]
    weights = [m.weight for n, m in result.model.named_modules() if n.startswith(block) and hasattr(m, "weight")]
    assert weights and all((w == 0).float().mean() > 0.2 for w in weights)
    assert math.isfinite(final.metric["value"])
