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

Two rewrites place ONNX Runtime's Q/DQ where ``nncf.quantize`` puts them, same codes and outputs:
a quantized input goes before a Flatten (``hoist_fake_quantize_above_flatten``), and a uint8
activation's zero point moves into the biases of the matmuls it feeds (``zero_points_into_biases``).
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
        self.ov = ov

    def forward(self, *inputs: torch.Tensor) -> Any:
        # inputs as tensors over the arrays' memory and a bare ``infer()``: ``infer(list)`` converted
        # and copied in Python, 70 us of a 105 us batch-1 call of a small MLP (34 us this way)
        arrays = [x.detach().cpu().contiguous().numpy() for x in inputs]
        for i, array in enumerate(arrays):
            self.request.set_input_tensor(i, self.ov.Tensor(array, shared_memory=True))
        self.request.infer()
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
            folded = fold_int32_biases(onnx_result.path)
            ov_model = ov.convert_model(onnx_result.path)
        zero_points = zero_points_into_biases(ov_model)
        shared = share_fake_quantize_bounds(ov_model)
        hoisted = hoist_fake_quantize_above_flatten(ov_model)
        unblocked = unblock_per_channel_weights(ov_model)
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        forms = weight_forms(ov_model)
        layers = {name: _ov_form(label) for name, label in onnx_result.layers.items()}
        notes = [n for n in onnx_result.notes if "ONNX Runtime" not in n]
        if folded:
            notes.append(f"{folded} int32 bias(es) stored as fp32, as OpenVINO's int8 kernels take them")
        if unblocked:
            notes.append(
                f"{unblocked} per-channel low-bit weight(s) stored [out, in] with one scale per row, not in the "
                "ONNX export's padded blocks with the scale repeated per block"
            )
        if shared:
            notes.append(f"{shared} FakeQuantize bounds as shared scalars (per-tensor activation ranges)")
        if zero_points:
            notes.append(
                f"{zero_points} asymmetric activation(s) into int8 matmuls: the zero point folded into the "
                "layer's fp32 bias (same codes; OpenVINO's zero-point matmul path was ~3 us slower at batch 1)"
            )
        if hoisted:
            notes.append(
                f"{hoisted} per-tensor FakeQuantize(s) moved above a flattening Reshape, onto the un-flattened "
                "tensor (same values; OpenVINO's FakeQuantize kernel is ~7x slower on [batch, features])"
            )
        notes.append("weight constants in the IR: " + ", ".join(f"{n} x {k}" for k, n in sorted(forms.items())))
        return Exported(str(xml), file_bytes(xml, xml.with_suffix(".bin")), OpenVinoModule(str(xml)), layers, notes)


def fold_int32_biases(path: str | os.PathLike) -> int:
    """Rewrite the ONNX file at ``path`` with each int32 bias's DequantizeLinear as one fp32 initializer.

    OpenVINO keeps such a bias as int32 codes, a per-channel fp32 scale and Convert/Multiply/Reshape
    nodes (twice the bytes of a float bias, ~2 KB of IR per layer); its int8 kernels add the float
    bias anyway, so the folded value runs the same. Returns how many were folded.
    """
    import onnx
    from onnx import numpy_helper

    from nncompress.deploy.qdq_torch import bias_fp32, node_attrs

    proto = onnx.load(str(path))
    graph = proto.graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    folds = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear" and getattr(arrays.get(n.input[0]), "dtype", None) == "int32"
    ]
    for node in folds:
        graph.initializer.append(
            numpy_helper.from_array(bias_fp32(arrays, list(node.input), node_attrs(node)), node.output[0])
        )
        graph.node.remove(node)
    read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    freed = {name for n in folds for name in n.input} - read
    for init in [i for i in graph.initializer if i.name in freed]:
        graph.initializer.remove(init)
    if folds:
        onnx.save(proto, str(path))
    return len(folds)


