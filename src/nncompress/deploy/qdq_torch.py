"""An ONNX QDQ int8 graph (what ``int8-static`` stores) as a torch module in PT2E form.

``int8-static``'s default backend keeps the model as an ONNX Runtime QDQ graph
(:class:`~nncompress.quantize.runtime.OnnxRuntimeModule`): int8 weights with per-channel scales,
uint8 activations with per-tensor scales. Runtimes fed from ``torch.export`` (ExecuTorch's XNNPACK
delegate, LiteRT) read int8 as PT2E's ``quantized_decomposed`` quantize/dequantize pairs around
float ops, the form ``convert_pt2e`` writes. :class:`QdqGraphModule` replays the ONNX graph node by
node with those ops and our scales, so the target runs the same integers with no recalibration.

uint8 activations become int8 with the zero point moved by -128 (``q_i8 = q_u8 - 128`` for every
value: the same real numbers), as XNNPACK's PT2E path takes signed activations. The int32 biases
are dequantized to fp32 (input scale x weight scale x integer), which XNNPACK re-quantizes to the
same integers.

``fold_weights=False`` writes each int8 weight as its exact fp32 value followed by a quantize and a
dequantize (``convert_pt2e(fold_quantize=False)``'s form, which LiteRT's converter takes: it folds
the pair back into the same int8 constant); the default keeps the int8 codes (XNNPACK's form).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ACCEPTED_OPS = (
    "QuantizeLinear, DequantizeLinear, Conv, Gemm, MatMul, Add, Sub, Mul, Relu, Clip, Sigmoid, Softmax, MaxPool, "
    "AveragePool, GlobalAveragePool, ReduceMean, Flatten, Reshape, Transpose, Concat, Identity"
)


def _qd() -> Any:
    """``torch.ops.quantized_decomposed`` (registered by importing torchao's or torch's PT2E module)."""
    import importlib

    try:
        importlib.import_module("torchao.quantization.pt2e")  # registers the quantized_decomposed ops
    except ImportError:
        importlib.import_module("torch.ao.quantization.fx._decomposed")
    return torch.ops.quantized_decomposed


def node_attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pads(attrs: dict[str, Any], dims: int) -> list[int]:
    pads = list(attrs.get("pads", [0] * (2 * dims)))
    if pads[:dims] != pads[dims:]:
        raise ValueError(f"asymmetric padding {pads} has no torch equivalent; accepted: symmetric pads")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"auto_pad={attrs['auto_pad']!r} is not supported; accepted: explicit pads")
    return pads[:dims]


class QdqGraphModule(nn.Module):
    """Replays an ONNX QDQ graph with torch ops: ``quantized_decomposed`` Q/DQ and float conv/linear.

    Args:
        proto: the ``onnx.ModelProto`` (e.g. ``OnnxRuntimeModule.model_proto()``).
        fold_weights: int8 weights as their codes (True) or as fp32 values re-quantized in the graph.

    Raises:
        ValueError: an operator outside ``ACCEPTED_OPS`` (named with its node).

    Example:
        >>> module = QdqGraphModule(int8_model.model_proto())  # doctest: +SKIP
        >>> torch.export.export(module, (x,))  # doctest: +SKIP
    """

    def __init__(self, proto: Any, *, fold_weights: bool = True) -> None:
        super().__init__()
        self.fold_weights = fold_weights
        from onnx import numpy_helper

        graph = proto.graph
        self.arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                self.arrays[node.output[0]] = numpy_helper.to_array(node_attrs(node)["value"])
        self.input_names = [i.name for i in graph.input if i.name not in self.arrays]
        self.output_names = [o.name for o in graph.output]
        self.nodes = [(n.op_type, list(n.input), list(n.output), node_attrs(n), n.name) for n in graph.node]
        unknown = [f"{n.name or n.output[0]} ({n.op_type})" for n in graph.node if n.op_type not in OPS]
        if unknown:
            raise ValueError(
                f"QDQ graph operators without a torch replay: {', '.join(unknown[:4])}; accepted: {ACCEPTED_OPS}"
            )
        self._tensors: dict[str, str] = {}  # initializer name -> buffer name
        self.int8_weights = sum(
            1
            for n in graph.node
            if n.op_type == "DequantizeLinear"
            and n.input[0] in self.arrays
            and self.arrays[n.input[0]].dtype.itemsize == 1
        )
        for node in graph.node:  # int32 biases (and unfolded weights): fp32 buffers, not tensors made in forward
            codes = self.arrays.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
            if codes is not None and (codes.dtype == np.int32 or not fold_weights):
                self.arrays[node.input[0] + ".fp32"] = bias_fp32(self.arrays, list(node.input), node_attrs(node))
        used = _tensor_inputs(self.nodes, self.arrays, fold_weights)
        for name, array in self.arrays.items():
            if array.ndim >= 1 and name in used:  # an unread buffer would still be exported as a constant
                if array.dtype.kind in "iu" and array.dtype.itemsize > 1:
                    array = array.astype(np.int64)  # zero points: PT2E keeps them int64
                elif array.dtype.kind == "f":
                    array = array.astype(np.float32)
                buffer = f"c{len(self._tensors)}"
                self.register_buffer(buffer, torch.from_numpy(np.ascontiguousarray(array).copy()), persistent=False)
                self._tensors[name] = buffer

    def const(self, name: str) -> torch.Tensor:
        """The initializer ``name`` as a buffer (traced as a constant)."""
        return getattr(self, self._tensors[name])

    def scalar(self, name: str) -> float | int:
        """A per-tensor scale or zero point as a Python number (PT2E passes them as literals)."""
        return self.arrays[name].reshape(-1)[0].item()

    def forward(self, *inputs: torch.Tensor) -> Any:
        env: dict[str, Any] = dict(zip(self.input_names, inputs, strict=True))
        for op, ins, outs, attrs, _ in self.nodes:
            if op == "DequantizeLinear":
                env[outs[0]] = _Deferred(ins, attrs)  # traced at each use: one dq per consumer
            else:
                env[outs[0]] = OPS[op](self, env, ins, attrs)
        outs = [self.value(env, n) for n in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def value(self, env: dict[str, Any], name: str) -> Any:
        """A graph value: computed, or an initializer (as a buffer)."""
        if name in env:
            found = env[name]
            return _dequantize(self, env, found.ins, found.attrs) if isinstance(found, _Deferred) else found
        if name in self._tensors:
            return self.const(name)
        return torch.tensor(self.arrays[name])


SHAPE_INPUTS = {"QuantizeLinear": 1, "Reshape": 1, "Clip": 1, "ReduceMean": 1}  # later inputs: read as numbers


def _tensor_inputs(nodes: list[tuple], arrays: dict[str, np.ndarray], fold_weights: bool) -> set[str]:
    """The initializers ``forward`` reads as tensors: an int32 bias as its fp32 copy (not its codes,
    scale or zero point), a weight's codes (its fp32 copy without ``fold_weights``) and per-channel
    scales and zero points; numbers read as literals, Reshape shapes and Clip bounds are left out."""
    used = set()
    for op, ins, _, _, _ in nodes:
        if op == "DequantizeLinear" and ins[0] in arrays:
            if arrays[ins[0]].dtype == np.int32:
                used.add(ins[0] + ".fp32")
                continue
            used.add(ins[0] if fold_weights else ins[0] + ".fp32")
            if arrays[ins[1]].size > 1:
                used.update(ins[1:])
        elif op != "DequantizeLinear":
            used.update(ins[: SHAPE_INPUTS.get(op, len(ins))])
    return used


def bias_fp32(arrays: dict[str, np.ndarray], ins: list[str], attrs: dict[str, Any]) -> np.ndarray:
    """A constant DequantizeLinear's value in fp32: (integer - zero) x scale (for an int32 bias, the
    scale is input scale x weight scale)."""
    codes = arrays[ins[0]]
    scale = arrays[ins[1]].astype(np.float64)
    zero = arrays[ins[2]].astype(np.float64) if len(ins) > 2 else np.zeros_like(scale)
    shape = [1] * codes.ndim
    if scale.size > 1:
        shape[int(attrs.get("axis", 1))] = -1
    return ((codes.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


class _Deferred:
    """A DequantizeLinear, emitted afresh at each read: one dq per consumer, next to it, as
    ``convert_pt2e`` writes them (XNNPACK's partitioner pulls each dq into its consumer's partition;
    a dq shared by a conv and a residual add made dependency cycles)."""

    def __init__(self, ins: list[str], attrs: dict[str, Any]) -> None:
        self.ins, self.attrs = ins, attrs


def _signed(zero: int, dtype: np.dtype) -> tuple[int, int, int, torch.dtype]:
    """(zero point, qmin, qmax, dtype) in int8: uint8 codes shift by -128 to the same real values."""
    if dtype == np.uint8:
        return zero - 128, -128, 127, torch.int8
    if dtype == np.int8:
        return zero, -128, 127, torch.int8
    raise ValueError(f"QDQ activations must be uint8 or int8, got {dtype}; accepted: 8-bit QDQ graphs")


def _quantize(m: QdqGraphModule, env: dict, ins: list[str], attrs: dict) -> torch.Tensor:
    zero_name = ins[2] if len(ins) > 2 else None
    dtype = m.arrays[zero_name].dtype if zero_name else np.dtype(np.uint8)
    if m.arrays[ins[1]].size != 1:
        raise ValueError(f"per-channel activation quantization of {ins[0]!r} is not supported; accepted: per-tensor")
    zero, lo, hi, tdtype = _signed(int(m.scalar(zero_name)) if zero_name else 0, dtype)
    return _qd().quantize_per_tensor.default(m.value(env, ins[0]), float(m.scalar(ins[1])), zero, lo, hi, tdtype)


def _dequantize(m: QdqGraphModule, env: dict, ins: list[str], attrs: dict) -> torch.Tensor:
    qd = _qd()
    if ins[0] in m.arrays:  # a constant: int8 weight (per channel or tensor) or int32 bias
        codes = m.arrays[ins[0]]
        scale = m.arrays[ins[1]].astype(np.float32)
        zero = m.arrays[ins[2]].astype(np.int64) if len(ins) > 2 else np.zeros_like(scale, dtype=np.int64)
        if codes.dtype == np.int32:  # bias, dequantized once in __init__
            return m.const(ins[0] + ".fp32")
        if codes.dtype not in (np.int8, np.uint8):
            raise ValueError(f"weight {ins[0]!r} has {codes.dtype} codes; accepted: int8/uint8 weights, int32 biases")
        lo, hi = (-128, 127) if codes.dtype == np.int8 else (0, 255)
        tdtype = torch.int8 if codes.dtype == np.int8 else torch.uint8
        if scale.size > 1:
            qparams = (
                m.const(ins[1]),
                m.const(ins[2]) if len(ins) > 2 else torch.zeros(scale.size, dtype=torch.long),
                int(attrs.get("axis", 1)),
                lo,
                hi,
                tdtype,
            )
            if m.fold_weights:
                return qd.dequantize_per_channel.default(m.const(ins[0]), *qparams)
            return qd.dequantize_per_channel.default(
                qd.quantize_per_channel.default(m.const(ins[0] + ".fp32"), *qparams), *qparams
            )
        qparams = (float(scale.item()), int(zero.item()), lo, hi, tdtype)
        if m.fold_weights:
            return qd.dequantize_per_tensor.default(m.const(ins[0]), *qparams)
        return qd.dequantize_per_tensor.default(
            qd.quantize_per_tensor.default(m.const(ins[0] + ".fp32"), *qparams), *qparams
        )
    zero_name = ins[2] if len(ins) > 2 else None
    dtype = m.arrays[zero_name].dtype if zero_name else np.dtype(np.uint8)
    zero, lo, hi, tdtype = _signed(int(m.scalar(zero_name)) if zero_name else 0, dtype)
    return qd.dequantize_per_tensor.default(m.value(env, ins[0]), float(m.scalar(ins[1])), zero, lo, hi, tdtype)


def _conv(m: QdqGraphModule, env: dict, ins: list[str], attrs: dict) -> torch.Tensor:
    x, w = m.value(env, ins[0]), m.value(env, ins[1])
    b = m.value(env, ins[2]) if len(ins) > 2 and ins[2] else None
    dims = w.dim() - 2
    fn = {1: F.conv1d, 2: F.conv2d}.get(dims)
    if fn is None:
        raise ValueError(f"Conv with {dims} spatial dims is not supported; accepted: 1-d and 2-d")
    return fn(
        x,
        w,
        b,
        stride=list(attrs.get("strides", [1] * dims)),
        padding=_pads(attrs, dims),
        dilation=list(attrs.get("dilations", [1] * dims)),
        groups=int(attrs.get("group", 1)),
    )


def _gemm(m: QdqGraphModule, env: dict, ins: list[str], attrs: dict) -> torch.Tensor:
    a, b = m.value(env, ins[0]), m.value(env, ins[1])
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise ValueError("Gemm with alpha or beta other than 1 is not supported; accepted: plain Gemm")
    bias = m.value(env, ins[2]) if len(ins) > 2 and ins[2] else None
    if attrs.get("transB", 0):
        return F.linear(a, b, bias)
    return F.linear(a, b.t(), bias)


def _matmul(m: QdqGraphModule, env: dict, ins: list[str], attrs: dict) -> torch.Tensor:
    a, b = m.value(env, ins[0]), m.value(env, ins[1])
    return F.linear(a, b.t()) if ins[1] in m.arrays and b.dim() == 2 else torch.matmul(a, b)


def _pool(kind: str) -> Callable[..., torch.Tensor]:
    def run(m: QdqGraphModule, env: dict, ins: list[str], attrs: dict) -> torch.Tensor:
        x = m.value(env, ins[0])
        kernel = list(attrs["kernel_shape"])
        dims = len(kernel)
        stride, pads = list(attrs.get("strides", [1] * dims)), _pads(attrs, dims)
        if kind == "max":
            return F.max_pool2d(x, kernel, stride, pads, ceil_mode=bool(attrs.get("ceil_mode", 0)))
        return F.avg_pool2d(
            x,
            kernel,
            stride,
            pads,
            ceil_mode=bool(attrs.get("ceil_mode", 0)),
            count_include_pad=bool(attrs.get("count_include_pad", 0)),
        )

    return run


def _clip(m: QdqGraphModule, env: dict, ins: list[str], attrs: dict) -> torch.Tensor:
    lo = float(m.arrays[ins[1]]) if len(ins) > 1 and ins[1] else attrs.get("min")
    hi = float(m.arrays[ins[2]]) if len(ins) > 2 and ins[2] else attrs.get("max")
    return torch.clamp(m.value(env, ins[0]), lo, hi)


def _flatten(m: QdqGraphModule, env: dict, ins: list[str], attrs: dict) -> torch.Tensor:
    """ONNX Flatten: always 2-D, the dimensions before ``axis`` into rows, the rest into columns."""
    x = m.value(env, ins[0])
    axis = int(attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _reshape(m: QdqGraphModule, env: dict, ins: list[str], attrs: dict) -> torch.Tensor:
    x = m.value(env, ins[0])
    shape = [int(s) for s in m.arrays[ins[1]]]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _reduce_mean(m: QdqGraphModule, env: dict, ins: list[str], attrs: dict) -> torch.Tensor:
    axes = attrs.get("axes")
    if axes is None and len(ins) > 1 and ins[1]:  # opset 18: axes as an input
        axes = [int(a) for a in m.arrays[ins[1]]]
    x = m.value(env, ins[0])
    return x.mean(dim=list(axes) if axes else list(range(x.dim())), keepdim=bool(attrs.get("keepdims", 1)))


OPS: dict[str, Callable[..., Any]] = {
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": lambda m, env, ins, attrs: m.value(env, ins[0]) + m.value(env, ins[1]),
    "Mul": lambda m, env, ins, attrs: m.value(env, ins[0]) * m.value(env, ins[1]),
    "Sub": lambda m, env, ins, attrs: m.value(env, ins[0]) - m.value(env, ins[1]),
    "ReduceMean": _reduce_mean,
    "Softmax": lambda m, env, ins, attrs: torch.softmax(m.value(env, ins[0]), dim=int(attrs.get("axis", -1))),
    "Relu": lambda m, env, ins, attrs: F.relu(m.value(env, ins[0])),
    "Sigmoid": lambda m, env, ins, attrs: torch.sigmoid(m.value(env, ins[0])),
    "Clip": _clip,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda m, env, ins, attrs: m.value(env, ins[0]).mean(dim=(2, 3), keepdim=True),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda m, env, ins, attrs: m.value(env, ins[0]).permute(*attrs["perm"]),
    "Concat": lambda m, env, ins, attrs: torch.cat([m.value(env, i) for i in ins], dim=int(attrs["axis"])),
    "Identity": lambda m, env, ins, attrs: m.value(env, ins[0]),
}
