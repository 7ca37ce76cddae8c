"""scale-tune: distillation into the step sizes of packed codes, on foreign models and ours.

The codes, zero points and file size must not change; the model must move towards its teacher; the
model's structure (modules, parametrizations, running statistics) must be exactly as before.
"""

from __future__ import annotations

import copy

import foreign_zoo as fz
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_MODELS, init_model, make_task
from torch import nn

import nncompress as nc
from nncompress.base.canonical import canonicalize
from nncompress.base.conv_as_linear import apply_step
from nncompress.core.step import StepContext
from nncompress.measure.metric import evaluate
from nncompress.quantize.gptq import PackedEmbedding
from nncompress.quantize.layers import QuantizedLinear, _UniformCodes
from nncompress.quantize.scale_tune import TrainableScales, TuneScales
from nncompress.tasks.outputs import primary_output
from nncompress.tasks.task import call_model

pytest.importorskip("transformers")


def kl_to(teacher: nn.Module, model: nn.Module, batches) -> float:
    """Mean KL(teacher || model) of the logits over ``batches``."""
    total = 0.0
    with torch.no_grad():
        for x, _ in batches:
            t = primary_output(call_model(teacher, x)).float()
            s = primary_output(call_model(model, x)).float()
            t, s = t.reshape(-1, t.shape[-1]), s.reshape(-1, s.shape[-1])
            total += float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"))
    return total / len(batches)


