"""Quantization primitives: integer ranges, round-trip error bounds per scheme, STE gradients,
low-bit schemes onto their level sets, and lossless bit packing."""

from __future__ import annotations

import math

import pytest
import torch

from nncompress.quantize.primitives import (
    QuantSpec,
    binarize,
    cast_float,
    compute_qparams,
    dequantize,
    dequantize_power_of_two,
    fake_quantize,
    float_roundtrip,
    pack_bits,
    packed_nbytes,
    power_of_two,
    qparams_from_range,
    quantize,
    quantize_float_zero,
    ternarize,
    to_signed,
    to_unsigned,
    unpack_bits,
)

GRANULARITIES = [("tensor", None), ("channel", None), ("group", 8)]


def per_element_scale(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The scale that applies to each element of x (dequantizing code 1 with zero point 0)."""
    return dequantize(torch.ones_like(x, dtype=torch.int32), scale, torch.zeros_like(zp), spec)


def test_integer_ranges_and_storage_dtypes():
    assert (QuantSpec(8).qmin, QuantSpec(8).qmax, QuantSpec(8).storage_dtype) == (-127, 127, torch.int8)
    asym = QuantSpec(8, symmetric=False)
    assert (asym.qmin, asym.qmax, asym.storage_dtype) == (0, 255, torch.uint8)
    assert (QuantSpec(2).qmin, QuantSpec(2).qmax) == (-1, 1)  # restricted: 3 levels, symmetric around 0
    assert QuantSpec(16).storage_dtype == torch.int16
    assert QuantSpec(12, symmetric=False).storage_dtype == torch.int16
    assert QuantSpec(16, symmetric=False).storage_dtype == torch.int32
    assert QuantSpec(1, symmetric=False).qmax == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 0}, r"bits must be an integer in \[1, 16\], got 0"),
        ({"bits": 33}, r"bits must be an integer in \[1, 16\], got 33"),
        ({"bits": 4.0}, r"bits must be an integer in \[1, 16\], got 4.0"),
        ({"bits": 1}, r"symmetric quantization needs bits >= 2, got bits=1"),
        ({"granularity": "row"}, r"granularity must be one of .*'row'"),
        ({"granularity": "group"}, r"needs an integer group_size >= 1, got None"),
        ({"group_size": 4}, r"group_size is only used with granularity='group'"),
    ],
)
def test_bad_specs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**kwargs)


@pytest.mark.parametrize("method", ["minmax", "mse"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_a_group_size_that_does_not_divide_leaves_a_ragged_last_group(method, symmetric):
    torch.manual_seed(0)
    x = torch.randn(4, 10)
    spec = QuantSpec(4, symmetric=symmetric, granularity="group", group_size=4)  # groups of 4, 4 and 2
    scale, zero = compute_qparams(x, spec, method)
    assert scale.shape == zero.shape == (4, 3, 1)
    tail = compute_qparams(x[:, 8:], QuantSpec(4, symmetric=symmetric, granularity="channel"), method)
    assert torch.equal(scale[:, 2], tail[0]) and torch.equal(zero[:, 2], tail[1])  # zero padding changes nothing
    codes = quantize(x, scale, zero, spec)
    assert codes.shape == x.shape
    assert torch.equal(
        codes[:, 8:], quantize(x[:, 8:], *tail, QuantSpec(4, symmetric=symmetric, granularity="channel"))
    )
    back = dequantize(codes, scale, zero, spec)
    step = scale.expand(4, 3, 4).reshape(4, 12)[:, :10]
    if method == "minmax":
        assert ((back - x).abs() <= step / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="method must be one of"):
        compute_qparams(torch.randn(4, 12), spec, method="kl")


def test_float_zero_points_put_the_grid_ends_on_each_groups_min_and_max():
    torch.manual_seed(0)
    x = torch.rand(6, 20) + 2.0  # all positive: an integer zero point wastes the range below the minimum
    spec = QuantSpec(3, symmetric=False, granularity="group", group_size=8)  # 8, 8 and a ragged 4
    scale, zero = compute_qparams(x, spec, float_zero=True)
    assert zero.is_floating_point() and scale.shape == (6, 3, 1)
    back = dequantize(quantize_float_zero(x, scale, zero, spec), scale, zero, spec)
    mins = torch.stack([x[:, :8].amin(1), x[:, 8:16].amin(1), x[:, 16:].amin(1)], 1)
    maxs = torch.stack([x[:, :8].amax(1), x[:, 8:16].amax(1), x[:, 16:].amax(1)], 1)
    torch.testing.assert_close((-zero * scale)[..., 0], mins)  # code 0 decodes to the group's minimum
    torch.testing.assert_close(((7 - zero) * scale)[..., 0], maxs)  # code 7 to its maximum
    int_scale, int_zero = compute_qparams(x, spec)
    int_back = dequantize(quantize(x, int_scale, int_zero, spec), int_scale, int_zero, spec)
    assert (back - x).norm() < 0.5 * (int_back - x).norm()
    with pytest.raises(ValueError, match="float_zero needs symmetric=False"):
        compute_qparams(x, QuantSpec(3), float_zero=True)


def test_hand_computed_parameters_and_codes():
    scale, zp = qparams_from_range(-1.0, 3.0, QuantSpec(8, symmetric=False))
    assert scale.item() == pytest.approx(4 / 255) and zp.item() == 64  # round(1 / (4/255)) = round(63.75)
    spec = QuantSpec(8)
    scale, zp = qparams_from_range(-1.0, 0.5, spec)
    assert scale.item() == pytest.approx(1 / 127) and zp.item() == 0
    q = quantize(torch.tensor([0.5, -2.0, 0.0]), scale, zp, spec)
    assert q.dtype == torch.int8 and q.tolist() == [64, -127, 0]
    assert dequantize(q, scale, zp, spec).tolist() == pytest.approx([64 / 127, -1.0, 0.0])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("granularity", "group_size"), GRANULARITIES)
@pytest.mark.parametrize("shape", [(8, 32), (6, 4, 2, 2)])
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric, granularity, group_size, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(bits)) * torch.linspace(0.1, 3, shape[0]).reshape(
        -1, *[1] * (len(shape) - 1)
    )
    spec = QuantSpec(bits, symmetric=symmetric, granularity=granularity, group_size=group_size)
    scale, zp = compute_qparams(x, spec)
    groups = math.prod(shape[1:]) // 8
    expected = {"tensor": (), "channel": (shape[0],) + (1,) * (len(shape) - 1), "group": (shape[0], groups, 1)}
    assert tuple(scale.shape) == expected[granularity] == tuple(zp.shape)
    q = quantize(x, scale, zp, spec)
    assert q.dtype == spec.storage_dtype and q.shape == x.shape
    assert spec.qmin <= int(q.min()) and int(q.max()) <= spec.qmax
    err = (dequantize(q, scale, zp, spec) - x).abs()
    step = per_element_scale(x, scale, zp, spec)
    assert (err <= step / 2 * (1 + 1e-5) + 1e-7).all()  # every x lies inside its slice's range
    assert torch.equal(fake_quantize(x, scale, zp, spec), dequantize(q, scale, zp, spec))


def test_asymmetric_keeps_zero_exact_and_all_zero_tensors_are_safe():
    x = torch.tensor([[0.0, 0.3, 1.7, 2.9], [0.0, 0.0, 0.0, 0.0]])
    for spec in (QuantSpec(4, symmetric=False, granularity="channel"), QuantSpec(4, granularity="channel")):
        for method in ("minmax", "mse"):
            scale, zp = compute_qparams(x, spec, method)
            assert (scale > 0).all()
            dq = dequantize(quantize(x, scale, zp, spec), scale, zp, spec)
            assert torch.equal(dq[x == 0], torch.zeros(int((x == 0).sum())))


def test_mse_clipping_beats_minmax_on_heavy_tails():
    g = torch.Generator().manual_seed(0)
    chi2 = torch.randn(16, 256, 3, generator=g).pow(2).sum(-1)
    x = torch.randn(16, 256, generator=g) / (chi2 / 3).sqrt()  # Student t with 3 degrees of freedom
    spec = QuantSpec(3, granularity="channel")
    errors = {}
    for method in ("minmax", "mse"):
        scale, zp = compute_qparams(x, spec, method)
        errors[method] = (dequantize(quantize(x, scale, zp, spec), scale, zp, spec) - x).pow(2).sum(1)
    assert (errors["mse"] <= errors["minmax"] * (1 + 1e-6)).all()  # r = 1 is a candidate
    assert errors["mse"].sum() < 0.7 * errors["minmax"].sum()  # 0.61 with this seed: clipping pays at 3 bits


def test_fake_quantize_straight_through_gradients():
    spec = QuantSpec(4)
    x = torch.tensor([0.33, -0.52, 5.0, -5.0], requires_grad=True)
    scale = torch.tensor(0.1, requires_grad=True)
    out = fake_quantize(x, scale, torch.tensor(0), spec)
    assert out.tolist() == pytest.approx([0.3, -0.5, 0.7, -0.7])
    out.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]  # identity inside the range, 0 where clipped
    # LSQ: d/ds = (round(x/s) - x/s) inside, qmax / qmin where clipped: (3 - 3.3) + (-5 + 5.2) + 7 - 7
    assert scale.grad.item() == pytest.approx(-0.1, abs=1e-5)


def test_float_casts_round_to_nearest():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 100
    assert ((float_roundtrip(x, "fp16") - x).abs() <= x.abs() * 2**-11).all()
    assert ((float_roundtrip(x, "bf16") - x).abs() <= x.abs() * 2**-8).all()
    assert cast_float(x, "bf16").dtype == torch.bfloat16
    assert cast_float(torch.tensor([1e6, -1e6]), "fp16").tolist() == [65504.0, -65504.0]
    assert math.isinf(cast_float(torch.tensor([1e6]), "fp16", saturate=False).item())
    with pytest.raises(ValueError, match=r"fmt must be one of .*got 'fp8'"):
        cast_float(x, "fp8")


def test_binarize_is_sign_times_mean_abs():
    w = torch.tensor([[1.0, -3.0, 0.0, 2.0], [-0.5, -0.5, 0.5, 1.5]])
    signs, alpha = binarize(w)
    assert signs.tolist() == [[1, -1, 1, 1], [-1, -1, 1, 1]]
    assert alpha.tolist() == [[1.5], [0.75]]
    conv = torch.randn(5, 3, 3, 3)
    signs, alpha = binarize(conv)
    assert alpha.shape == (5, 1, 1, 1)
    dq = signs * alpha
    assert torch.equal(dq.abs(), alpha.expand_as(conv))  # on the level set {-alpha_c, +alpha_c}
    assert torch.allclose(alpha.reshape(-1), conv.abs().mean((1, 2, 3)))
    assert binarize(w, axis=None)[1].item() == pytest.approx(w.abs().mean().item())


def test_ternarize_thresholds_at_seven_tenths_of_mean_abs():
    w = torch.tensor([[2.0, -2.0, 0.1, 0.0], [1.0, -0.2, 0.9, 0.3]])  # mean|w| = 1.025 and 0.6
    codes, alpha = ternarize(w)
    # delta = 0.7175: keep +-2 -> alpha 2; delta = 0.42: keep 1.0 and 0.9 -> alpha 0.95
    assert codes.tolist() == [[1, -1, 0, 0], [1, 0, 1, 0]]
    assert alpha.reshape(-1).tolist() == pytest.approx([2.0, 0.95])
    conv = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(2))
    codes, alpha = ternarize(conv)
    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    for c in range(4):
        absw = conv[c].abs()
        kept = absw > 0.7 * absw.mean()
        assert torch.equal(codes[c] != 0, kept)
        assert alpha[c].item() == pytest.approx(absw[kept].mean().item(), rel=1e-6)
    assert ternarize(torch.zeros(2, 3))[1].reshape(-1).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="threshold_ratio must be >= 0, got -1"):
        ternarize(w, threshold_ratio=-1)


@pytest.mark.parametrize("bits", [2, 3, 4, 6])
def test_power_of_two_takes_the_nearest_level(bits):
    w = torch.randn(6, 50, generator=torch.Generator().manual_seed(bits))
    codes, scale = power_of_two(w, bits)
    m = 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int8 and int(codes.abs().max()) == m  # the max |w| is the top level
    assert torch.equal(scale.reshape(-1), w.abs().amax(1))
    dq = dequantize_power_of_two(codes, scale, bits)
    levels = torch.cat([torch.zeros(1), 2.0 ** torch.arange(1 - m, 1).float()])  # (M + 1,) relative to scale
    rel = (w / scale).abs()
    nearest = levels[(rel[..., None] - levels).abs().argmin(-1)]
    assert torch.allclose(dq.abs() / scale, nearest, atol=1e-6)
    assert torch.equal(dq, torch.sign(w) * scale * nearest.where(dq != 0, 0.0))  # exact powers of two
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 8\], got 1"):
        power_of_two(w, 1)


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("numel", [0, 1, 7, 13, 1001])
def test_packing_is_lossless_and_exactly_sized(bits, numel):
    codes = torch.randint(0, 2**bits, (numel,), generator=torch.Generator().manual_seed(bits * 7 + numel))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel * bits / 8) == packed_nbytes(numel, bits)
    assert torch.equal(unpack_bits(packed, bits, numel).long(), codes)


def test_packing_layout_is_a_little_endian_bit_stream():
    assert pack_bits(torch.tensor([1, 2, 3]), 2).tolist() == [0b111001]
    assert pack_bits(torch.tensor([5, 3]), 3).tolist() == [0b011101]  # 101 then 011, LSB first
    assert pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b1101, 1]
    assert pack_bits(torch.tensor([0x1FF]), 9).tolist() == [0xFF, 1]
    assert pack_bits(torch.tensor([0xABCD]), 16).tolist() == [0xCD, 0xAB]


def test_signed_codes_survive_packing():
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(3))
    for bits in (2, 3, 5, 8, 11, 16):
        spec = QuantSpec(bits, granularity="channel")
        scale, zp = compute_qparams(x, spec)
        q = quantize(x, scale, zp, spec)
        unsigned = to_unsigned(q, bits)
        back = to_signed(unpack_bits(pack_bits(unsigned, bits), bits, q.numel()), bits).reshape(q.shape)
        assert torch.equal(back.long(), q.long())
    assert to_unsigned(torch.tensor([-8, 7]), 4).tolist() == [0, 15]


def test_packing_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 7\] for bits=3, got \[0, 8\]"):
        pack_bits(torch.tensor([0, 8]), 3)
    with pytest.raises(ValueError, match=r"got \[-1, 2\].*to_unsigned"):
        pack_bits(torch.tensor([-1, 2]), 4)
    with pytest.raises(ValueError, match="integer tensor, got dtype torch.float32"):
        pack_bits(torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match=r"bits must be an integer in \[1, 16\], got 17"):
        pack_bits(torch.tensor([1]), 17)
    with pytest.raises(ValueError, match="at least 2 bytes for 3 5-bit codes, got 1"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 5, 3)
    with pytest.raises(ValueError, match=r"signed 4-bit codes must lie in \[-8, 7\], got \[-9, 0\]"):
        to_unsigned(torch.tensor([-9, 0]), 4)
