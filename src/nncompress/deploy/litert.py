"""``--to litert``: a ``.tflite`` flatbuffer for LiteRT, converted by ``litert-torch`` (no TensorFlow).

The module ``torch.export`` traces is :func:`~nncompress.deploy.prepare.torch_graph`'s: plain, pruned
and factorized models as they are; int8-static as PT2E quantize/dequantize with our scales, its int8
weights as fp32 values quantized in the graph (``convert_pt2e(fold_quantize=False)``'s form), which the
converter, told the Q/DQ pairs are static int8, folds into int8 CONV_2D / FULLY_CONNECTED with our
scales and int32 biases; the model's input and output become int8 too, and :class:`LiteRtModule`
quantizes and dequantizes them with their scales. Packed weight-only layers go as their dequantized fp32
weights (named in notes). The batch axis is exported dynamic where the converter lowers it (a Flatten
did not: then batch 1, larger batches run in chunks, noted).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from nncompress.deploy.targets import Exported, Target, register_target


class LiteRtModule(nn.Module):
    """Runs a ``.tflite`` file in LiteRT's Interpreter: the batch axis resized per call where the
    model's is dynamic, else batches split into chunks of the size it was converted at."""

    def __init__(self, path: str | os.PathLike, *, threads: int = 0) -> None:
        super().__init__()
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        signature = self.inputs[0]["shape_signature"]
        self.fixed = None if signature[0] == -1 else int(signature[0])  # None: dynamic batch axis
        self.batch = None if self.fixed is None else self.fixed
        self.interpreter.allocate_tensors()

    def forward(self, *inputs: torch.Tensor) -> Any:
        n = inputs[0].shape[0]
        step = self.fixed or n
        chunks = [self._run([x[i : i + step] for x in inputs]) for i in range(0, n, step)]
        outs = [torch.cat([c[k] for c in chunks]) for k in range(len(chunks[0]))]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        arrays = [_to_model(x.detach().cpu().numpy(), d) for x, d in zip(inputs, self.inputs, strict=True)]
        if self.batch != arrays[0].shape[0]:
            if self.fixed is not None:
                raise ValueError(f"this .tflite takes batches of {self.fixed}; got {arrays[0].shape[0]}")
            for detail, a in zip(self.inputs, arrays, strict=True):
                self.interpreter.resize_tensor_input(detail["index"], a.shape)
            self.interpreter.allocate_tensors()
            self.batch = arrays[0].shape[0]
        for detail, a in zip(self.inputs, arrays, strict=True):
            self.interpreter.set_tensor(detail["index"], a)
        self.interpreter.invoke()
        return [torch.from_numpy(_from_model(self.interpreter.get_tensor(o["index"]), o)) for o in self.outputs]


def _to_model(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An fp32 input in the model's input type: quantized with its scale where the converter made it int8."""
    kind = np.dtype(detail["dtype"])
    if kind.kind == "f":
        return np.ascontiguousarray(x, dtype=kind)
    scale, zero = detail["quantization"]
    info = np.iinfo(kind)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(kind)


def _from_model(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An output as fp32: dequantized where the converter left it int8."""
    if y.dtype.kind == "f":
        return y.astype(np.float32, copy=True)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * np.float32(scale)).astype(np.float32)


@register_target
class LiteRtTarget(Target):
    """LiteRT ``.tflite`` (Android, microcontrollers' TFLite Micro)."""

    name: ClassVar[str] = "litert"
    extra: ClassVar[str] = "litert"
    modules: ClassVar[tuple[str, ...]] = ("litert_torch", "ai_edge_litert", "onnx")
    suffix: ClassVar[str] = ".tflite"
    description: ClassVar[str] = "LiteRT: int8 QDQ as PT2E int8 with our scales; weight-only codes dequantized"

    def export(
        self, model: nn.Module, path: str | os.PathLike, example_inputs: Any, *, max_batch: int = 1024
    ) -> Exported:
        from nncompress.deploy.prepare import torch_graph

        module, layers, notes = torch_graph(model, self.name, fold_weights=False)  # the converter folds them
        example = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        if not all(isinstance(t, torch.Tensor) for t in example):
            raise ValueError("--to litert takes models whose inputs are tensors (positional); got keyword inputs")
        edge, convert_notes = convert(module, example, max_batch=max_batch)
        target = Path(path)
        edge.export(str(target))
        return Exported(str(target), os.path.getsize(target), LiteRtModule(target), layers, notes + convert_notes)


def static_int8_config() -> Any:
    """A ``QuantConfig`` telling the converter the graph's Q/DQ pairs are static int8 (its
    ``qdq_conversion_mode``); without it they stay float QUANTIZE/DEQUANTIZE ops around float kernels."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return QuantConfig(pt2e_quantizer=quantizer)


def convert(module: nn.Module, example: tuple[torch.Tensor, ...], *, max_batch: int) -> tuple[Any, list[str]]:
    """``litert_torch.convert`` with the batch axis dynamic in [1, 2 x max_batch], else fixed at 1 (noted)."""
    import functools

    import litert_torch

    from nncompress.deploy.executorch import Positional, batch_trace
    from nncompress.deploy.qdq_torch import QdqGraphModule

    quant = static_int8_config() if isinstance(module, QdqGraphModule) else None
    run = functools.partial(litert_torch.convert, quant_config=quant)
    module = Positional(module).eval()
    trace, dynamic = batch_trace(example, max_batch)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            return run(module, trace, dynamic_shapes=dynamic), []
        except Exception as e:  # noqa: BLE001 - a data-dependent batch: fix it at 1
            edge = run(module, tuple(t[:1] for t in example))
            return edge, [f"batch axis fixed at 1, larger batches run in chunks ({str(e).splitlines()[0][:120]})"]
