"""Layers nncompress did not write: HF Conv1D, nn.MultiheadAttention, Conv1d, LSTM/GRU, and the
``.weight`` that model code reads from replaced layers."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from nncompress.base.canonical import ProjectedMultiheadAttention, canonicalize


def _torchvision():
    """torchvision (conftest has made it importable), or skip."""
    return pytest.importorskip("torchvision")


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


# --- 1. canonical layers ---------------------------------------------------------------------------


def test_gpt2_conv1d_becomes_linear_with_same_outputs():
    model = _tiny_gpt2()
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    result = canonicalize(model)
    kinds = {type(m).__name__ for m in result.model.modules()}
    assert "Conv1D" not in kinds
    assert len(result.replaced) == 8  # c_attn, c_proj, c_fc, c_proj per block
    assert result.replaced[0].line() == "transformer.h.0.attn.c_attn: Conv1D -> Linear"
    assert type(result.model.transformer.h[0].attn.c_attn) is nn.Linear
    with torch.no_grad():
        assert torch.allclose(result.model(ids).logits, ref, atol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
def test_projected_attention_matches_mha_for_every_mask_kind(batch_first, kdim):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    new = canonicalize(copy.deepcopy(mha)).model
    assert isinstance(new, ProjectedMultiheadAttention)
    assert all(type(p) is nn.Linear for p in (new.q_proj, new.k_proj, new.v_proj, new.out_proj))
    b, lq, s = 3, 4, 5
    q = torch.randn(b, lq, 8) if batch_first else torch.randn(lq, b, 8)
    k = torch.randn(b, s, kdim or 8) if batch_first else torch.randn(s, b, kdim or 8)
    pad = torch.zeros(b, s, dtype=torch.bool)
    pad[0, -2:] = True
    cases = [
        {},
        {"key_padding_mask": pad},
        {"attn_mask": torch.randn(lq, s), "key_padding_mask": torch.zeros(b, s).masked_fill(pad, float("-inf"))},
        {"attn_mask": torch.ones(lq, s, dtype=torch.bool).triu(1)},
        {"attn_mask": torch.randn(b * 2, lq, s)},
        {"need_weights": False},
        {"average_attn_weights": False},
    ]
    for kwargs in cases:
        with torch.no_grad():
            want, got = mha(q, k, k, **kwargs), new(q, k, k, **kwargs)
        assert torch.allclose(got[0], want[0], atol=1e-5), kwargs
        assert (got[1] is None) == (want[1] is None), kwargs
        if want[1] is not None:
            assert got[1].shape == want[1].shape and torch.allclose(got[1], want[1], atol=1e-5), kwargs


def test_projected_attention_unbatched_and_refusals():
    mha = nn.MultiheadAttention(8, 2).eval()
    new = ProjectedMultiheadAttention.from_mha(mha)
    x = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.allclose(new(x, x, x)[0], mha(x, x, x)[0], atol=1e-5)
    odd = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    with pytest.raises(ValueError, match="bias_k"):
        ProjectedMultiheadAttention.from_mha(odd)
    result = canonicalize(nn.Sequential(odd))
    assert not result.replaced and result.kept[0][:2] == ("0", "MultiheadAttention")
    assert "bias_k" in result.log_lines()[0]
    with pytest.raises(ValueError, match="unknown canonical layer kind 'lstm'"):
        canonicalize(nn.Sequential(), kinds=("lstm",))


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_layer_leaves_its_fast_path(batch_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=batch_first)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    new = canonicalize(copy.deepcopy(encoder)).model
    assert new.layers[0].self_attn.in_proj_weight is None
    x = torch.randn(3, 6, 16) if batch_first else torch.randn(6, 3, 16)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, -2:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.inference_mode():  # where the original takes its fused fast path
        assert torch.allclose(new(x), encoder(x), atol=1e-5)
        assert torch.allclose(new(x, mask=causal, is_causal=True), encoder(x, mask=causal, is_causal=True), atol=1e-5)
        got, want = new(x, src_key_padding_mask=pad), encoder(x, src_key_padding_mask=pad)
    valid = ~pad if batch_first else ~pad.T
    assert torch.allclose(got[valid], want[valid], atol=1e-5)


def test_torchvision_vit_projections_visible_and_exported_without_fused_op():
    tv = _torchvision()
    torch.manual_seed(0)
    vit = tv.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ref = vit(x)
    result = canonicalize(vit)
    assert [r.new for r in result.replaced] == ["ProjectedMultiheadAttention"] * 2
    linears = [n for n, m in result.model.named_modules() if type(m) is nn.Linear]
    assert "encoder.layers.encoder_layer_0.self_attention.q_proj" in linears
    with torch.inference_mode():
        assert torch.allclose(result.model(x), ref, atol=1e-5)
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    buffer = io.BytesIO()
    with pytest.warns(Warning):  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(result.model, (x,), buffer, dynamo=False, input_names=["x"])
    graph = onnx.load_from_string(buffer.getvalue()).graph
    assert "Softmax" in {n.op_type for n in graph.node}
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    assert torch.allclose(torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), ref, atol=1e-4)


# --- 3. replacement layers keep .weight; Conv1d packed layers -----------------------------------------


def _packed_variants(layer: nn.Module) -> list[nn.Module]:
    from nncompress.quantize.codebook import kmeans_codebook
    from nncompress.quantize.layers import binary_module, codebook_module, half_module, quantize_weight_module
    from nncompress.quantize.primitives import QuantSpec

    return [
        quantize_weight_module(layer, QuantSpec(bits=8, granularity="channel")),
        quantize_weight_module(layer, QuantSpec(bits=4, symmetric=False, granularity="group", group_size=4)),
        codebook_module(layer, *kmeans_codebook(layer.weight, 4), 4),
        binary_module(layer),
        half_module(layer),
    ]


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_packed_layers_expose_a_decoded_weight_that_is_not_saved(kind):
    torch.manual_seed(0)
    layer, x = {
        "linear": (nn.Linear(32, 16), torch.randn(2, 32)),
        "conv1d": (nn.Conv1d(4, 8, 3, padding=1), torch.randn(2, 4, 10)),
        "conv2d": (nn.Conv2d(4, 8, 3), torch.randn(2, 4, 6, 6)),
    }[kind]
    for packed in _packed_variants(layer):
        weight = packed.weight
        assert weight.shape == layer.weight.shape and weight.dtype == torch.float32
        assert not isinstance(weight, nn.Parameter) and "weight" not in packed.state_dict()
        assert "weight" not in dict(packed.named_parameters())
        assert packed.bias is not None and packed.bias.shape == layer.bias.shape
        run = {
            "linear": torch.nn.functional.linear,
            "conv1d": torch.nn.functional.conv1d,
            "conv2d": torch.nn.functional.conv2d,
        }[kind]
        kwargs = {"padding": layer.padding} if kind != "linear" else {}
        with torch.no_grad():  # forward runs exactly the weight it exposes
            assert torch.allclose(packed(x), run(x, weight, packed.bias.float(), **kwargs), atol=1e-5)
        rel = (weight - layer.weight).norm() / layer.weight.norm()
        assert rel < (0.7 if packed.bits <= 1 else 0.3), (type(packed).__name__, float(rel))
    with pytest.raises(AttributeError):  # a view of the codes: it cannot be assigned
        packed.weight = torch.zeros_like(weight)
    with pytest.raises(KeyError, match="already exists"):
        packed.weight = nn.Parameter(torch.zeros_like(weight))


class _ReadsWeight(nn.Module):
    """Model code that reads a layer's weight, as Swin's attention and T5's feed-forward do."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(784, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).to(self.proj.weight.dtype)
        assert self.proj.weight.shape == (64, 784)
        return self.head(torch.relu(self.proj(x)))


