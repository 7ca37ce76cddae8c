"""AWQ, SmoothQuant / W8A8 and HQQ: their maths against round-to-nearest, exact scale folding,
the steps on a transformer, save/load, and settings."""

from __future__ import annotations

import pytest
import torch
from llm_archs import lm_task, outlier_inputs, output_error, tiny_lm
from torch import nn

import nncompress as nc
from nncompress.core.sequential import BlockRun, scale_inputs, scale_outputs
from nncompress.core.step import StepContext
from nncompress.measure.flops import count_macs
from nncompress.quantize.awq import AWQQuantize, awq_clip, awq_scales, awq_search_scales
from nncompress.quantize.gptq import RTNQuantize, rtn_weight
from nncompress.quantize.hqq import HQQQuantize, hqq_quantize
from nncompress.quantize.layers import QuantizedLinear
from nncompress.quantize.primitives import QuantSpec, dequantize, quantize
from nncompress.quantize.smoothquant import (
    INT8,
    ScaledInputLinear,
    SmoothQuant,
    W8A8Quantize,
    fake_quant_int8,
    smoothing_scales,
)

G16 = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=16)


@pytest.fixture(scope="module")
def outliers():
    torch.manual_seed(0)
    return torch.randn(48, 64), outlier_inputs(512, 64, seed=0), outlier_inputs(512, 64, seed=1)


def _ids_and_ref(task: nc.Task) -> tuple[torch.Tensor, torch.Tensor]:
    ids = next(iter(task.test))[0]
    with torch.no_grad():
        return ids, tiny_lm()(ids)


def _error(model: nn.Module, ids: torch.Tensor, ref: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(ids) - ref).norm() / ref.norm())


# --- AWQ ------------------------------------------------------------------------------------------------


def test_awq_scales_reduce_output_error_on_outlier_channels(outliers):
    w, x, held_out = outliers
    s, alpha, err, err_rtn = awq_search_scales(x, x.abs().mean(0), [w], [G16])
    assert alpha > 0 and err < 0.8 * err_rtn  # measured: alpha 0.4, 0.31x RTN (0.56x held out)
    w_awq = rtn_weight(w * s, G16) / s  # what the packed layer computes on x / s
    assert output_error(held_out, w, w_awq) < 0.8 * output_error(held_out, w, rtn_weight(w, G16))
    assert torch.equal(awq_scales(x.abs().mean(0), 0.0), torch.ones(64))  # alpha 0 is plain RTN


def test_awq_clipping_never_increases_the_output_error(outliers):
    w, x, _ = outliers
    scale, zero = awq_clip(w, x, G16)
    clipped = dequantize(quantize(w, scale, zero, G16), scale, zero, G16)
    assert output_error(x, w, clipped) <= output_error(x, w, rtn_weight(w, G16)) * (1 + 1e-6)


def test_folding_scales_into_layernorm_leaves_the_float_model_unchanged():
    torch.manual_seed(0)
    norm, fc = nn.LayerNorm(16), nn.Linear(16, 8)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(10, 16)
    with torch.no_grad():
        ref = fc(norm(x))
        s = torch.rand(16) * 4 + 0.1
        scale_inputs([fc], s)
        scale_outputs(norm, 1 / s)
        torch.testing.assert_close(fc(norm(x)), ref, rtol=1e-5, atol=1e-5)