def share_fake_quantize_bounds(model: Any) -> int:
    """Give each FakeQuantize's single-value bounds as one scalar constant per distinct value.

    The ONNX front end writes every per-tensor Q/DQ pair as a FakeQuantize with four ``[1,1,1,1]``
    constants; a uint8 activation's input and output ranges are the same two numbers. One scalar
    node per value (shared by every bound that equals it) runs the same and drops ~0.4 KB of IR per
    FakeQuantize. Returns how many bound inputs were replaced.
    """
    import numpy as np
    from openvino import op

    scalars: dict[tuple[str, bytes], Any] = {}
    replaced = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "FakeQuantize":
            continue
        for port in list(node.inputs())[1:]:
            source = port.get_source_output().get_node()
            if source.get_type_name() != "Constant" or int(np.prod(source.get_output_shape(0))) != 1:
                continue
            value = source.get_data().reshape(())
            key = (str(value.dtype), value.tobytes())
            if key not in scalars:
                scalars[key] = op.Constant(np.array(value))
            port.replace_source_output(scalars[key].output(0))
            replaced += 1
    if replaced:
        model.validate_nodes_and_infer_types()
    return replaced


def zero_points_into_biases(model: Any) -> int:
    """Make each uint8 activation with a zero point that only feeds matmuls start at 0, the zero
    point's share moved into those matmuls' biases. Returns how many activations.

    ONNX Runtime quantizes a signed tensor (a model's normalized input) as uint8 with a zero point:
    ``FakeQuantize`` output range ``[lo, hi]``, ``lo < 0``, dequantizing to ``s * q + lo``. OpenVINO
    runs a matmul fed by it with zero-point compensation, 11 us against 8 us for fmnist-mlp's first
    Linear at batch 1 (its quantize took 2 us against 1). The output range ``[0, hi - lo]`` keeps
    every code ``q`` and feeds ``s * q``; ``W @ (s * q + lo) + b = W @ (s * q) + (b + lo * W.sum(1))``,
    so the bias takes ``lo`` times each weight row's sum (the same outputs to float rounding).
    """
    import numpy as np
    from openvino import op

    moved = 0
    for fq in model.get_ordered_ops():
        if fq.get_type_name() != "FakeQuantize" or not _scalar_bounds(fq):
            continue
        low, high = (float(_source(fq, i).get_data().reshape(-1)[0]) for i in (3, 4))
        plan = _bias_plan(fq) if low < 0 < high else None
        if not plan:
            continue
        for add, rowsum in plan:
            bias = _source(add, 1).get_data()
            folded = (bias.astype(np.float64) + low * rowsum.reshape(bias.shape)).astype(np.float32)
            add.input(1).replace_source_output(op.Constant(folded).output(0))
        fq.input(3).replace_source_output(op.Constant(np.array(0.0, dtype=np.float32)).output(0))
        fq.input(4).replace_source_output(op.Constant(np.array(high - low, dtype=np.float32)).output(0))
        moved += 1
    if moved:
        model.validate_nodes_and_infer_types()
    return moved


def _scalar_bounds(fq: Any) -> bool:
    import numpy as np

    return all(
        _source(fq, i).get_type_name() == "Constant" and int(np.prod(_source(fq, i).get_output_shape(0))) == 1
        for i in range(1, 5)
    )


def _consumers(node: Any) -> list[Any]:
    return [target.get_node() for target in node.output(0).get_target_inputs()]