def packed(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    return {
        n: (m.packed.clone(), None if m.zero_point is None else m.zero_point.clone(), m.scale.clone())
        for n, m in model.named_modules()
        if isinstance(m, _UniformCodes)
    }


def quantize_then_tune(
    name: str, bits: int = 3, steps: int = 12, **rtn
) -> tuple[nn.Module, nn.Module, nn.Module, nc.Task, list[str]]:
    """(teacher, rtn-only, rtn + scale-tune, task, log) of one zoo model."""
    entry = fz.get(name)
    teacher = entry.build()
    task = entry.task(batches=2, batch_size=4, model=teacher)
    ctx = StepContext(task=task, teacher=teacher)
    model = canonicalize(copy.deepcopy(teacher)).model  # as compress runs steps: GPT-2's Conv1D as Linear,
    quantized = apply_step(nc.RTNQuantize(bits=bits, group_size=16, **rtn), model, ctx)  # convs as matrices
    tuned = TuneScales(max_steps=steps, epochs=10, lr=1e-3).apply(copy.deepcopy(quantized), ctx)
    return teacher, quantized, tuned, task, ctx.log


@pytest.mark.parametrize("name", ["hf-llama", "hf-gpt2", "tv-resnet18"])
def test_scale_tune_moves_foreign_models_towards_their_teacher_with_codes_frozen(name):
    teacher, quantized, tuned, task, log = quantize_then_tune(name)
    before, after = packed(quantized), packed(tuned)
    assert before.keys() == after.keys() and before
    for key, (codes, zeros, scale) in before.items():
        assert torch.equal(codes, after[key][0])  # codes untouched
        assert (zeros is None) == (after[key][1] is None) and (zeros is None or torch.equal(zeros, after[key][1]))
        assert scale.dtype == after[key][2].dtype and scale.shape == after[key][2].shape
    assert any(not torch.equal(s, after[k][2]) for k, (_, _, s) in before.items())  # scales trained
    assert kl_to(teacher, tuned, task.train) < 0.9 * kl_to(teacher, quantized, task.train)
    assert not any(isinstance(m, TrainableScales) for m in tuned.modules())
    assert not any(hasattr(m, "parametrizations") for m in tuned.modules())
    assert "scale-tune:" in log[-1] and "largest scale change" in log[-1]


def test_batch_norm_statistics_stay_as_deployed():
    _, quantized, tuned, _, _ = quantize_then_tune("tv-resnet18", steps=4)
    stats = [(n, b) for n, b in quantized.named_buffers() if "running_" in n]
    tuned_buffers = dict(tuned.named_buffers())
    assert stats and all(torch.equal(b, tuned_buffers[n]) for n, b in stats)


def test_timm_layer_norm_2d_weights_get_gains_too():
    teacher, quantized, tuned, _, log = quantize_then_tune("timm-convnext_atto", steps=2)
    norms = {n: m.weight for n, m in quantized.named_modules() if type(m).__name__ == "LayerNorm2d"}
    trained = dict(tuned.named_modules())
    assert norms and all(not torch.equal(w, trained[n].weight) for n, w in norms.items())
    assert f"and {len(norms)} norms trained" in log[-1]


def test_norm_gains_train_only_when_asked():
    entry = fz.get("hf-llama")
    teacher = entry.build()
    task = entry.task(batches=1, batch_size=4, model=teacher)
    ctx = StepContext(task=task, teacher=teacher)
    quantized = nc.RTNQuantize(bits=3, group_size=16).apply(copy.deepcopy(teacher), ctx)
    norms = {n: p.clone() for n, p in quantized.named_parameters() if "norm" in n}
    for flag in (False, True):
        tuned = TuneScales(max_steps=3, lr=1e-3, norms=flag).apply(copy.deepcopy(quantized), ctx)
        params = dict(tuned.named_parameters())
        changed = [n for n, p in norms.items() if not torch.equal(p, params[n])]
        assert (len(changed) == len(norms)) if flag else not changed
        assert all(params[n].requires_grad for n in norms)  # as trainable as they were


def test_a_tied_embedding_reads_the_trained_head_scales():
    entry = fz.get("hf-llama")
    teacher = entry.build()
    teacher.config.tie_word_embeddings = True
    teacher.tie_weights()
    ctx = StepContext(task=entry.task(batches=1, batch_size=4, model=teacher), teacher=teacher)
    quantized = nc.RTNQuantize(bits=4, group_size=16, head_bits=4).apply(copy.deepcopy(teacher), ctx)
    assert isinstance(quantized.get_input_embeddings(), PackedEmbedding)
    head_scale = quantized.get_output_embeddings().scale.clone()
    tuned = TuneScales(max_steps=3, lr=1e-3).apply(quantized, ctx)
    embedding, head = tuned.get_input_embeddings(), tuned.get_output_embeddings()
    assert isinstance(head, QuantizedLinear) and embedding.table is head
    ids = torch.arange(8)
    assert torch.equal(embedding(ids), head.dequantized_weight()[ids])
    assert not torch.equal(head.scale, head_scale)


def test_through_compress_on_our_gpt_the_saved_file_keeps_its_size_and_gains(tmp_path):
    task = nc.tasks.get("stdlib-gpt")
    fast = nc.MeasureConfig(latency=False)
    rtn = nc.RTNQuantize(bits=3, group_size=32)
    plain = nc.compress(task.baseline(), [rtn], task, measure_config=fast)
    tuned = nc.compress(task.baseline(), [rtn, TuneScales(max_steps=16)], task, measure_config=fast)
    nc.save(plain.model, tmp_path / "rtn.ncz")
    nc.save(tuned.model, tmp_path / "tuned.ncz")
    assert (tmp_path / "tuned.ncz").stat().st_size == pytest.approx((tmp_path / "rtn.ncz").stat().st_size, rel=1e-3)
    before, after = plain.report.final.metric["value"], tuned.report.final.metric["value"]
    assert after < before
    assert evaluate(nc.load(tmp_path / "tuned.ncz"), task.test, task.metric_fn) == pytest.approx(after, rel=1e-4)
    assert tuned.report.final.size_bytes == pytest.approx(plain.report.final.size_bytes, rel=1e-3)  # same codes


def test_refuses_a_model_with_nothing_to_tune_and_a_recipe_that_tunes_before_quantizing():
    entry = fz.get("hf-llama")
    model = entry.build()
    ctx = StepContext(task=entry.task(batches=1), teacher=model)
    with pytest.raises(ValueError, match="no packed uniform layer"):
        TuneScales(max_steps=1).apply(copy.deepcopy(model), ctx)
    with pytest.raises(ValueError):
        nc.compress(model, [TuneScales(), nc.RTNQuantize(bits=4)], entry.task(batches=1))


def test_needs_a_teacher_outside_compress():
    entry = fz.get("hf-llama")
    model = entry.build()
    ctx = StepContext(task=entry.task(batches=1))
    quantized = nc.RTNQuantize(bits=4, group_size=16).apply(model, ctx)
    with pytest.raises(ValueError, match="needs a teacher"):
        TuneScales(max_steps=1).apply(quantized, ctx)


@pytest.mark.parametrize("model_name", list(SMALL_MODELS))
def test_after_rtn_on_every_small_model_it_runs_saves_and_loads(model_name, tmp_path):
    task = make_task(SMALL_MODELS[model_name], n_train=64)
    recipe = [nc.RTNQuantize(bits=3, group_size=16), TuneScales(max_steps=2)]
    result = nc.compress(init_model(model_name), recipe, task, measure_config=nc.MeasureConfig(latency=False))
    assert any("scale-tune:" in line for line in result.report.steps[-1].notes)
    x = task.single_example()
    loaded = nc.load(nc.save(result.model, tmp_path / "m.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)


def test_a_failed_run_leaves_the_model_as_it_was(monkeypatch):
    import nncompress.quantize.scale_tune as scale_tune

    entry = fz.get("hf-llama")
    teacher = entry.build()
    ctx = StepContext(task=entry.task(batches=1, batch_size=4, model=teacher), teacher=teacher)
    quantized = nc.RTNQuantize(bits=3, group_size=16).apply(copy.deepcopy(teacher), ctx)
    before = {n: t.clone() for n, t in quantized.state_dict().items()}

    def fails_midway(model, *args, **kwargs):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.5)  # as if training had moved every gain
        raise RuntimeError("interrupted")

    monkeypatch.setattr(scale_tune, "fit", fails_midway)
    with pytest.raises(RuntimeError, match="interrupted"):
        TuneScales(max_steps=1).apply(quantized, ctx)
    after = quantized.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[n], t) for n, t in before.items())
    assert not any(isinstance(m, TrainableScales) for m in quantized.modules())
    assert all(p.requires_grad for n, p in quantized.named_parameters() if "norm" in n)
