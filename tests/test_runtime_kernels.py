"""nncompress.runtime: packed Linears on fast kernels match the dequantized reference path within the
format's own error, the kernel rule picks what it says, and unsupported layers fall back exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import nncompress as nc
import nncompress.runtime as rt
from nncompress.quantize.layers import binary_module, codebook_module, half_module, quantize_weight_module
from nncompress.quantize.primitives import QuantSpec, compute_qparams
from nncompress.runtime import dispatch

CPU = rt.cpu_features()
needs_kernels = pytest.mark.skipif(
    not (CPU.x86 and CPU.avx512),
    reason=f"the int4/int8 CPU kernels run here only with AVX-512; this is {CPU.describe()}",
)
# bf16 activations and outputs: each rounds to 2^-9 relative, so outputs move by well under 2^-7.
BF16_REL = 2.0**-7


def _linear(out_features: int = 512, in_features: int = 576, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _outputs(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel path, reference path) outputs of ``layer`` on ``x``."""
    with torch.no_grad():
        fast = layer(x)
        with rt.use_kernels(False):
            reference = layer(x)
    return fast, reference


UNIFORM_CASES = [
    (QuantSpec(bits=4, symmetric=False, granularity="group", group_size=64), "int4pack-bf16"),
    (QuantSpec(bits=4, symmetric=True, granularity="group", group_size=128), "int4pack-bf16"),  # 576 = 4.5 x 128
    (QuantSpec(bits=3, symmetric=True, granularity="group", group_size=96), "int4pack-bf16"),  # kernel group 32
    (QuantSpec(bits=3, symmetric=False, granularity="group", group_size=32), "int4pack-bf16"),
    (QuantSpec(bits=2, symmetric=False, granularity="channel"), "int4pack-bf16"),
    (QuantSpec(bits=4, symmetric=True, granularity="tensor"), "int4pack-bf16"),
    (QuantSpec(bits=8, symmetric=False, granularity="channel"), "int8pack-bf16"),
    (QuantSpec(bits=8, symmetric=True, granularity="channel"), "int8pack-bf16"),
    (QuantSpec(bits=6, symmetric=False, granularity="channel"), "int8pack-bf16"),
    (QuantSpec(bits=8, symmetric=False, granularity="group", group_size=128), "int8pack-bf16"),  # ragged, 5 rows
    (QuantSpec(bits=8, symmetric=True, granularity="group", group_size=64), "int8pack-bf16"),
]


@needs_kernels
@pytest.mark.parametrize(("spec", "kernel"), UNIFORM_CASES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_uniform_kernels_match_reference_within_the_format_error(spec: QuantSpec, kernel: str):
    source = _linear()
    try:
        layer = quantize_weight_module(source, spec)
    except ValueError as why:  # group 128 on 576 inputs needs a ragged last group
        if spec.granularity != "group" or source.in_features % spec.group_size != 0:
            pytest.skip(f"ragged last groups are not in this checkout's quantize.primitives: {why}")
        raise
    assert rt.kernel_choice(layer) == rt.KernelChoice(kernel, 4 if kernel.startswith("int4") else 8, False)
    x = torch.randn(3, 7, source.in_features)
    fast, reference = _outputs(layer, x)
    with torch.no_grad():
        own_error = _rel(reference, source(x))  # what the format itself costs
    assert fast.dtype == torch.float32 and fast.shape == (3, 7, source.out_features)
    assert _rel(fast, reference) <= min(BF16_REL, own_error)
    fast, reference = _outputs(layer, torch.randn(40, source.in_features))  # prefill-sized batches too
    assert _rel(fast, reference) <= BF16_REL


@needs_kernels
def test_affine_fractional_zeros_run_on_the_int4_kernel():
    source = _linear()
    spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=64)
    scale, zero = compute_qparams(source.weight, spec)
    layer = quantize_weight_module(source, spec, scale=scale, zero_point=zero + 0.37, zero_dtype=torch.float16)
    assert layer.zero_point.dtype == torch.float16
    assert rt.kernel_choice(layer).name == "int4pack-bf16"
    fast, reference = _outputs(layer, torch.randn(4, source.in_features))
    assert _rel(fast, reference) <= BF16_REL


@needs_kernels
def test_binary_runs_as_two_level_codes_and_bf16_inputs_stay_bf16():
    source = _linear()
    layer = binary_module(source)
    assert rt.kernel_choice(layer) == rt.KernelChoice("int4pack-bf16", 4, False)
    x = torch.randn(2, source.in_features)
    fast, reference = _outputs(layer, x)
    assert _rel(fast, reference) <= BF16_REL
    with torch.no_grad():
        half = layer(x.bfloat16())
    assert half.dtype == torch.bfloat16 and _rel(half.float(), reference) <= 2 * BF16_REL


