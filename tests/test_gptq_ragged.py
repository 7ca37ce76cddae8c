"""Group sizes that do not divide a layer's inputs (a ragged last group) and fractional (fp16) zero
points, for every one-shot weight-only quantizer, through packing, saving and loading."""

from __future__ import annotations

import pytest
import torch
from llm_archs import lm_task, outlier_inputs, output_error, tiny_lm

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.quantize.gptq import GPTQQuantize, RTNQuantize, gptq_quantize, rtn_weight
from nncompress.quantize.hqq import hqq_quantize
from nncompress.quantize.layers import QuantizedLinear
from nncompress.quantize.primitives import QuantSpec

RAGGED = {"dim": 40, "hidden": 72}  # groups of 16: 40 = 2 x 16 + 8, 72 = 4 x 16 + 8
CALIB = {"calibration_batches": 1}


def _steps(**settings) -> list[nc.Step]:
    return [
        RTNQuantize(**settings),
        GPTQQuantize(**settings, **CALIB),
        nc.AWQQuantize(**settings, **CALIB),
    ]


def _ids(task: nc.Task) -> torch.Tensor:
    return next(iter(task.test))[0]


@pytest.mark.parametrize("zero_dtype", ["int", "fp16"])
def test_every_quantizer_packs_a_ragged_last_group_and_round_trips(tmp_path, zero_dtype):
    task = lm_task()
    ids = _ids(task)
    steps = _steps(bits=3, group_size=16, zero_dtype=zero_dtype)
    if zero_dtype == "fp16":
        steps.append(nc.HQQQuantize(bits=3, group_size=16))
    for step in steps:
        ctx = StepContext(task=task)
        model = step.apply(tiny_lm(**RAGGED), ctx)
        fc1, fc2 = model.blocks[0].fc1, model.blocks[1].fc2
        assert isinstance(fc2, QuantizedLinear) or isinstance(getattr(fc2, "layer", None), QuantizedLinear)
        packed = fc2 if isinstance(fc2, QuantizedLinear) else fc2.layer
        assert packed.describe()["granularity"] == "group" and packed.scale.shape == (40, 5, 1)
        assert packed.packed.numel() == 40 * 72 * 3 // 8  # codes packed at 3 bits, padding not stored
        assert (packed.zero_point.dtype == torch.float16) == (zero_dtype == "fp16" or step.kind == "hqq")
        assert any("ragged last group on layers with 40 = 2 x 16 + 8; 72 = 4 x 16 + 8" in n for n in ctx.log)
        assert isinstance(fc1, nn_quantized_types())
        loaded = nc.load(nc.save(model, tmp_path / f"{step.kind}-{zero_dtype}.ncz"))
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def nn_quantized_types() -> tuple[type, ...]:
    from nncompress.quantize.smoothquant import ScaledInputLinear

    return (QuantizedLinear, ScaledInputLinear)


@pytest.mark.parametrize("zero_dtype", ["int", "fp16"])
def test_rtn_quantizes_the_ragged_group_as_the_tail_alone(zero_dtype):
    step = RTNQuantize(bits=4, group_size=16, zero_dtype=zero_dtype, keep_classifier=False)
    ctx = StepContext(task=lm_task())
    decoded = step.apply(tiny_lm(**RAGGED), ctx).blocks[0].fc2.decode_weight()
    w = tiny_lm(**RAGGED).blocks[0].fc2.weight.detach()
    parts = []
    for cols in (slice(0, 64), slice(64, 72)):  # 4 whole groups, then the 8 inputs left
        part = torch.nn.Linear(cols.stop - cols.start, 40)
        with torch.no_grad():
            part.weight.copy_(w[:, cols])
        parts.append(step.apply(torch.nn.Sequential(part), ctx)[0].decode_weight())
    assert torch.equal(decoded, torch.cat(parts, 1))


def test_gptq_with_a_ragged_group_beats_rtn_and_packs_exactly():
    torch.manual_seed(0)
    w, x = torch.randn(24, 100), outlier_inputs(400, 100, seed=0)
    h = 2 * x.T @ x / x.shape[0]
    spec = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=32)  # 3 x 32 + 4
    for options in ({}, {"act_order": True}, {"act_order": True, "static_groups": True}, {"clip": "mse"}):
        for float_zero in (False, True):
            w_hat, scale, zero = gptq_quantize(w, h, spec, float_zero=float_zero, **options)
            assert scale.shape == zero.shape == (24, 4, 1) and zero.is_floating_point() == float_zero
            assert output_error(x, w, w_hat) < 0.7 * output_error(x, w, rtn_weight(w, spec, float_zero=float_zero))
            layer = torch.nn.Linear(100, 24)
            packed = RTNQuantize(bits=3, group_size=32).pack(
                torch.nn.Sequential(layer), "0", layer, w_hat, scale, zero, spec
            )
            assert torch.equal(packed.decode_weight(), w_hat)


def test_hqq_optimizes_the_ragged_group_on_its_own():
    torch.manual_seed(0)
    w = torch.randn(16, 40)
    spec = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=16)
    w_hat, scale, zero = hqq_quantize(w, spec)
    assert scale.shape == zero.shape == (16, 3, 1)
    tail = hqq_quantize(w[:, 32:], QuantSpec(bits=3, symmetric=False, granularity="channel"))
    assert torch.equal(w_hat[:, 32:], tail[0]) and torch.equal(zero[:, 2], tail[2])
    assert (w - w_hat).norm() <= (w - rtn_weight(w, spec)).norm()


def test_float_zero_points_reproduce_weights_already_on_a_q4_1_grid():
    """GGUF Q4_1 weights (w = d q + m per 32): integer zero points round them again, fp16 ones do not."""
    torch.manual_seed(0)
    d = torch.rand(32, 4, 1) * 0.02 + 0.01
    m = -(torch.rand(32, 4, 1) * 6 + 5) * d  # minimum of each block: a fractional number of steps below 0
    q = torch.randint(0, 16, (32, 4, 32)).float()
    q[..., 0], q[..., 1] = 0, 15  # every block spans its full grid
    w = (q * d + m).reshape(32, 128).half().float()
    spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32)
    err_float = (rtn_weight(w, spec, float_zero=True) - w).abs().max()
    err_int = (rtn_weight(w, spec) - w).abs().max()
    assert err_float < 0.02 * float(d.min()) and err_int > 0.2 * float(d.min())


def test_gptq_float_zero_step_packs_fp16_zero_points(tmp_path):
    task = lm_task()
    ids = _ids(task)
    model = GPTQQuantize(bits=4, group_size=16, zero_dtype="fp16", **CALIB).apply(tiny_lm(), StepContext(task=task))
    layer = model.blocks[0].fc1
    assert layer.zero_point.dtype == torch.float16 and layer.zero_point.numel() == 64 * 2
    loaded = nc.load(nc.save(model, tmp_path / "g.ncz"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