@pytest.mark.parametrize("step", ["weight-quantize", "gptq", "svd", "awq", "w8a8", "kmeans"])
def test_model_code_reading_weight_runs_after_the_step(step, tmp_path):
    from conftest import make_task

    import nncompress as nc
    from nncompress.core.step import StepContext

    torch.manual_seed(0)
    task = make_task(_ReadsWeight, n_train=128)
    model = _ReadsWeight().eval()
    x = task.single_example()
    with torch.no_grad():
        before = model(x)
    chosen = {
        "weight-quantize": nc.WeightQuantize(bits=8),
        "gptq": nc.GPTQQuantize(bits=8, calibration_batches=1),
        "svd": nc.SVDFactorize(rank=0.9),
        "awq": nc.AWQQuantize(bits=8, calibration_batches=1),  # proj reads the input: its scale stays explicit
        "w8a8": nc.W8A8Quantize(calibration_batches=1),
        "kmeans": nc.KMeansQuantize(bits_linear=8, bits_conv=8, epochs=0.1),  # trains through SharedWeight
    }[step]
    out = chosen.apply(model, StepContext(task=task))
    assert type(out.proj) is not nn.Linear  # the step replaced it
    assert out.proj.weight.shape == (64, 784) and out.proj.weight.dtype == torch.float32
    assert "proj.weight" not in out.state_dict()
    with torch.no_grad():
        after = out(x)
    # rank 0.9 of a random matrix drops ~10% of its energy; kmeans fine-tunes its centroids on the task
    tolerance = 0.25 if step in ("svd", "kmeans") else 0.05
    assert (after - before).abs().max() < tolerance * before.abs().max()
    loaded = nc.load(nc.save(out, tmp_path / "m.ncz"), trust=("test_foreign_layers",))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), after, rtol=0, atol=0)


