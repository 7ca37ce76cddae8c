"""``--to onnx``: the ONNX exporter nncompress already has (``io/onnx_export.py``), run in ONNX Runtime.

int8-static graphs are written as they are (QDQ), 2/4/8-bit packed Linears as ``MatMulNBits``,
other codes as ``DequantizeLinear`` of their integers; see :func:`nncompress.io.onnx_export.export_onnx`.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from torch import nn

from nncompress.deploy.targets import Exported, Target, register_target


@register_target
class OnnxTarget(Target):
    """ONNX graph for ONNX Runtime (the default target)."""

    name: ClassVar[str] = "onnx"
    extra: ClassVar[str] = "dev"  # onnx and onnxruntime are core dependencies
    modules: ClassVar[tuple[str, ...]] = ("onnx", "onnxruntime")
    suffix: ClassVar[str] = ".onnx"
    description: ClassVar[str] = "ONNX Runtime: int8 as QDQ, 4-bit Linears as MatMulNBits"

    def export(
        self, model: nn.Module, path: str | os.PathLike, example_inputs: Any, *, max_batch: int = 1024
    ) -> Exported:
        from nncompress.io.onnx_export import export_onnx
        from nncompress.measure.onnx_latency import OrtModule

        result = export_onnx(model, path, example_inputs, overwrite=True)
        notes = [*result.notes, f"max |ONNX Runtime - PyTorch| on the example inputs: {result.max_abs_error:.3g}"]
        return Exported(result.path, result.bytes, OrtModule(result.path, threads=1), dict(result.layers), notes)
