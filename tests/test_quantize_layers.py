"""Packed inference layers: exact dequantized forward, bit-identical save -> load, real size savings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nc
from nncompress.measure.size import artifact_bytes, count_nonzero, count_params
from nncompress.quantize.codebook import kmeans_codebook
from nncompress.quantize.layers import (
    BinaryConv2d,
    CodebookLinear,
    HalfLinear,
    QuantizedConv2d,
    QuantizedLinear,
    binary_module,
    codebook_module,
    half_module,
    quantize_weight_module,
)
from nncompress.quantize.primitives import QuantSpec, dequantize, quantize

SPECS = [
    QuantSpec(bits=2, symmetric=True, granularity="tensor"),
    QuantSpec(bits=3, symmetric=False, granularity="channel"),
    QuantSpec(bits=4, symmetric=True, granularity="channel"),
    QuantSpec(bits=4, symmetric=False, granularity="group", group_size=16),
    QuantSpec(bits=5, symmetric=True, granularity="group", group_size=8),
    QuantSpec(bits=8, symmetric=False, granularity="tensor"),
]


def _layers() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "linear": nn.Linear(32, 12),
        "conv": nn.Conv2d(4, 6, 3, stride=2, padding=1),  # 36 values per output channel
        "grouped": nn.Conv2d(4, 8, (2, 4), padding=(1, 0), dilation=(1, 2), groups=2, bias=False),  # 16 values
    }


def _inputs(layer: nn.Module) -> torch.Tensor:
    return torch.randn(3, 32) if isinstance(layer, nn.Linear) else torch.randn(2, 4, 9, 9)


def _reference(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.bits}b-{'sym' if s.symmetric else 'aff'}-{s.granularity}")
@pytest.mark.parametrize("kind", ["linear", "conv", "grouped"])
@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_uniform_layer_forward_is_exactly_the_dequantized_weight(kind, spec, method):
    layer = _layers()[kind]
    if spec.granularity == "group" and layer.weight[0].numel() % spec.group_size:
        pytest.skip("group size does not divide this layer")
    q = quantize_weight_module(layer, spec, method=method)
    assert isinstance(q, QuantizedLinear if kind == "linear" else QuantizedConv2d)
    scale, zp = q.scale.float(), q.zero_points()
    expected = dequantize(quantize(layer.weight, scale, zp, spec), scale, zp, spec)
    assert torch.equal(q.decode_weight(), expected)
    x = _inputs(layer)
    assert torch.equal(q(x), _reference(layer, x, expected))
    # the stored codes are at their true width: ceil(numel * bits / 8) bytes
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == (layer.weight.numel() * spec.bits + 7) // 8
    assert (q.zero_point is None) == spec.symmetric
    if method == "minmax":  # nothing clipped: every weight within half a step of its code
        step = scale if spec.granularity != "group" else None
        if step is not None:
            assert ((expected - layer.weight).abs() <= step / 2 * (1 + 1e-5) + 1e-7).all()


def test_scales_are_fp16_when_computed_and_kept_exact_when_given():
    layer = _layers()["linear"]
    spec = QuantSpec(bits=4, granularity="channel")
    assert quantize_weight_module(layer, spec).scale.dtype == torch.float16
    scale = torch.rand(12, 1) * 0.01 + 1e-3
    q = quantize_weight_module(layer, spec, scale=scale)
    assert q.scale.dtype == torch.float32 and torch.equal(q.scale, scale)
    zp = torch.randint(0, 16, (12, 1))
    affine = quantize_weight_module(
        layer, QuantSpec(bits=4, symmetric=False, granularity="channel"), scale=scale, zero_point=zp
    )
    assert torch.equal(affine.zero_points(), zp.to(torch.int32))
    with pytest.raises(ValueError, match="scale has 3 values .* needs 12"):
        quantize_weight_module(layer, spec, scale=torch.ones(3))
    with pytest.raises(ValueError, match=r"bits in \[2, 8\], got 1"):
        quantize_weight_module(layer, QuantSpec(bits=1, symmetric=False))
    with pytest.raises(ValueError, match=r"bits in \[2, 8\], got 9"):
        quantize_weight_module(layer, QuantSpec(bits=9))
    with pytest.raises(ValueError, match="nn.Linear, nn.Conv1d or nn.Conv2d, got Conv3d"):
        quantize_weight_module(nn.Conv3d(2, 2, 3), spec)


def test_codebook_and_binary_layers_decode_their_codes():
    torch.manual_seed(0)
    layer = nn.Linear(32, 12)
    centroids, codes = kmeans_codebook(layer.weight, 3)
    cb = codebook_module(layer, centroids, codes, 3)
    assert isinstance(cb, CodebookLinear) and torch.equal(cb.codes(), codes)
    x = torch.randn(3, 32)
    assert torch.equal(cb(x), F.linear(x, centroids[codes.long()], layer.bias))
    assert cb.packed.numel() == 32 * 12 * 3 // 8

    conv = nn.Conv2d(3, 5, 3)
    b = binary_module(conv)
    assert isinstance(b, BinaryConv2d) and b.packed.numel() == (conv.weight.numel() + 7) // 8
    alpha = conv.weight.detach().abs().mean((1, 2, 3), keepdim=True)  # XNOR-Net: mean |w| per filter
    expected = torch.where(conv.weight >= 0, 1.0, -1.0) * alpha
    torch.testing.assert_close(b.decode_weight(), expected, rtol=0, atol=0)
    given = binary_module(conv, alpha=torch.full((5,), 0.25))
    assert given.decode_weight().abs().unique().tolist() == [0.25]
    with pytest.raises(ValueError, match="alpha must hold 1 or 5"):
        binary_module(conv, alpha=torch.ones(3))
    with pytest.raises(ValueError, match="codes must be integers indexing the 4 centroids"):
        codebook_module(layer, torch.zeros(4), torch.full((12, 32), 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="holds 1 to 4 centroids, got 8"):
        codebook_module(layer, torch.zeros(8), torch.zeros(12, 32, dtype=torch.uint8), 2)


def _packed_model() -> nn.Sequential:
    torch.manual_seed(1)
    conv, lin1, lin2, lin3 = nn.Conv2d(1, 4, 3), nn.Linear(4 * 8 * 8, 64), nn.Linear(64, 64), nn.Linear(64, 10)
    return nn.Sequential(
        quantize_weight_module(conv, QuantSpec(bits=3, symmetric=False, granularity="channel")),
        nn.Flatten(),
        quantize_weight_module(lin1, QuantSpec(bits=4, granularity="group", group_size=16), method="mse"),
        nn.ReLU(),
        codebook_module(lin2, *kmeans_codebook(lin2.weight, 5), 5, centroid_dtype=torch.float16),
        binary_module(lin3),
    )


def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = _packed_model().eval()
    model.append(half_module(nn.Linear(10, 10)))
    x = torch.randn(4, 1, 10, 10)
    with torch.inference_mode():
        out = model(x)
    loaded = nc.load(nc.save(model, tmp_path / "m.ncz"))
    assert [type(m) for m in loaded] == [type(m) for m in model]
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b)
    with torch.inference_mode():
        assert torch.equal(loaded(x), out)
    # the decoded-weight cache is never saved
    assert all("cache" not in k for k in loaded.state_dict())


def test_cache_follows_buffers_and_works_after_inference_mode():
    torch.manual_seed(0)
    a, b = nn.Linear(16, 8), nn.Linear(16, 8)
    qa, qb = (quantize_weight_module(m, QuantSpec(bits=4, granularity="channel")) for m in (a, b))
    x = torch.randn(2, 16, requires_grad=True)
    with torch.inference_mode():
        qa(x.detach())  # cache built inside inference mode must still work with autograd later
    qa(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    qa.load_state_dict(qb.state_dict())
    assert torch.equal(qa(x), qb(x))
    with torch.no_grad():
        qa.scale.mul_(2)  # in-place edits invalidate the cache too
    torch.testing.assert_close(qa.dequantized_weight(), 2 * qb.dequantized_weight(), rtol=0, atol=0)


def test_parameter_counts_include_packed_weights():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight[:, :16] = 0  # zeros survive symmetric quantization exactly
    for packed in (
        quantize_weight_module(layer, QuantSpec(bits=4, granularity="channel")),
        codebook_module(layer, *kmeans_codebook(layer.weight, 4, keep_zero=True), 4),
        half_module(layer),
    ):
        decoded = packed.dequantized_weight()
        assert count_params(packed) == 64 * 32 + 32
        assert (decoded[:, :16] == 0).all()
        assert count_nonzero(packed) == int(decoded.count_nonzero()) + 32


def test_artifacts_shrink_to_their_bit_width():
    torch.manual_seed(0)
    layer = nn.Linear(256, 256)
    fp32 = 4 * (256 * 256 + 256)  # the float32 bytes (the fp32 artifact itself may be DEFLATE-d a few % smaller)
    assert 0.85 * fp32 <= artifact_bytes(nn.Sequential(layer)) <= fp32 + 4096
    four = artifact_bytes(nn.Sequential(quantize_weight_module(layer, QuantSpec(bits=4, granularity="channel"))))
    group = artifact_bytes(
        nn.Sequential(
            quantize_weight_module(layer, QuantSpec(bits=4, symmetric=False, granularity="group", group_size=64))
        )
    )
    one = artifact_bytes(nn.Sequential(binary_module(layer)))
    five = artifact_bytes(nn.Sequential(codebook_module(layer, *kmeans_codebook(layer.weight, 5), 5)))
    half = artifact_bytes(nn.Sequential(half_module(layer)))
    # 65536 weights: 4 bits = 32 KiB, 1 bit = 8 KiB, 5 bits = 40 KiB, fp16 = 128 KiB of 256 KiB (+ a few KB skeleton)
    assert four <= 0.15 * fp32
    assert group <= 0.15 * fp32
    assert one <= 0.05 * fp32
    assert five <= 0.20 * fp32
    assert 0.45 * fp32 <= half <= 0.55 * fp32


def test_half_layer_takes_and_returns_float32():
    layer = nn.Linear(8, 4)
    half = half_module(layer)
    assert isinstance(half, HalfLinear) and half.weight16.dtype == half.bias.dtype == torch.float16
    x = torch.randn(2, 8)
    out = half(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer(x), rtol=2e-3, atol=2e-3)  # fp16 keeps 11 significant bits