def test_try_fold_accepts_exact_folds_and_restores_inexact_ones():
    model, task = tiny_lm(), lm_task()
    block = model.blocks[0]
    calls = [((model.embed(ids) + model.pos[:, : ids.shape[1]],), {}) for ids, _ in task.train]
    run = BlockRun(model, "blocks.0", block, calls)
    groups = {g.selected[0]: g for g in run.discover({f"blocks.0.{n}" for n in ("attn.q", "attn.proj", "fc2")})}
    reference = run.forward(limit=2)
    s = torch.rand(32) + 0.5
    assert run.try_fold(groups["blocks.0.attn.q"], s, reference) == "blocks.0.norm1"
    assert run.try_fold(groups["blocks.0.attn.proj"], s, reference) == "blocks.0.attn.v"
    before = {k: v.clone() for k, v in block.state_dict().items()}
    assert run.try_fold(groups["blocks.0.fc2"], torch.rand(64) + 0.5, reference) is None  # GELU: not exact
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())  # nothing changed
    for out, ref in zip(run.forward(limit=2), reference):  # the exact folds kept the float outputs
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_awq_step_beats_rtn_and_round_trips(tmp_path):
    task = lm_task()
    ids, ref = _ids_and_ref(task)
    ctx = StepContext(task=task)
    awq = AWQQuantize(bits=3, group_size=16, grid=10, calibration_batches=2).apply(tiny_lm(), ctx)
    rtn = RTNQuantize(bits=3, group_size=16).apply(tiny_lm(), StepContext(task=task))
    assert _error(awq, ids, ref) < 0.8 * _error(rtn, ids, ref)  # measured: 0.222 vs 0.292
    assert isinstance(awq.blocks[0].attn.q, QuantizedLinear)  # folded into norm1
    assert isinstance(awq.blocks[0].fc2, ScaledInputLinear)  # after the GELU: explicit scale
    assert any("blocks.0.fc1: alpha" in line and "-> blocks.0.norm2" in line for line in ctx.log)
    loaded = nc.load(nc.save(awq, tmp_path / "awq.ncz"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), awq(ids), rtol=0, atol=0)


# --- SmoothQuant / W8A8 ---------------------------------------------------------------------------------