# --- 2. LSTM / GRU int8 -------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_dynamic_int8_rnn_artifact_stores_int8_and_round_trips_bit_exactly(cell, tmp_path):
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    import nncompress as nc
    from nncompress.io import quantized as qio

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), cell(32, 64, num_layers=2, bidirectional=True, batch_first=True)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        q = quantize_dynamic(
            copy.deepcopy(model),
            {nn.Linear: per_channel_dynamic_qconfig, cell: per_channel_dynamic_qconfig},
            dtype=torch.qint8,
        )
    stored = qio.rnn_packed_tensors(q)
    assert len(stored) == 16 and stored["1.weight_ih_l1_reverse"].dtype == torch.qint8
    assert stored["1.weight_ih_l1_reverse"].shape == ((4 if cell is nn.LSTM else 3) * 64, 128)
    x = torch.randn(3, 7, 8)
    loaded = nc.load(nc.save(q, tmp_path / "q.ncz"))
    assert type(loaded[1]) is type(q[1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], q(x)[0], rtol=0, atol=0)
    fp32 = (tmp_path / "f.ncz").stat().st_size if nc.save(model, tmp_path / "f.ncz") else 0
    assert (tmp_path / "q.ncz").stat().st_size < 0.35 * fp32  # int8 matrices, float32 biases and scales
    with pytest.raises(ValueError, match="1.weight_hh_l0 is not stored"):
        qio.restore_rnns(loaded, {k: v for k, v in stored.items() if k != "1.weight_hh_l0"})
    from nncompress.measure.size import count_params

    assert count_params(q) == count_params(model)  # the int8 gate matrices are still the model's parameters


def _sequence_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences (n, 12, 16) whose class (of 4) is the channel raised along the whole sequence."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 12, 16, generator=g)
    x[torch.arange(n), :, y] += 0.6
    return x, y


