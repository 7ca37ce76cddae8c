"""``--to litert``: a ``.tflite`` flatbuffer for LiteRT, converted by ``litert-torch`` (no TensorFlow).

The module ``torch.export`` traces is :func:`~nncompress.deploy.prepare.torch_graph`'s: plain, pruned
and factorized models as they are; int8-static as PT2E quantize/dequantize with our scales, which the
converter lowers to TFLite int8 ops; packed weight-only layers as their dequantized fp32 weights
(named in notes). It runs in ``ai_edge_litert``'s Interpreter. Untested here (the extra is ~1 GiB and
was not installed in this session): tests/test_deploy_litert.py runs where it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from nncompress.deploy.targets import Exported, Target, register_target


class LiteRtModule(nn.Module):
    """Runs a ``.tflite`` file in LiteRT's Interpreter, resizing the batch axis per call."""

    def __init__(self, path: str | os.PathLike, *, threads: int = 0) -> None:
        super().__init__()
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        self.batch = None

    def forward(self, *inputs: torch.Tensor) -> Any:
        arrays = [x.detach().cpu().contiguous().numpy() for x in inputs]
        if self.batch != arrays[0].shape[0]:
            for detail, a in zip(self.inputs, arrays):
                self.interpreter.resize_tensor_input(detail["index"], a.shape)
            self.interpreter.allocate_tensors()
            self.batch = arrays[0].shape[0]
        for detail, a in zip(self.inputs, arrays):
            self.interpreter.set_tensor(detail["index"], a.astype(np.float32, copy=False))
        self.interpreter.invoke()
        outs = [torch.from_numpy(self.interpreter.get_tensor(o["index"]).copy()) for o in self.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)


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
        import litert_torch

        from nncompress.deploy.prepare import torch_graph

        module, layers, notes = torch_graph(model, self.name)
        example = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        if not all(isinstance(t, torch.Tensor) for t in example):
            raise ValueError("--to litert takes models whose inputs are tensors (positional); got keyword inputs")
        edge = litert_torch.convert(module.eval(), tuple(t[:1] for t in example))
        target = Path(path)
        edge.export(str(target))
        return Exported(str(target), os.path.getsize(target), LiteRtModule(target), layers, notes)
