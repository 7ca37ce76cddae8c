"""ONNX forms of nncompress's packed weight layers (``quantize/layers.py``), for ``io.export_onnx``.

Each packed layer is swapped, in a copy of the model, for an :class:`ExportedLayer` that runs the
packed layer itself in PyTorch (so tracing sees the exact outputs) and, through a
``torch.autograd.Function`` symbolic, writes these ONNX nodes (TorchScript exporter):

- ``matmulnbits`` (Linear, 2/4/8-bit uniform codes): ``com.microsoft::MatMulNBits`` with B
  ``(N, n_blocks, block_size * bits / 8)`` uint8 (codes packed low bits first, as
  ``pack_bits`` already stores them), scales ``(N * n_blocks)`` float32 and zero points packed at
  ``bits`` per row (uint8) or float32 (HQQ's fractional zeros); symmetric codes omit them (the
  op's default zero point ``2^(bits-1)`` is ``to_unsigned``'s offset). ONNX Runtime (1.32, CPU)
  takes bits 2 (blocks <= 256), 4 and 8 (integer zero points only) and block sizes that are powers
  of two >= 16; a per-channel or per-group scale is repeated over the blocks inside it.
- ``qdq`` (uniform codes of 2-8 bits, integer zero points, binary signs): ``DequantizeLinear`` of an
  int8 (signed codes) or uint8 (unsigned codes) initializer, one scale per tensor, per channel, or
  per group (rows of the grouped view, then ``Reshape``); then ``MatMul`` (+ ``Add``) or ``Conv``.
  A Linear's codes are stored transposed (in, out), so no ``Transpose`` runs per call.
- ``codebook``: ``Gather(centroids, Cast(codes uint8 -> int32))``.
- ``fp16``: ``Cast`` of float16 weight and bias initializers.
- ``dense``: the decoded float32 weight (formats ONNX Runtime has no kernel for, e.g. 3-bit groups
  of 8, or 8-bit codes with fractional zero points).

ONNX Runtime folds ``Cast`` / ``Gather`` of initializers once at session start and keeps
``DequantizeLinear`` (it runs per call: weight-only QDQ saves file size, not time).

Example:
    >>> plan = plan_packed_layer(quantize_weight_module(nn.Linear(256, 8), QuantSpec(bits=4, symmetric=False,
    ...     granularity="group", group_size=64)))
    >>> plan.format, plan.label
    ('matmulnbits', 'MatMulNBits 4-bit, block 64')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.quantize.layers import PACKED_LAYERS, PackedWeightLayer
from nncompress.quantize.primitives import pack_bits, to_unsigned

NBITS_BITS = (2, 4, 8)  # MatMulNBits widths ONNX Runtime's CPU kernel runs
NBITS_MAX_BLOCK = {2: 256}  # widths with a block-size cap
FLOAT, INT32, INT64 = 1, 6, 7  # onnx.TensorProto data types used in Cast nodes
Emit = Callable[[Any, "ExportedLayer", Any, dict[str, Any]], Any]


@dataclass
class Plan:
    """How one packed layer is written: ``format`` (matmulnbits, qdq, codebook, fp16, dense), a
    human-readable ``label``, the initializers it needs (name -> tensor), the node emitter and
    its attributes (op attributes, Conv geometry)."""

    format: str
    label: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    emit: Emit | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


class _LayerFunction(torch.autograd.Function):
    """Runs the packed layer in PyTorch; its symbolic writes the layer's ONNX nodes."""

    @staticmethod
    def forward(ctx: Any, layer: ExportedLayer, x: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        return layer.source[0](x)

    @staticmethod
    def symbolic(g: Any, layer: ExportedLayer, x: Any, *values: Any) -> Any:
        out = layer.plan.emit(g, layer, x, dict(zip(layer.tensor_names, values)))
        out.setType(x.type())  # float32 like the input; spares the exporter's "unknown shape" notice
        return out


class ExportedLayer(nn.Module):
    """Stand-in for a packed layer while exporting: PyTorch outputs of the packed layer, ONNX nodes
    of ``plan``. The plan's tensors are buffers, so their initializers are named ``<layer>.<name>``."""

    def __init__(self, source: PackedWeightLayer, plan: Plan) -> None:
        super().__init__()
        self.source = [source]  # a list: the packed layer's own buffers must not become initializers
        for param in source.parameters():  # the tracer cannot embed tensors that require grad
            param.requires_grad_(False)
        self.plan = plan
        self.tensor_names = list(plan.tensors)
        for name, tensor in plan.tensors.items():
            self.register_buffer(name, tensor.detach().cpu().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LayerFunction.apply(self, x, *(getattr(self, n) for n in self.tensor_names))


# --- emitters ----------------------------------------------------------------------------------------


def _const(g: Any, values: list[int]) -> Any:
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _finish_linear(g: Any, y: Any, v: dict[str, Any]) -> Any:
    return g.op("Add", y, v["bias"]) if "bias" in v else y


def _emit_matmulnbits(g: Any, layer: ExportedLayer, x: Any, v: dict[str, Any]) -> Any:
    a = layer.plan.attrs
    inputs = [x, v["B"], v["scales"]] + ([v["zero_points"]] if "zero_points" in v else [])
    y = g.op(
        "com.microsoft::MatMulNBits", *inputs, K_i=a["K"], N_i=a["N"], bits_i=a["bits"], block_size_i=a["block_size"]
    )
    return _finish_linear(g, y, v)


def _weight(g: Any, layer: ExportedLayer, v: dict[str, Any]) -> Any:
    """The float weight: (in, out) for a Linear, the torch layout for a Conv2d."""
    kind, a = layer.plan.format, layer.plan.attrs
    if kind == "qdq":
        args = [v["codes"], v["scale"], v["zero_point"]]
        w = g.op("DequantizeLinear", *args, axis_i=a["axis"]) if "axis" in a else g.op("DequantizeLinear", *args)
        if "shape" in a:  # per-group rows -> the weight's shape (then (in, out) for a Linear)
            w = g.op("Reshape", w, _const(g, a["shape"]))
            if a.get("transpose"):
                w = g.op("Transpose", w, perm_i=[1, 0])
        return w
    if kind == "codebook":
        return g.op("Gather", v["centroids"], g.op("Cast", v["codes"], to_i=INT32), axis_i=0)
    if kind == "fp16":
        return g.op("Cast", v["weight16"], to_i=FLOAT)
    return v["weight"]


def _bias(g: Any, layer: ExportedLayer, v: dict[str, Any]) -> dict[str, Any]:
    if "bias16" in v:
        return {"bias": g.op("Cast", v["bias16"], to_i=FLOAT)}
    return {"bias": v["bias"]} if "bias" in v else {}


def _emit_weighted(g: Any, layer: ExportedLayer, x: Any, v: dict[str, Any]) -> Any:
    w, bias = _weight(g, layer, v), _bias(g, layer, v)
    source = layer.source[0]
    if source.op == "linear":
        return _finish_linear(g, g.op("MatMul", x, w), bias)
    a = layer.plan.attrs
    args = [x, w] + ([bias["bias"]] if bias else [])
    return g.op(
        "Conv",
        *args,
        kernel_shape_i=a["kernel_shape"],
        strides_i=a["strides"],
        pads_i=a["pads"],
        dilations_i=a["dilations"],
        group_i=a["group"],
    )


# --- planning ----------------------------------------------------------------------------------------


def _conv_attrs(layer: PackedWeightLayer) -> dict[str, Any]:
    """Conv attributes in ONNX form; string padding ("same"/"valid") made explicit (torch's "same"
    puts the odd extra pixel at the end, like ONNX SAME_UPPER)."""
    kernel = list(layer.weight_shape[2:])  # (kh, kw), or (k,) for a Conv1d
    dil = tuple(layer.dilation)
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            begin = end = (0,) * len(kernel)
        else:
            total = [d * (k - 1) for d, k in zip(dil, kernel)]
            begin = tuple(t // 2 for t in total)
            end = tuple(t - b for t, b in zip(total, begin))
    else:
        begin = end = tuple(layer.padding)
    return {
        "kernel_shape": kernel,
        "strides": list(layer.stride),
        "pads": [*begin, *end],
        "dilations": list(dil),
        "group": layer.groups,
    }


def _bias_tensors(layer: PackedWeightLayer) -> dict[str, torch.Tensor]:
    if layer.bias is None:
        return {}
    if layer.bias.dtype == torch.float16:
        return {"bias16": layer.bias.detach()}
    return {"bias": layer.bias.detach().float()}


def _pow2_blocks(length: int, whole_row: bool, bits: int) -> list[int]:
    """Block sizes MatMulNBits can use inside runs of ``length`` inputs sharing a scale: powers of
    two >= 16 dividing ``length``, or any (padded) when the whole row shares it."""
    cap = NBITS_MAX_BLOCK.get(bits, 1 << 16)
    sizes, b = [], 16
    while b <= min(cap, max(16, 1 << (length - 1).bit_length())):
        if whole_row or length % b == 0:
            sizes.append(b)
        b *= 2
    return sizes


def _nbits_block(layer: PackedWeightLayer) -> int | None:
    """The MatMulNBits block size with the fewest bytes, or None when the layer cannot use the op."""
    spec = layer.spec
    float_zero = layer.zero_point is not None and layer.zero_point.is_floating_point()
    if layer.op != "linear" or spec.bits not in NBITS_BITS or spec.axis != 0:
        return None
    if spec.bits == 8 and float_zero:  # ONNX Runtime's CPU kernel refuses 8-bit with float zeros
        return None
    k = layer.in_features
    run = spec.group_size if spec.granularity == "group" else k
    sizes = _pow2_blocks(run, run == k, spec.bits)
    if not sizes:
        return None
    zero_bytes = 0 if spec.symmetric else (4 if float_zero else spec.bits / 8)

    def cost(b: int) -> float:
        return -(-k // b) * (b * spec.bits / 8 + 4 + zero_bytes)

    return min(sizes, key=lambda b: (cost(b), -b))


def _per_block(values: torch.Tensor, layer: PackedWeightLayer, block: int, n_blocks: int) -> torch.Tensor:
    """(N, n_blocks) of per-tensor / per-channel / per-group ``values`` (scale or zero point)."""
    n, spec = layer.out_features, layer.spec
    v = values.reshape(-1)
    if spec.granularity == "tensor":
        return v.reshape(1, 1).expand(n, n_blocks)
    if spec.granularity == "channel":
        return v.reshape(n, 1).expand(n, n_blocks)
    groups = v.reshape(n, -1)
    index = torch.arange(n_blocks) * block // spec.group_size
    return groups[:, index]


def _pack_rows(codes: torch.Tensor, bits: int, width: int) -> torch.Tensor:
    """Pack each row of unsigned ``codes`` (N, w) at ``bits``, padded with 0 to ``width`` codes."""
    padded = torch.zeros(codes.shape[0], width, dtype=torch.uint8)
    padded[:, : codes.shape[1]] = codes
    return pack_bits(padded, bits).reshape(codes.shape[0], -1)


def _plan_matmulnbits(layer: PackedWeightLayer, block: int) -> Plan:
    spec, n, k = layer.spec, layer.out_features, layer.in_features
    n_blocks = -(-k // block)
    codes = layer.codes()
    unsigned = to_unsigned(codes, spec.bits) if spec.symmetric else codes.to(torch.uint8)
    packed = _pack_rows(unsigned.reshape(n, k), spec.bits, n_blocks * block)  # = .packed when block divides k
    tensors = {
        "B": packed.reshape(n, n_blocks, block * spec.bits // 8),
        "scales": _per_block(layer.scale.float(), layer, block, n_blocks).reshape(-1).contiguous(),
    }
    if not spec.symmetric:
        zeros = _per_block(layer.zero_points(), layer, block, n_blocks)
        if zeros.is_floating_point():
            tensors["zero_points"] = zeros.float().reshape(-1).contiguous()
        else:
            per_byte = 8 // spec.bits
            width = -(-n_blocks // per_byte) * per_byte
            tensors["zero_points"] = _pack_rows(zeros.to(torch.uint8), spec.bits, width).reshape(-1)
    tensors.update(_bias_tensors(layer))
    attrs = {"K": k, "N": n, "bits": spec.bits, "block_size": block}
    return Plan("matmulnbits", f"MatMulNBits {spec.bits}-bit, block {block}", tensors, _emit_matmulnbits, attrs)


def _qdq_tensors(layer: PackedWeightLayer) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """int8/uint8 codes with their scale and zero point for DequantizeLinear, or None (float zeros)."""
    spec = layer.spec
    zeros = layer.zero_points()
    if zeros.is_floating_point() or spec.bits > 8:
        return None
    dtype = torch.int8 if spec.symmetric else torch.uint8
    codes = layer.codes().to(dtype)
    scale, zero = layer.scale.float().reshape(-1), zeros.to(dtype).reshape(-1)
    linear = layer.op == "linear"
    attrs: dict[str, Any] = {}
    if spec.granularity == "tensor":
        scale, zero = scale.reshape(()), zero.reshape(())
        codes = codes.t() if linear else codes
    elif spec.granularity == "channel":
        attrs["axis"] = (1 - spec.axis) if linear else spec.axis
        codes = codes.t() if linear else codes
    elif spec.axis == 0:  # per group: one scale per row of the (C * groups, group_size) view
        codes = codes.reshape(-1, spec.group_size)
        attrs.update(axis=0, shape=list(layer.weight_shape), transpose=linear)
    else:
        return None
    return {"codes": codes.contiguous(), "scale": scale, "zero_point": zero}, attrs


def _plan_dense(layer: PackedWeightLayer, why: str) -> Plan:
    weight = layer.dequantized_weight().detach().float()
    weight = weight.t() if layer.op == "linear" else weight
    return Plan("dense", f"dense fp32 ({why})", {"weight": weight.contiguous(), **_bias_tensors(layer)}, _emit_weighted)


def _plan_uniform(layer: PackedWeightLayer) -> Plan:
    spec = layer.spec
    block = _nbits_block(layer)
    # 8-bit per tensor / channel stays QDQ (ONNX Runtime's standard int8 weight form); MatMulNBits otherwise
    if block is not None and not (spec.bits == 8 and spec.granularity != "group"):
        return _plan_matmulnbits(layer, block)
    qdq = _qdq_tensors(layer)
    if qdq is None:
        return _plan_dense(layer, f"{spec.bits}-bit codes with fractional zero points or axis {spec.axis} groups")
    tensors, attrs = qdq
    container = "int8" if spec.symmetric else "uint8"
    where = spec.granularity if spec.granularity != "group" else f"group {spec.group_size}"
    return Plan(
        "qdq",
        f"QDQ {spec.bits}-bit codes in {container}, per {where}",
        {**tensors, **_bias_tensors(layer)},
        _emit_weighted,
        attrs,
    )


def _plan_binary(layer: PackedWeightLayer, linear: bool) -> Plan:
    signs = layer.signs().to(torch.int8)
    alpha = layer.alpha.float().reshape(-1)
    tensors = {
        "codes": (signs.t() if linear else signs).contiguous(),
        "scale": alpha,
        "zero_point": torch.zeros_like(alpha, dtype=torch.int8),
    }
    return Plan(
        "qdq",
        "QDQ binary (+-1 in int8, scale per channel)",
        {**tensors, **_bias_tensors(layer)},
        _emit_weighted,
        {"axis": 1 if linear else 0},
    )


def _plan_codebook(layer: PackedWeightLayer, linear: bool) -> Plan:
    codes = layer.codes()
    tensors = {"codes": (codes.t() if linear else codes).contiguous(), "centroids": layer.centroids.float()}
    return Plan(
        "codebook",
        f"codebook {layer.bits}-bit (Gather of {layer.centroids.numel()} centroids)",
        {**tensors, **_bias_tensors(layer)},
        _emit_weighted,
    )


def _plan_half(layer: PackedWeightLayer, linear: bool) -> Plan:
    w = layer.weight16.detach()
    return Plan(
        "fp16",
        "fp16 (Cast)",
        {"weight16": (w.t() if linear else w).contiguous(), **_bias_tensors(layer)},
        _emit_weighted,
    )


# The ONNX form of each code format (``PackedWeightLayer.code_format``): a new packed format adds one entry.
PLANNERS: dict[str, Callable[[PackedWeightLayer, bool], Plan]] = {
    "uniform": lambda layer, linear: _plan_uniform(layer),
    "binary": _plan_binary,
    "codebook": _plan_codebook,
    "half": _plan_half,
}


def plan_packed_layer(layer: PackedWeightLayer) -> Plan:
    """The ONNX form of one packed layer (see the module docstring for the choices)."""
    if type(layer) not in PACKED_LAYERS:
        accepted = ", ".join(c.__name__ for c in PACKED_LAYERS)
        raise ValueError(f"no ONNX form for {type(layer).__name__}; accepted: {accepted}")
    linear = layer.op == "linear"
    planner = PLANNERS.get(layer.code_format)
    plan = planner(layer, linear) if planner else _plan_dense(layer, type(layer).__name__)
    if not linear:
        plan.attrs = {**_conv_attrs(layer), **plan.attrs}
    return plan
