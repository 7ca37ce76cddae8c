"""Per-layer rows of an ONNX graph: each weighted node's weight initializer, its format and bits.

Used by ``OnnxRuntimeModule.layer_rows`` for the per-layer table of reports. In a QDQ graph a
quantized weight is an int8 initializer ``<name>_quantized`` feeding a ``DequantizeLinear``; in a
dynamic graph (``quantize_dynamic``) it feeds an integer op (``MatMulInteger``, or the fused
``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``) directly, with its zero point beside it and
the float bias added after the rescale; a layer left out of quantization keeps its float
initializer. Shapes are given in PyTorch's layout (``Gemm`` without ``transB`` and the MatMuls
store 2-D weights as ``(in, out)``; rows say ``(out, in)``).

Example:
    >>> onnx_layer_rows(module.model_proto())[0]["format"]  # doctest: +SKIP
    'int8'
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# integer ops of dynamic graphs -> the input slot of their weight's zero point
INTEGER_OPS = {"MatMulInteger": 3, "ConvInteger": 3, "DynamicQuantizeMatMul": 3, "MatMulIntegerToFloat": 5}
WEIGHTED_OPS = (*FLOAT_OPS, *INTEGER_OPS)
_MATMUL_LIKE = ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")  # weight is (in, out)
_BIAS_SLOTS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "DynamicQuantizeMatMul": 4, "MatMulIntegerToFloat": 6}
_RESCALE_OPS = ("Cast", "Mul")  # between a MatMulInteger and the Add of its bias

# (initializer name, its DequantizeLinear node or None): where a node's weight or bias comes from
Source = tuple[str, Any]


def consumers_of(graph: Any) -> dict[str, list[Any]]:
    """Tensor name -> the nodes of an ONNX graph that read it."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _attribute(node: Any, name: str, default: Any) -> Any:
    """The value of ``node``'s attribute ``name``, or ``default`` when it is not set."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _source(tensor: str, producer: dict[str, Any], arrays: dict[str, np.ndarray]) -> Source | None:
    """The initializer behind ``tensor``: itself, or the input of the DequantizeLinear making it."""
    if tensor in arrays:
        return tensor, None
    node = producer.get(tensor)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in arrays:
        return node.input[0], node
    return None


def _layer_name(initializer: str, node: Any) -> str:
    """The module a weight came from: ``fc1.weight_quantized`` / ``fc1.weight_Transposed_quantized``
    -> ``fc1``; an anonymous ``onnx::MatMul_509`` is named after its node's scope instead
    (``/blocks/blocks.0/attn/qkv/MatMul_quant`` -> ``blocks.0.attn.qkv``)."""
    if not initializer.startswith("onnx::"):
        return initializer.removesuffix("_quantized").removesuffix("_Transposed").removesuffix(".weight")
    path: list[str] = []
    for part in node.name.strip("/").split("/")[:-1]:  # a container's scope prefixes its children's
        if path and part.startswith(f"{path[-1]}."):
            path.pop()
        path.append(part)
    return ".".join(path) or initializer


def _bias(
    node: Any, producer: dict[str, Any], consumers: dict[str, list[Any]], arrays: dict[str, np.ndarray]
) -> np.ndarray | None:
    """The bias of a Conv/Gemm (third input), a DynamicQuantizeMatMul (fifth), or of a MatMul or
    integer op (a lone following Add of an initializer, after the Cast/Mul rescale of integer ops)."""
    slot = _BIAS_SLOTS.get(node.op_type)
    if slot is not None:
        found = _source(node.input[slot], producer, arrays) if len(node.input) > slot and node.input[slot] else None
        if found is not None or node.op_type in FLOAT_OPS:
            return None if found is None else arrays[found[0]]
    tensor = node.output[0]
    users = consumers.get(tensor, [])
    while node.op_type in INTEGER_OPS and len(users) == 1 and users[0].op_type in _RESCALE_OPS:
        tensor = users[0].output[0]
        users = consumers.get(tensor, [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    other = [t for t in users[0].input if t != tensor]
    found = _source(other[0], producer, arrays) if len(other) == 1 else None
    return None if found is None or arrays[found[0]].ndim != 1 else arrays[found[0]]


def _weight_zero_point(node: Any, dequantize: Any, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray | None, int]:
    """The zero point of a quantized weight and the axis it runs along (QDQ: the DequantizeLinear's
    axis; integer ops: output channels, the last axis of a MatMul weight, the first of a conv's)."""
    if dequantize is not None:
        point = arrays.get(dequantize.input[2]) if len(dequantize.input) > 2 else None
        return point, _attribute(dequantize, "axis", 1)
    slot = INTEGER_OPS.get(node.op_type)
    point = arrays.get(node.input[slot]) if slot is not None and len(node.input) > slot else None
    return point, (-1 if node.op_type in _MATMUL_LIKE else 0)


def _zero_mask(codes: np.ndarray, node: Any, dequantize: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Where the decoded weight is exactly zero: code == zero point (broadcast along its axis)."""
    zero_point, axis = _weight_zero_point(node, dequantize, arrays)
    if zero_point is None or zero_point.size == 1:
        return codes == (0 if zero_point is None else zero_point.reshape(()))
    shape = [1] * codes.ndim
    shape[axis % codes.ndim] = -1
    return codes == zero_point.reshape(shape)


def _granularity(node: Any, dequantize: Any, arrays: dict[str, np.ndarray]) -> str | None:
    """ "channel" for one scale per slice, "tensor" for one scale, None for a float weight."""
    if dequantize is not None:
        scale = arrays.get(dequantize.input[1])
        return "channel" if scale is not None and scale.size > 1 else "tensor"
    if node.op_type not in INTEGER_OPS:
        return None
    # quantize_dynamic writes one zero point per scale (all zero for its symmetric int8 weights)
    zero_point, _ = _weight_zero_point(node, None, arrays)
    return "channel" if zero_point is not None and zero_point.size > 1 else "tensor"


def _torch_shape(node: Any, weight: np.ndarray) -> list[int]:
    """The weight's shape as the PyTorch layer holds it ((out, in) for 2-D Gemm/MatMul weights)."""
    transposed = node.op_type in _MATMUL_LIKE or (node.op_type == "Gemm" and not _attribute(node, "transB", 0))
    return list(weight.shape[::-1] if transposed and weight.ndim == 2 else weight.shape)


def _row(node: Any, source: Source, bias: np.ndarray | None, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """One per-layer row of a weighted node (the keys of ``measure.size.layer_stats``)."""
    weight = arrays[source[0]]
    stored = [weight] + ([bias] if bias is not None else [])
    zeros = int(np.count_nonzero(_zero_mask(weight, node, source[1], arrays)))
    return {
        "name": _layer_name(source[0], node),
        "type": node.op_type,
        "shape": _torch_shape(node, weight),
        "params": sum(int(a.size) for a in stored),
        "nonzero_params": sum(int(np.count_nonzero(a)) for a in stored),
        "weight_sparsity": zeros / max(1, weight.size),
        "format": str(weight.dtype),
        "bits": weight.dtype.itemsize * 8,
        "granularity": _granularity(node, source[1], arrays),
        "group_size": None,
    }


def onnx_layer_rows(proto: Any) -> list[dict[str, Any]]:
    """One row per weighted node of ``proto`` (Conv/ConvTranspose/Gemm/MatMul, or a dynamic graph's
    integer op) whose weight is an initializer."""
    from onnx import numpy_helper

    graph = proto.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers = consumers_of(graph)
    rows = []
    for node in graph.node:
        source = _source(node.input[1], producer, arrays) if node.op_type in WEIGHTED_OPS else None
        if source is not None:
            rows.append(_row(node, source, _bias(node, producer, consumers, arrays), arrays))
    return rows


# input slots holding quantization metadata (scales, zero points), per op: not model parameters
_METADATA_SLOTS = {
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
    "MatMulInteger": (2, 3),
    "ConvInteger": (2, 3),
    "DynamicQuantizeMatMul": (2, 3),
    "MatMulIntegerToFloat": (2, 3, 4, 5),
}


def _metadata(graph: Any) -> set[str]:
    """Initializers that are quantization metadata: scale/zero-point inputs, and the weight scales
    a dynamic graph multiplies with ``DynamicQuantizeLinear``'s run-time activation scale."""
    dynamic_scales = {n.output[1] for n in graph.node if n.op_type == "DynamicQuantizeLinear" and len(n.output) > 1}
    names = set()
    for node in graph.node:
        slots = _METADATA_SLOTS.get(node.op_type, ())
        names.update(name for i, name in enumerate(node.input) if i in slots)
        if node.op_type == "Mul" and dynamic_scales.intersection(node.input):
            names.update(node.input)
    return names


def onnx_parameter_counts(proto: Any) -> tuple[int, int]:
    """(elements, non-zeros) of the parameters an ONNX graph stores: its float and int8/int32
    initializers less quantization metadata (int64 shape constants are not parameters either)."""
    from onnx import numpy_helper

    skip = _metadata(proto.graph)
    arrays = [numpy_helper.to_array(i) for i in proto.graph.initializer if i.name not in skip]
    kept = [a for a in arrays if a.dtype.kind == "f" or a.dtype in (np.int8, np.uint8, np.int32)]
    return sum(int(a.size) for a in kept), sum(int(np.count_nonzero(a)) for a in kept)