def _bias_plan(fq: Any) -> list[tuple[Any, Any]] | None:
    """``[(bias Add, weight row sums)]`` for each matmul ``fq`` feeds (through one Reshape at most) as
    its data input, with a constant dequantized weight and a constant bias; None if any consumer is not that."""
    import numpy as np

    feeds = _consumers(fq)
    source = fq
    if len(feeds) == 1 and feeds[0].get_type_name() == "Reshape":
        source, feeds = feeds[0], _consumers(feeds[0])
    plan = []
    for matmul in feeds:
        if matmul.get_type_name() != "MatMul" or _source(matmul, 0) is not source:
            return None
        attrs = matmul.get_attributes()
        weight = _constant_weight(_source(matmul, 1))
        adds = _consumers(matmul)
        if weight is None or weight.ndim != 2 or attrs["transpose_a"] or len(adds) != 1:
            return None
        add = adds[0]
        bias = _source(add, 1) if add.get_type_name() == "Add" else None
        rowsum = (weight if attrs["transpose_b"] else weight.T).sum(axis=1)
        if bias is None or bias.get_type_name() != "Constant" or int(np.prod(bias.get_output_shape(0))) != rowsum.size:
            return None
        plan.append((add, rowsum))
    return plan or None


def _constant_weight(node: Any) -> Any:
    """The float64 value of ``Multiply(Convert(codes) [- Convert(zero)], scale)`` of constants, else None."""
    import numpy as np

    if node.get_type_name() != "Multiply" or _source(node, 1).get_type_name() != "Constant":
        return None
    scale, codes = _source(node, 1).get_data().astype(np.float64), _source(node, 0)
    zero = 0.0
    if codes.get_type_name() == "Subtract":
        point = _source(codes, 1)
        point = _source(point, 0) if point.get_type_name() == "Convert" else point
        if point.get_type_name() != "Constant":
            return None
        zero, codes = point.get_data().astype(np.float64), _source(codes, 0)
    if codes.get_type_name() != "Convert" or _source(codes, 0).get_type_name() != "Constant":
        return None
    if _source(codes, 0).get_element_type().get_type_name() not in ("i8", "u8"):
        return None  # u4 codes read back packed two to a byte
    return (_source(codes, 0).get_data().astype(np.float64) - zero) * scale


def hoist_fake_quantize_above_flatten(model: Any) -> int:
    """Turn each per-tensor ``FakeQuantize(Reshape(x))`` that flattens ``x`` (fewer dims out than in)
    into ``Reshape(FakeQuantize(x))``, as ``nncf.quantize`` places it. Returns how many.

    ONNX Runtime's quantizer puts a model's input Q/DQ after its ``Flatten``, so OpenVINO quantizes
    a ``[batch, 784]`` f32 tensor: its FakeQuantize kernel takes the 784 features as channels and
    ran 40 us at batch 64 where the same values as ``[64, 1, 28, 28]`` took 6 us (fmnist-mlp, the
    whole gap to NNCF's int8 IR). Per-tensor bounds commute with any reshape: same integers, and
    the Reshape then moves u8 codes instead of f32.
    """
    import numpy as np
    import openvino.opset13 as ops

    hoisted = 0
    for fq in model.get_ordered_ops():
        if fq.get_type_name() != "FakeQuantize":
            continue
        reshape = _source(fq, 0)
        bounds = [fq.input(i).get_source_output() for i in range(1, 5)]
        if (
            reshape.get_type_name() != "Reshape"
            or len(reshape.output(0).get_target_inputs()) != 1
            or any(int(np.prod(b.get_node().get_output_shape(0))) != 1 for b in bounds)
        ):
            continue
        source = reshape.input(0).get_source_output()
        rank_in, rank_out = source.get_partial_shape().rank, reshape.get_output_partial_shape(0).rank
        if rank_in.is_dynamic or rank_out.is_dynamic or rank_in.get_length() <= rank_out.get_length():
            continue
        quantized = ops.fake_quantize(source, *bounds, fq.get_attributes()["levels"])
        quantized.set_friendly_name(fq.get_friendly_name())
        flat = ops.reshape(quantized, reshape.input(1).get_source_output(), reshape.get_attributes()["special_zero"])
        flat.set_friendly_name(reshape.get_friendly_name())
        fq.output(0).replace(flat.output(0))
        hoisted += 1
    if hoisted:
        model.validate_nodes_and_infer_types()
    return hoisted


