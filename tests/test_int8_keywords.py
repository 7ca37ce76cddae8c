"""ONNX Runtime int8 for models called by keyword (Hugging Face batches of ``input_ids`` dicts).

The graph is traced with named inputs, the batch and sequence axes dynamic, and the int8 module
is called as the float model was (``model(**batch)``), returning the same fields.
"""

from __future__ import annotations

import foreign_zoo as fz
import pytest
import torch

import nncompress as nc
from nncompress.core.step import StepContext
from nncompress.io.onnx_export import export_onnx
from nncompress.quantize.int8 import DynamicInt8Quantize, StaticInt8Quantize
from nncompress.quantize.runtime import NamedOutputs, OnnxRuntimeModule

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")


def _quantize(step, name: str) -> tuple[torch.nn.Module, torch.nn.Module, list[str]]:
    entry = fz.get(name)
    model = entry.build()
    ctx = StepContext(task=entry.task(batches=2))
    out = step.apply(model, ctx)
    return model, out, ctx.log


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return fz.logits_of(model(**batch)).float()


def test_dynamic_int8_takes_keyword_inputs_on_onnx_runtime_at_any_batch_and_length(tmp_path):
    model, q, log = _quantize(DynamicInt8Quantize(), "hf-llama")
    assert isinstance(q, OnnxRuntimeModule), log
    assert not any("failed" in line for line in log), log
    batch = fz._tokens(seq=13)(3, 5)  # not the traced batch (2) nor length (8)
    out = q(**batch)
    assert isinstance(out, NamedOutputs) and out.logits is out["logits"] is out[0]
    ref = _logits(model, batch)
    assert out.logits.shape == ref.shape
    assert float((out.logits - ref).abs().max()) < 0.05 * float(ref.abs().max())
    with pytest.raises(ValueError, match="missing \\['input_ids'\\]"):
        q(attention_mask=batch["attention_mask"])
    nc.save(q, tmp_path / "q.ncz")
    again = nc.load(tmp_path / "q.ncz")
    assert torch.equal(again(**batch).logits, out.logits)


def test_static_int8_calibrates_keyword_batches_and_exports(tmp_path):
    model, q, log = _quantize(StaticInt8Quantize(calibration_batches=2), "hf-bert")
    assert isinstance(q, OnnxRuntimeModule), log
    assert "onnxruntime QDQ int8" in log[-1], log
    batch = fz.get("hf-bert").example()
    assert _logits(q, batch).shape == _logits(model, batch).shape
    int8 = [init for init in q.model_proto().graph.initializer if init.data_type == 3]  # INT8
    assert int8, "no int8 initializer in the graph"
    result = export_onnx(q, tmp_path / "m.onnx", batch)
    assert result.max_abs_error < 1e-5 and result.input_names == ["input_ids", "attention_mask"]


def _counts(log: list[str]) -> tuple[int, int]:
    """(quantized, total) weight MatMul/Gemm from the step's summary line."""
    done = next(line for line in log if "dynamic int8 (per channel)" in line)
    quantized, total = done.split(", ")[-1].split(" weight")[0].split(" of ")
    return int(quantized), int(total)


def test_exclude_keeps_a_keyword_models_layer_float():
    _, every, log_every = _quantize(DynamicInt8Quantize(), "hf-qwen2")
    _, kept, log_kept = _quantize(DynamicInt8Quantize(exclude=("lm_head",)), "hf-qwen2")
    assert isinstance(every, OnnxRuntimeModule) and isinstance(kept, OnnxRuntimeModule), log_kept
    quantized, total = _counts(log_every)
    assert quantized == total and _counts(log_kept) == (total - 1, total)
