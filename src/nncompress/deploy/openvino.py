"""``--to openvino``: an OpenVINO IR (``.xml`` + ``.bin``) read from our ONNX export.

OpenVINO's ONNX front end keeps what the ONNX export holds: an int8-static QDQ graph runs as
OpenVINO's int8 convolutions and matmuls with our scales (FakeQuantize from each Q/DQ pair, no
recalibration); ``MatMulNBits`` becomes u4/u8 weight constants with per-group scales, the
weight-compression form ``nncf.compress_weights`` writes; ``DequantizeLinear`` of int8 weights
becomes i8 constants. The IR is saved without fp16 compression, and compiled with
``INFERENCE_PRECISION_HINT=f32`` (this CPU would otherwise run bf16, which changes outputs) and
``DYNAMIC_QUANTIZATION_GROUP_SIZE=0``: by default OpenVINO also quantizes the activations of
compressed-weight matmuls to int8 on the fly, which turned a weight-only 4-bit Linear's 1e-5 error
into 3e-3 (tests/test_deploy_openvino.py); weight-only stays weight-only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from nncompress.deploy.targets import Exported, Target, file_bytes, register_target

COMPILE_CONFIG = {
    "INFERENCE_PRECISION_HINT": "f32",
    "PERFORMANCE_HINT": "LATENCY",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
}


class OpenVinoModule(nn.Module):
    """Runs an OpenVINO model on CPU in f32 (``threads`` 0: OpenVINO's default); torch tensors in and out."""

    def __init__(self, model: Any, *, threads: int = 0) -> None:
        super().__init__()
        import openvino as ov

        config = dict(COMPILE_CONFIG, INFERENCE_NUM_THREADS=threads) if threads else dict(COMPILE_CONFIG)
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.n_outputs = len(self.compiled.outputs)

    def forward(self, *inputs: torch.Tensor) -> Any:
        self.request.infer([x.detach().cpu().contiguous().numpy() for x in inputs])
        outs = [torch.from_numpy(self.request.get_output_tensor(i).data.copy()) for i in range(self.n_outputs)]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def runtime_precisions(self) -> dict[str, int]:
        """``{"Convolution u8": n, ...}``: the kernels OpenVINO chose, to check int8 really runs int8."""
        counts: dict[str, int] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = f"{info['layerType'].astype(str)} {info['runtimePrecision'].astype(str)}"
            if kind.split()[0] in ("Convolution", "FullyConnected", "MatMul"):
                counts[kind] = counts.get(kind, 0) + 1
        return counts


def weight_forms(model: Any) -> dict[str, int]:
    """``{"u4": n, "i8": n, "f32": n}``: element types of the IR's weight constants (2-d and up, >= 64 values)."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            shape = list(op.get_output_shape(0))
            if len(shape) >= 2 and int(torch.tensor(shape).prod()) >= 64:
                kind = op.get_element_type().get_type_name()
                counts[kind] = counts.get(kind, 0) + 1
    return counts


@register_target
class OpenVinoTarget(Target):
    """OpenVINO IR for the OpenVINO CPU runtime."""

    name: ClassVar[str] = "openvino"
    extra: ClassVar[str] = "openvino"
    modules: ClassVar[tuple[str, ...]] = ("openvino", "onnx", "onnxruntime")
    suffix: ClassVar[str] = ".xml"
    description: ClassVar[str] = "OpenVINO: int8 QDQ as int8 kernels, MatMulNBits as u4/u8 compressed weights"

    def export(
        self, model: nn.Module, path: str | os.PathLike, example_inputs: Any, *, max_batch: int = 1024
    ) -> Exported:
        import openvino as ov

        from nncompress.io.onnx_export import export_onnx

        xml = Path(path).with_suffix(".xml")
        with tempfile.TemporaryDirectory() as tmp:
            onnx_result = export_onnx(model, Path(tmp) / "model.onnx", example_inputs, overwrite=True)
            ov_model = ov.convert_model(onnx_result.path)
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        forms = weight_forms(ov_model)
        layers = {name: _ov_form(label) for name, label in onnx_result.layers.items()}
        notes = [n for n in onnx_result.notes if "ONNX Runtime" not in n]
        notes.append("weight constants in the IR: " + ", ".join(f"{n} x {k}" for k, n in sorted(forms.items())))
        return Exported(str(xml), file_bytes(xml, xml.with_suffix(".bin")), OpenVinoModule(str(xml)), layers, notes)


def _ov_form(onnx_label: str) -> str:
    """The form a layer of the ONNX export takes in OpenVINO."""
    if onnx_label.startswith("MatMulNBits"):  # "MatMulNBits 4-bit, block 64"
        bits = onnx_label.split()[1].split("-")[0]
        return f"u{bits} compressed weights, group {onnx_label.rsplit(' ', 1)[-1]}"
    if onnx_label.startswith(("int8", "uint8")):
        return f"{onnx_label} (OpenVINO int8 kernel, our scales)"
    return onnx_label
