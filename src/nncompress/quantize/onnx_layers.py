"""Per-layer rows of an ONNX graph: each weighted node's weight initializer, its format and bits.

Used by ``OnnxRuntimeModule.layer_rows`` for the per-layer table of reports. In a QDQ graph a
quantized weight is an int8 initializer ``<name>_quantized`` feeding a ``DequantizeLinear``; a
layer left out of quantization keeps its float initializer. Shapes are given in PyTorch's layout
(``Gemm`` without ``transB`` and ``MatMul`` store 2-D weights as ``(in, out)``; rows say ``(out, in)``).

Example:
    >>> onnx_layer_rows(module.model_proto())[0]["format"]  # doctest: +SKIP
    'int8'
"""

from __future__ import annotations

from typing import Any

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

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


def _layer_name(initializer: str) -> str:
    """``fc1.weight_quantized`` -> ``fc1``: the module a weight initializer came from."""
    return initializer.removesuffix("_quantized").removesuffix(".weight")


def _bias(node: Any, producer: dict[str, Any], consumers: dict[str, list[Any]],
          arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The bias of a Conv/Gemm (third input) or of a MatMul (a lone following Add of an initializer)."""
    if node.op_type != "MatMul":
        found = _source(node.input[2], producer, arrays) if len(node.input) > 2 and node.input[2] else None
        return None if found is None else arrays[found[0]]
    users = consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    other = [t for t in users[0].input if t != node.output[0]]
    found = _source(other[0], producer, arrays) if len(other) == 1 else None
    return None if found is None or arrays[found[0]].ndim != 1 else arrays[found[0]]


def _zero_mask(codes: np.ndarray, dequantize: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Where the decoded weight is exactly zero: code == zero point (broadcast along the DQ axis)."""
    if dequantize is None:
        return codes == 0
    zero_point = arrays.get(dequantize.input[2]) if len(dequantize.input) > 2 else None
    if zero_point is None or zero_point.size == 1:
        return codes == (0 if zero_point is None else zero_point.reshape(()))
    shape = [1] * codes.ndim
    shape[_attribute(dequantize, "axis", 1) % codes.ndim] = -1
    return codes == zero_point.reshape(shape)


def _granularity(dequantize: Any, arrays: dict[str, np.ndarray]) -> str | None:
    """"channel" for one scale per slice, "tensor" for one scale, None for a float weight."""
    if dequantize is None:
        return None
    scale = arrays.get(dequantize.input[1])
    return "channel" if scale is not None and scale.size > 1 else "tensor"


def _torch_shape(node: Any, weight: np.ndarray) -> list[int]:
    """The weight's shape as the PyTorch layer holds it ((out, in) for 2-D Gemm/MatMul weights)."""
    transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not _attribute(node, "transB", 0))
    return list(weight.shape[::-1] if transposed and weight.ndim == 2 else weight.shape)


def _row(node: Any, source: Source, bias: np.ndarray | None, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """One per-layer row of a weighted node (the keys of ``measure.size.layer_stats``)."""
    weight = arrays[source[0]]
    stored = [weight] + ([bias] if bias is not None else [])
    zeros = int(np.count_nonzero(_zero_mask(weight, source[1], arrays)))
    return {
        "name": _layer_name(source[0]),
        "type": node.op_type,
        "shape": _torch_shape(node, weight),
        "params": sum(int(a.size) for a in stored),
        "nonzero_params": sum(int(np.count_nonzero(a)) for a in stored),
        "weight_sparsity": zeros / max(1, weight.size),
        "format": str(weight.dtype),
        "bits": weight.dtype.itemsize * 8,
        "granularity": _granularity(source[1], arrays),
        "group_size": None,
    }


def onnx_layer_rows(proto: Any) -> list[dict[str, Any]]:
    """One row per Conv/ConvTranspose/Gemm/MatMul node of ``proto`` whose weight is an initializer."""
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