@needs_kernels
def test_evenly_spaced_codebook_maps_exactly_and_an_uneven_one_falls_back():
    source = _linear()
    torch.manual_seed(1)
    codes = torch.randint(0, 8, tuple(source.weight.shape), dtype=torch.uint8)
    even = codebook_module(source, torch.tensor([-0.3, -0.1, 0.1, 0.3, 0.5, 0.7, 0.9, 1.1]) * 0.05, codes, 3)
    assert rt.kernel_choice(even).name == "int4pack-bf16"
    x = torch.randn(2, source.in_features)
    fast, reference = _outputs(even, x)
    assert _rel(fast, reference) <= BF16_REL

    # steps of 0.01 x 0.05 over 201 levels: not a 16-level grid, exact on the int8 kernel's 256 levels
    finer = codebook_module(source, torch.tensor([-0.3, -0.1, 0.0, 0.31, 0.5, 0.7, 0.9, 1.7]) * 0.05, codes, 3)
    assert rt.kernel_choice(finer).name == "int8pack-bf16"
    assert any("not evenly spaced within 16 levels" in why for why in rt.kernel_reasons(finer))
    fast, reference = _outputs(finer, x)
    assert _rel(fast, reference) <= BF16_REL

    kmeans_like = codebook_module(source, torch.randn(8) * 0.05, codes, 3)  # off any grid
    assert rt.kernel_choice(kmeans_like) is None
    assert any("not evenly spaced within 256 levels" in why for why in rt.kernel_reasons(kmeans_like))
    fast, reference = _outputs(kmeans_like, x)
    assert torch.equal(fast, reference)


@needs_kernels
def test_exactness_check_sends_a_far_offset_codebook_to_the_int8_kernel():
    """bf16 zeros cannot hold an offset of 1000 at a step of 2^-10: the int4 kernel declines, the
    int8 kernel (float32 offsets) takes it and stays within bf16 rounding."""
    source = _linear()
    codes = torch.randint(0, 4, tuple(source.weight.shape), dtype=torch.uint8)
    layer = codebook_module(source, 1000 + torch.arange(4.0) / 1024, codes, 2)
    assert rt.kernel_choice(layer).name == "int8pack-bf16"
    assert any("differ from the decoded weights" in why for why in rt.kernel_reasons(layer))
    fast, reference = _outputs(layer, torch.randn(2, source.in_features))
    assert _rel(fast, reference) <= BF16_REL


@needs_kernels
def test_unsupported_shapes_and_formats_run_the_reference_path_exactly():
    x = torch.randn(2, 576)
    cases = {
        "18 groups of 8-bit": quantize_weight_module(_linear(), QuantSpec(bits=8, granularity="group", group_size=32)),
        "520 outputs, 18 groups": quantize_weight_module(
            _linear(520), QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32)
        ),
        "small layer": quantize_weight_module(_linear(64), QuantSpec(bits=4, granularity="channel")),
        "fp16 storage": half_module(_linear()),
    }
    for name, layer in cases.items():
        assert rt.kernel_choice(layer) is None, name
        assert rt.kernel_reasons(layer), name
        fast, reference = _outputs(layer, x)
        assert torch.equal(fast, reference), name
    assert any("multiple of 16" in why for why in rt.kernel_reasons(cases["520 outputs, 18 groups"]))
    # 520 outputs: the 4-bit kernel declines the shape, the 8-bit one takes 4-bit codes exactly
    for spec in (QuantSpec(bits=4, granularity="channel"), QuantSpec(bits=4, granularity="group", group_size=64)):
        layer = quantize_weight_module(_linear(520), spec)
        assert rt.kernel_choice(layer).name == "int8pack-bf16"
        fast, reference = _outputs(layer, x)
        assert _rel(fast, reference) <= BF16_REL


@needs_kernels
def test_switch_and_environment_force_the_reference_path(monkeypatch):
    layer = quantize_weight_module(_linear(), QuantSpec(bits=4, granularity="channel"))
    assert rt.kernel_choice(layer) is not None
    with rt.use_kernels(False):
        assert rt.kernel_choice(layer) is None
    monkeypatch.setenv("NNCOMPRESS_KERNELS", "reference")
    assert rt.kernel_choice(layer) is None and not rt.kernels_enabled()
    with rt.use_kernels(True):
        assert rt.kernel_choice(layer) is not None
    monkeypatch.setenv("NNCOMPRESS_KERNELS", "fastest")
    with pytest.raises(ValueError, match="NNCOMPRESS_KERNELS='fastest'.*'auto', 'reference'"):
        rt.kernels_enabled()
    with pytest.raises(ValueError, match="True or False"):
        rt.use_kernels("off")  # type: ignore[arg-type]