def unblock_per_channel_weights(model: Any) -> int:
    """Store each blocked low-bit weight whose blocks share one scale per row as ``[out, in]`` codes
    with one scale per row (``nncf.compress_weights``' per-channel form). Returns how many.

    ``MatMulNBits`` (the ONNX export of a packed Linear) holds blocks of 16..256 columns, so a
    per-channel 4-bit weight arrives as ``Const[u4, out x blocks x B] -> Convert -> Subtract(zero)
    -> Multiply(scale[out x blocks x 1]) -> Reshape -> Slice(:in)``: ``in`` padded to whole blocks
    (784 -> 832 columns) and the row's scale repeated per block (13x for 784 inputs).
    """
    rewritten = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() == "Slice" and _unblock(node):
            rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten


def _source(node: Any, index: int) -> Any:
    return node.input(index).get_source_output().get_node()


def _unblock(slice_node: Any) -> bool:
    """Rewrite one ``Slice(Reshape(Multiply(Subtract(Convert(u4/u8 codes), zero), scale)))``; False if not that."""
    import numpy as np
    import openvino.opset13 as ops

    reshape = _source(slice_node, 0)
    multiply = _source(reshape, 0) if reshape.get_type_name() == "Reshape" else None
    if multiply is None or multiply.get_type_name() != "Multiply":
        return False
    subtract, scale = _source(multiply, 0), _source(multiply, 1)
    if subtract.get_type_name() != "Subtract" or scale.get_type_name() != "Constant":
        return False
    convert = _source(subtract, 0)
    codes = _source(convert, 0) if convert.get_type_name() == "Convert" else None
    kind = codes.get_element_type().get_type_name() if codes is not None and codes.get_type_name() == "Constant" else ""
    shape, out_shape = list(scale.get_output_shape(0)), slice_node.get_output_partial_shape(0)
    if kind not in ("u4", "u8") or len(shape) != 3 or shape[2] != 1 or out_shape.is_dynamic or len(out_shape) != 2:
        return False
    scales = scale.get_data()
    if not np.array_equal(scales, np.broadcast_to(scales[:, :1], scales.shape)):
        return False  # real groups: keep them
    rows, cols = (int(d.get_length()) for d in out_shape)
    values = _unpack(codes.get_data(), kind).reshape(rows, -1)[:, :cols]
    weight = ops.convert(_pack(values, kind), "f32")
    dequantized = ops.multiply(ops.subtract(weight, subtract.input(1).get_source_output()), ops.constant(scales[:, 0]))
    slice_node.output(0).replace(dequantized.output(0))
    return True


def _unpack(data: Any, kind: str) -> Any:
    """OpenVINO's packed u4 bytes (low nibble first) or u8 bytes as one value per element."""
    import numpy as np

    if kind == "u8":
        return data.reshape(-1)
    data = data.reshape(-1)
    return np.stack([data & 0x0F, data >> 4], axis=1).reshape(-1)


def _pack(values: Any, kind: str) -> Any:
    """``values`` (2-d) as an OpenVINO u4/u8 constant, copied (a ``Tensor`` over numpy memory is shared
    by default, and read garbage once the array was freed)."""
    import numpy as np
    import openvino as ov
    from openvino import op

    codes = np.ascontiguousarray(values, dtype=np.uint8)
    if kind == "u8":
        return op.Constant(codes)
    return op.Constant(ov.Type.u4, ov.Shape(list(codes.shape)), codes.reshape(-1).tolist())


def _ov_form(onnx_label: str) -> str:
    """The form a layer of the ONNX export takes in OpenVINO."""
    if onnx_label.startswith("MatMulNBits"):  # "MatMulNBits 4-bit, block 64"
        bits = onnx_label.split()[1].split("-")[0]
        return f"u{bits} compressed weights, group {onnx_label.rsplit(' ', 1)[-1]}"
    if onnx_label.startswith(("int8", "uint8")):
        return f"{onnx_label} (OpenVINO int8 kernel, our scales)"
    return onnx_label