class _RNNClassifier(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(16, 128, batch_first=True)
        self.head = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _trained_rnn_task(cell: type[nn.Module]):
    import nncompress as nc
    from nncompress.tasks.batches import TensorBatches

    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = _sequence_data(768, 1), _sequence_data(512, 2)
    model = _RNNClassifier(cell)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(2):
        for i in range(0, len(xtr), 64):
            loss = nn.functional.cross_entropy(model(xtr[i : i + 64]), ytr[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    task = nc.Task(
        name="sequences",
        train=TensorBatches(xtr, ytr, batch_size=64),
        val=TensorBatches(xte[:128], yte[:128], batch_size=64),
        test=TensorBatches(xte, yte, batch_size=128),
        baseline=lambda: model,
    )
    return model, task


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_int8_dynamic_rnn_file_under_30_percent_within_one_point(cell, tmp_path):
    import nncompress as nc

    model, task = _trained_rnn_task(cell)
    result = nc.compress(model, [nc.DynamicInt8Quantize()], task, measure_config=nc.MeasureConfig(latency=False))
    base, final = result.report.baseline, result.report.final
    assert base.metric["value"] > 0.6  # it learned something, so agreement means something
    assert abs(final.metric["value"] - base.metric["value"]) <= 0.01
    assert final.size_bytes <= 0.30 * base.size_bytes, (final.size_bytes, base.size_bytes)
    rnn = result.model.rnn
    assert type(rnn).__module__.startswith("torch.ao.nn.quantized.dynamic")  # real int8 kernels
    notes = result.report.steps[0].notes
    assert any(f"rnn ({cell.__name__})" in n for n in notes), notes
    x = task.single_example()
    loaded = nc.load(nc.save(result.model, tmp_path / "m.ncz"), trust=("test_foreign_layers",))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)


# --- 4. Conv1d in weight-quantize and tucker; skipped layers named; nothing to do is an error ---------


class _Conv1dNet(nn.Module):
    """A 1-D conv net (speech/text style) with an embedding-like table the steps do not handle."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 4)
        self.c1 = nn.Conv1d(4, 32, 3, padding=1)
        self.c2 = nn.Conv1d(32, 48, 5, padding=2)
        self.c3 = nn.Conv1d(48, 48, 3, padding=1)
        self.head = nn.Linear(48, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.table.weight[:1, :, None]
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.head(x.mean(-1))


def _conv1d_task():
    import nncompress as nc
    from nncompress.tasks.batches import TensorBatches

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 4, 20, generator=g), torch.randint(0, 4, (128,), generator=g)
    return nc.Task(
        name="conv1d",
        train=TensorBatches(x, y, batch_size=32),
        val=TensorBatches(x, y, batch_size=64),
        test=TensorBatches(x, y, batch_size=64),
        baseline=_Conv1dNet,
    )


def test_weight_quantize_packs_conv1d_and_names_what_it_skips(tmp_path):
    import nncompress as nc
    from nncompress.base.checks import NothingToDo
    from nncompress.core.step import StepContext
    from nncompress.quantize.layers import QuantizedConv1d

    task = _conv1d_task()
    torch.manual_seed(0)
    model = _Conv1dNet().eval()
    x = task.single_example()
    with torch.no_grad():
        before = model(x)
    ctx = StepContext(task=task)
    out = nc.WeightQuantize(bits=8, bias_correction=True, calibration_batches=1).apply(model, ctx)
    assert type(out.c1) is nn.Conv1d  # keep_first_conv covers Conv1d
    assert isinstance(out.c2, QuantizedConv1d) and isinstance(out.c3, QuantizedConv1d)
    assert any("table (Embedding)" in line and "left as they are" in line for line in ctx.log), ctx.log
    with torch.no_grad():
        assert (out(x) - before).abs().max() < 0.02 * before.abs().max() + 1e-3
    loaded = nc.load(nc.save(out, tmp_path / "m.ncz"), trust=("test_foreign_layers",))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out(x), rtol=0, atol=0)
    pytest.importorskip("onnxruntime")
    from nncompress.io.onnx_export import export_onnx

    exported = export_onnx(out, tmp_path / "m.onnx", x)  # packed Conv1d as QDQ + Conv in ONNX Runtime
    assert exported.layers["c2"].startswith("QDQ 8-bit") and exported.max_abs_error < 1e-5
    with pytest.raises(NothingToDo, match=r"no Linear, Conv1d or Conv2d layer left.*table \(Embedding\)"):
        nc.WeightQuantize(exclude=("c2", "c3")).apply(_Conv1dNet(), StepContext(task=task))


def test_tucker_factorizes_conv1d_with_a_recomposed_weight():
    import nncompress as nc
    from nncompress.base.factorized import Factorized
    from nncompress.core.step import StepContext

    task = _conv1d_task()
    torch.manual_seed(0)
    model = _Conv1dNet().eval()
    x = task.single_example()
    ref = copy.deepcopy(model)
    ctx = StepContext(task=task)
    out = nc.TuckerFactorize(rank=0.5).apply(model, ctx)
    assert isinstance(out.c3, Factorized) and [type(m) for m in out.c3] == [nn.Conv1d] * 3
    assert out.c3.weight.shape == ref.c3.weight.shape and torch.equal(out.c3.bias, ref.c3.bias)
    geometry = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
    assert all(getattr(out.c3, a) == getattr(ref.c3, a) for a in geometry)  # model code reads e.g. conv.stride
    assert any("table (Embedding)" in line for line in ctx.log), ctx.log
    with torch.no_grad():  # the recomposed weight is what the three convs compute
        y = torch.randn(2, 48, 9)
        direct = nn.functional.conv1d(y, out.c3.weight, out.c3.bias, padding=1)
        torch.testing.assert_close(out.c3(y), direct, rtol=1e-4, atol=1e-5)
        assert torch.isfinite(out(x)).all()


@pytest.mark.parametrize("kind", ["weight-quantize", "int8-dynamic", "svd"])
def test_compress_reaches_gpt2_conv1d_layers(kind, tmp_path):
    import nncompress as nc
    from nncompress.tasks.hf import causal_lm_task

    model = _tiny_gpt2()
    ids = torch.randint(0, 97, (24, 16), generator=torch.Generator().manual_seed(0))
    task = causal_lm_task(model, ids, max_length=16, batch_size=4)
    step = {
        "weight-quantize": nc.WeightQuantize(bits=8),
        "int8-dynamic": nc.DynamicInt8Quantize(),
        "svd": nc.SVDFactorize(rank=0.5),
    }[kind]
    result = nc.compress(model, [step], task, measure_config=nc.MeasureConfig(latency=False))
    notes = result.report.steps[0].notes
    assert "canonical: transformer.h.0.attn.c_attn: Conv1D -> Linear" in notes
    assert not any(type(m).__name__ == "Conv1D" for m in result.model.modules())
    changed = [n for n in notes if "h.0.mlp.c_fc" in n and "canonical" not in n]
    assert changed or kind == "int8-dynamic", notes  # the per-layer line of the MLP's first layer
    base, final = result.report.baseline, result.report.final
    assert final.size_bytes < (0.6 if kind != "svd" else 0.95) * base.size_bytes  # embeddings stay float
    assert final.metric["value"] < base.metric["value"] * (1.05 if kind != "svd" else 1.5)  # perplexity