@needs_kernels
def test_no_kernel_on_a_cpu_without_avx2(monkeypatch):
    plain = dataclasses.replace(CPU, capability="DEFAULT")
    monkeypatch.setattr(dispatch, "cpu_features", lambda: plain)
    layer = quantize_weight_module(_linear(), QuantSpec(bits=4, granularity="channel"))
    assert rt.kernel_choice(layer) is None
    reasons = dict(why.split(": ", 1) for why in rt.kernel_reasons(layer))
    assert "AVX2" in reasons["int4pack-bf16"] and "AVX2" in reasons["int8pack-bf16"]


@needs_kernels
def test_an_avx2_only_cpu_runs_4_bit_codes_on_the_int8_kernel(monkeypatch):
    avx2 = dataclasses.replace(CPU, capability="AVX2")
    monkeypatch.setattr(dispatch, "cpu_features", lambda: avx2)
    layer = quantize_weight_module(_linear(), QuantSpec(bits=4, symmetric=False, granularity="group", group_size=128))
    assert rt.kernel_choice(layer) == rt.KernelChoice("int8pack-bf16", 8, False)
    assert "AVX-512" in dict(why.split(": ", 1) for why in rt.kernel_reasons(layer))["int4pack-bf16"]
    fast, reference = _outputs(layer, torch.randn(2, 576))
    assert _rel(fast, reference) <= BF16_REL


@needs_kernels
def test_kernel_weights_rebuild_when_a_buffer_changes_and_autograd_uses_the_reference():
    layer = quantize_weight_module(_linear(), QuantSpec(bits=4, symmetric=False, granularity="group", group_size=64))
    x = torch.randn(2, 576)
    before, _ = _outputs(layer, x)
    with torch.no_grad():
        layer.scale.mul_(2)  # in place: the float32 cache and the kernel's weights both rebuild
    after, reference = _outputs(layer, x)
    assert _rel(after, reference) <= BF16_REL and _rel(after, before) > 0.1

    xg = x.clone().requires_grad_(True)
    out = layer(xg)
    with rt.use_kernels(False):
        assert torch.equal(out, layer(xg))  # an input that needs a gradient runs the reference path
    out.sum().backward()
    assert xg.grad is not None and layer.bias.grad is not None
    layer.bias.grad = None
    layer(x).sum().backward()  # kernel path: the bias still gets its gradient
    assert torch.equal(layer.bias.grad, torch.full((512,), 2.0))


@needs_kernels
def test_saved_artifact_runs_on_the_kernel_after_load(tmp_path):
    model = nn.Sequential(_linear(512, 576), nn.ReLU(), _linear(576, 512, seed=1))
    model[0] = quantize_weight_module(model[0], QuantSpec(bits=3, symmetric=False, granularity="group", group_size=32))
    model[2] = quantize_weight_module(model[2], QuantSpec(bits=8, granularity="channel"))
    x = torch.randn(1, 576)
    with torch.no_grad():
        expected = model(x)
    nc.save(model, tmp_path / "m.ncz")
    loaded = nc.load(tmp_path / "m.ncz")
    assert [rt.kernel_choice(m).name for m in (loaded[0], loaded[2])] == ["int4pack-bf16", "int8pack-bf16"]
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


@needs_kernels
def test_hugging_face_llama_logits_within_the_format_error():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        ids = torch.randint(0, 64, (1, 12))
        float_logits = model(ids).logits
    mlp = model.model.layers[0].mlp
    for name in ("gate_proj", "up_proj", "down_proj"):
        spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=128)
        setattr(mlp, name, quantize_weight_module(getattr(mlp, name), spec))
    assert {rt.kernel_choice(getattr(mlp, n)).name for n in ("gate_proj", "up_proj", "down_proj")} == {"int4pack-bf16"}
    with torch.no_grad():
        fast = model(ids).logits
        with rt.use_kernels(False):
            reference = model(ids).logits
    assert _rel(fast, reference) <= min(BF16_REL, _rel(reference, float_logits))