def _w8a8_error(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> float:
    """Output error of int8 per-channel weights W diag(s) on per-token int8 activations x / s."""
    w_q = rtn_weight(w * s, INT8)
    return float((fake_quant_int8(x / s) @ w_q.T - x @ w.T).norm())


def test_smoothing_reduces_w8a8_error_on_outlier_channels(outliers):
    w, x, _ = outliers
    x = x.clone()
    x[:, [1, 5, 9]] *= 5  # 100x outliers, as in LLM activations
    s = smoothing_scales(x.abs().amax(0), w.abs().amax(0), 0.5)
    plain, smooth = _w8a8_error(x, w, torch.ones(64)), _w8a8_error(x, w, s)
    assert smooth < 0.5 * plain  # measured: 0.26x


def test_smoothing_alone_leaves_the_float_model_unchanged():
    model = tiny_lm()
    ids = next(iter(lm_task().test))[0]
    with torch.no_grad():
        ref = model(ids)
        for block in model.blocks:
            x = block.norm1.weight.abs()  # any positive factors: the fold is exact for all of them
            qkv = [block.attn.q, block.attn.k, block.attn.v]
            s = smoothing_scales(x, torch.stack([m.weight.abs().amax(0) for m in qkv]).amax(0), 0.5)
            scale_inputs(qkv, s)
            scale_outputs(block.norm1, 1 / s)
        torch.testing.assert_close(model(ids), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act_mode", ["token", "tensor"])
def test_smoothquant_w8a8_beats_plain_w8a8_on_a_transformer(act_mode, tmp_path):
    task = lm_task()
    ids, ref = _ids_and_ref(task)
    errors = {}
    for step in (
        W8A8Quantize(act_mode=act_mode, calibration_batches=2),
        SmoothQuant(act_mode=act_mode, calibration_batches=2),
    ):
        ctx = StepContext(task=task)
        model = step.apply(tiny_lm(), ctx)
        errors[step.kind] = _error(model, ids, ref)
        assert "fake-quantized" in ctx.log[-1]  # honest: activations are simulated
        assert isinstance(model.blocks[0].fc1, ScaledInputLinear) and model.blocks[0].fc1.act_mode == act_mode
    assert errors["smoothquant"] < 0.8 * errors["w8a8"]  # measured: token 0.014 vs 0.024, tensor 0.024 vs 0.050
    loaded = nc.load(nc.save(model, tmp_path / "sq.ncz"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_dynamic_act_mode_runs_real_int8_kernels_and_smoothing_helps_them(tmp_path):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    task = lm_task()
    ids, ref = _ids_and_ref(task)
    errors = {}
    for step in (
        W8A8Quantize(act_mode="dynamic", calibration_batches=2),
        SmoothQuant(alpha=0.75, act_mode="dynamic", calibration_batches=2),
    ):
        ctx = StepContext(task=task)
        model = step.apply(tiny_lm(), ctx)
        errors[step.kind] = _error(model, ids, ref)
        assert "int8 GEMM" in ctx.log[-1] and "fake" not in ctx.log[-1]
        kernels = [m for m in model.modules() if isinstance(m, DynamicLinear)]
        assert len(kernels) == 12  # 2 blocks x (q, k, v, proj, fc1, fc2); the head stays float
        assert count_macs(model, ids) == count_macs(tiny_lm(), ids)  # the int8 kernels' MACs are not lost
    assert errors["smoothquant"] < 0.8 * errors["w8a8"]  # measured: 0.038 vs 0.086
    loaded = nc.load(nc.save(model, tmp_path / "sq-dyn.ncz"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_fake_quant_int8_rounds_each_token_to_its_grid():
    x = torch.tensor([[127.0, 0.4, -3.3], [1.27, 0.011, 0.0]])
    out = fake_quant_int8(x)
    torch.testing.assert_close(out, torch.tensor([[127.0, 0.0, -3.0], [1.27, 0.01, 0.0]]))


# --- HQQ ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 3, 2])
@pytest.mark.parametrize("group", [16, None])
def test_hqq_error_is_at_most_rtn_without_data(bits, group):
    torch.manual_seed(bits)
    w = torch.randn(64, 64)
    w[torch.rand_like(w) < 0.02] *= 5  # a few outlier weights
    spec = QuantSpec(bits=bits, symmetric=False, granularity="group" if group else "channel", group_size=group)
    w_rtn = rtn_weight(w, spec)
    w_hqq = hqq_quantize(w, spec)[0]
    assert (w - w_hqq).norm() < (w - w_rtn).norm()  # measured: 0.85-0.98x RTN
    x = torch.randn(256, 64)
    assert output_error(x, w, w_hqq) < output_error(x, w, w_rtn)


def test_hqq_step_packs_fractional_zero_points_exactly(tmp_path):
    task = lm_task()
    ids, ref = _ids_and_ref(task)
    model = HQQQuantize(bits=3, group_size=16).apply(tiny_lm(), StepContext(task=task))
    rtn = RTNQuantize(bits=3, group_size=16).apply(tiny_lm(), StepContext(task=task))
    layer = model.blocks[0].fc1
    assert layer.zero_point.dtype == torch.float16 and layer.packed.numel() == 64 * 32 * 3 // 8
    assert _error(model, ids, ref) < _error(rtn, ids, ref)
    w = tiny_lm().blocks[0].fc1.weight.detach()
    spec = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=16)
    assert torch.equal(layer.decode_weight(), hqq_quantize(w, spec)[0])
    loaded = nc.load(nc.save(model, tmp_path / "hqq.ncz"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


# --- settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,settings,message",
    [
        (AWQQuantize, {"grid": 0}, "grid must be an integer >= 1"),
        (AWQQuantize, {"max_shrink": 1.0}, r"max_shrink must be a number in \[0, 1\)"),
        (AWQQuantize, {"clip": "yes"}, "clip must be True or False"),
        (AWQQuantize, {"bits": 9}, "bits must be an integer in"),
        (SmoothQuant, {"alpha": 1.5}, r"alpha must be a number in \[0, 1\]"),
        (SmoothQuant, {"act_mode": "channel"}, "act_mode must be one of token, tensor"),
        (W8A8Quantize, {"calibration_batches": 0}, "calibration_batches must be an integer >= 1"),
        (HQQQuantize, {"symmetric": True}, "symmetric must be False"),
        (HQQQuantize, {"lp_norm": 0}, r"lp_norm must be a number in \(0, 1\]"),
        (HQQQuantize, {"kappa": 0.5}, "kappa must be a number >= 1"),
        (HQQQuantize, {"iters": 0}, "iters must be an integer >= 1"),
    ],
)
def test_bad_settings_name_the_setting(cls, settings, message):
    with pytest.raises(ValueError, match=message):
        cls(**settings)