def test_very_sparse_off_grid_codebook_runs_as_csr_and_a_denser_one_does_not():
    torch.manual_seed(0)
    source = _linear()
    centroids = torch.randn(16) * 0.05
    centroids[0] = 0  # k-means with a kept zero: off any grid
    x = torch.randn(3, source.in_features)
    for zeros, expected in ((0.97, rt.KernelChoice("csr-fp32", 32, True)), (0.8, None)):
        codes = torch.randint(1, 16, tuple(source.weight.shape), dtype=torch.uint8)
        codes[torch.rand(codes.shape) < zeros] = 0
        layer = codebook_module(source, centroids, codes, 4)
        assert rt.kernel_choice(layer) == expected
        fast, reference = _outputs(layer, x)
        assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-6)
    assert any("non-zero" in why for why in rt.kernel_reasons(layer))


def test_int8_kernel_declines_input_widths_its_aten_op_cannot_run():
    """aten._weight_int8pack_mm segfaults at 2+ rows when K is not a multiple of 16 (torch 2.13)."""
    from nncompress.quantize.layers import quantize_weight_module
    from nncompress.quantize.primitives import QuantSpec
    from nncompress.runtime import kernel_choice

    torch.manual_seed(0)
    layer = quantize_weight_module(nn.Linear(2312, 64), QuantSpec(bits=8, granularity="channel"))  # K = 8 * 289
    choice = kernel_choice(layer)
    assert choice is None or choice.name != "int8pack-bf16"
    x = torch.randn(3, 2312)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-2, atol=1e-2)


@needs_kernels
@pytest.mark.parametrize(
    ("out_features", "spec", "ranges"),
    [
        (
            512,
            QuantSpec(bits=8, granularity="group", group_size=128),
            [(0, 128), (128, 256), (256, 384), (384, 512), (512, 576)],
        ),
        (512, QuantSpec(bits=8, symmetric=False, granularity="group", group_size=40), None),  # 40: masked kernel rows
        (4096, QuantSpec(bits=8, granularity="channel"), [(0, 288), (288, 576)]),  # a wide layer in two calls
        (512, QuantSpec(bits=8, granularity="channel"), [(0, 576)]),
    ],
    ids=["group128-five-calls", "group40-masked", "wide-channel-two-calls", "channel-one-call"],
)
def test_int8_kernel_calls_per_group_or_input_range_match_the_reference(out_features, spec, ranges):
    """Each scale group (and each piece of a wide per-channel row) runs as its own kernel call on its
    own inputs; groups of widths the op cannot take alone run as masked rows: both exact."""
    from nncompress.runtime import int8
    from nncompress.runtime.grid import affine_grid

    layer = quantize_weight_module(_linear(out_features), spec)
    assert int8.column_ranges(affine_grid(layer, 256)) == ranges
    assert rt.kernel_choice(layer).name == "int8pack-bf16"
    for rows in (1, 3, 40):  # 40 rows: dequantized once per call, F.linear
        fast, reference = _outputs(layer, torch.randn(rows, 576))
        assert _rel(fast, reference) <= BF16_REL, rows


@needs_kernels
def test_layers_run_their_own_ops_while_either_onnx_exporter_is_active(monkeypatch):
    """The dispatch reads the ONNX exporters' flags directly (cheaper than ``is_in_onnx_export``);
    it must agree with torch's own answer whichever exporter sets them."""
    flags = dispatch._onnx_flags()
    if flags is None:
        pytest.skip("this torch keeps its ONNX export flags elsewhere (torch.onnx.is_in_onnx_export is asked)")
    exporter, globals_ = flags
    layer = quantize_weight_module(_linear(), QuantSpec(bits=4, granularity="channel"))
    x = torch.randn(2, 576)
    assert rt.run_linear(layer, x, None) is not None and not torch.onnx.is_in_onnx_export()
    for name, owner, attribute in (
        ("dynamo", exporter, "_is_onnx_exporting"),
        ("torchscript", globals_, "in_onnx_export"),
    ):
        monkeypatch.setattr(owner, attribute, True)
        assert torch.onnx.is_in_onnx_export(), name
        assert dispatch._tracing() and rt.run_linear(layer, x, None) is None, name
        monkeypatch.setattr(owner, attribute, False)
    assert rt.run_linear(layer, x, None) is not None


@needs_kernels
def test_prepared_kernels_leave_with_their_layer_and_copies_prepare_their_own():
    import copy
    import gc

    layer = quantize_weight_module(_linear(), QuantSpec(bits=4, granularity="channel"))
    x = torch.randn(2, 576)
    expected, _ = _outputs(layer, x)
    key = id(layer)
    assert dispatch._STATES[key].prepared is not None
    twin = copy.deepcopy(layer)
    assert id(twin) not in dispatch._STATES
    with torch.no_grad():
        assert torch.equal(twin(x), expected)
    assert id(twin) in dispatch._STATES
    del layer
    gc.collect()
    assert key not in dispatch._STATES and id(twin) in dispatch._STATES
