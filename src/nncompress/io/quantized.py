"""Artifact support for torch.ao quantized modules (static/dynamic int8 Conv and Linear).

Their int8 weights live in packed-parameter objects, not in ``_parameters``/``_buffers``, so the
plain artifact code would pickle them whole into the skeleton. Here they are taken out as
ordinary entries (``<module>.weight`` as int8 values + per-channel scales/zero points,
``<module>.bias`` as float) that go to safetensors, while the skeleton keeps a copy of each such
module holding a one-element placeholder weight; loading repacks the real weights.

Example:
    >>> packed = packed_tensors(qmodel)  # doctest: +SKIP
    >>> memo = skeleton_memo(qmodel)  # placeholders for copy.deepcopy  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nncompress.io.encodings import Encoding, Header, Parts, register_encoding

PACKED = "packed"  # the manifest "kind" of a tensor stored out of a packed-parameter object


def _is_packed_module(module: nn.Module) -> bool:
    """A torch.ao quantized module whose weight sits in packed params (int8 weight only)."""
    origin = type(module).__module__  # torch.ao.nn.quantized(.dynamic), torch.ao.nn.intrinsic.quantized
    if not (origin.startswith("torch.ao.nn.") and ".quantized" in origin):
        return False
    if not (hasattr(module, "_weight_bias") and hasattr(module, "set_weight_bias")) or is_dynamic_int8_rnn(module):
        return False  # LSTM/GRU: dicts of per-gate weights, see packed_rnn_modules
    try:
        weight, _ = module._weight_bias()
    except (RuntimeError, AttributeError, TypeError):
        return False
    return isinstance(weight, torch.Tensor) and weight.dtype == torch.qint8


def packed_modules(model: nn.Module) -> dict[str, nn.Module]:
    """name -> outermost module holding int8 packed weights (inner ``_packed_params`` skipped)."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in found):
            continue
        if _is_packed_module(module):
            found[name] = module
    return found


def packed_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """``<module>.weight`` (a quantized tensor) and ``<module>.bias`` (float, when present)."""
    out: dict[str, torch.Tensor] = {}
    for name, module in packed_modules(model).items():
        prefix = f"{name}." if name else ""
        weight, bias = module._weight_bias()
        out[prefix + "weight"] = weight
        if bias is not None:
            out[prefix + "bias"] = bias.detach()
    out.update(rnn_packed_tensors(model))
    return out


def _placeholder_weight(module: nn.Module, shape_dims: int, per_channel: bool) -> torch.Tensor:
    """A tiny int8 weight the module can pack: one output channel per group, 1-wide kernel."""
    groups = int(getattr(module, "groups", 1))
    shape = (groups,) + (1,) * (shape_dims - 1)
    if per_channel:
        scales, zero_points = torch.ones(groups, dtype=torch.double), torch.zeros(groups, dtype=torch.long)
        return torch.quantize_per_channel(torch.zeros(shape), scales, zero_points, 0, torch.qint8)
    return torch.quantize_per_tensor(torch.zeros(shape), 1.0, 0, torch.qint8)


def _rebuild_packed(cls: type, state: dict[str, Any], dims: int, per_channel: bool) -> nn.Module:
    """Unpickle a packed module without its weights: its attributes plus a placeholder weight."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or not isinstance(state, dict):
        raise TypeError(f"a packed module must be an nn.Module class with a dict of attributes, got {cls!r}")
    module = cls.__new__(cls)
    module.__dict__.update(state)
    if state.get("_modules", {}).get("_packed_params", False) is None:  # Linear: a fresh packed child
        from torch.ao.nn.quantized.modules.linear import LinearPackedParams

        module._modules["_packed_params"] = LinearPackedParams(dtype=torch.qint8)
    module.set_weight_bias(_placeholder_weight(module, dims, per_channel), None)
    return module


class _WeightlessPacked(nn.Module):
    """Pickles as a packed module minus its int8 weights (which the artifact stores apart).

    An ``nn.Module`` only so that containers (``GraphModule`` copies) accept it as a child.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        weight, _ = module._weight_bias()
        state = {k: v for k, v in module.__dict__.items() if k != "_packed_params"}
        if "_packed_params" in module._modules:  # Linear: packed params are a child module
            state["_modules"] = {k: v for k, v in module._modules.items() if k != "_packed_params"}
            state["_modules"]["_packed_params"] = None
        per_channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        self._args = (type(module), state, weight.dim(), per_channel)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return _rebuild_packed, self._args

    def __deepcopy__(self, memo: dict[int, Any]) -> _WeightlessPacked:
        return self


def skeleton_memo(model: nn.Module) -> dict[int, Any]:
    """``copy.deepcopy`` memo entries that swap each packed module for a weightless stand-in."""
    memo: dict[int, Any] = {id(module): _WeightlessPacked(module) for module in packed_modules(model).values()}
    memo.update({id(module): _weightless_rnn(module) for module in packed_rnn_modules(model).values()})
    return memo


def restore_packed(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Repack ``<module>.weight``/``<module>.bias`` entries into the skeleton's placeholders."""
    tensors = restore_rnns(model, tensors)  # the int8 LSTM/GRU entries; the rest are Linear/Conv
    modules = {f"{name}.weight" if name else "weight": name for name in packed_modules(model)}
    for key, weight in tensors.items():
        if not key.endswith("weight") or key not in modules:
            continue
        name = modules[key]
        bias = tensors.get(key[: -len("weight")] + "bias")
        target = model.get_submodule(name) if name else model
        target.set_weight_bias(weight, bias)
    unknown = set(tensors) - set(modules) - {k[: -len("weight")] + "bias" for k in modules}
    if unknown:
        raise ValueError(f"packed tensor(s) {', '.join(sorted(unknown))} match no quantized module")


# --- torch.ao dynamic int8 LSTM / GRU: per-gate int8 matrices in cell-params objects ------------


def is_dynamic_int8_rnn(module: nn.Module) -> bool:
    """A torch.ao dynamic quantized LSTM/GRU holding int8 (not float16) weights."""
    from torch.ao.nn.quantized.dynamic import GRU, LSTM

    return isinstance(module, (LSTM, GRU)) and module.dtype == torch.qint8


def packed_rnn_modules(model: nn.Module) -> dict[str, nn.Module]:
    """name -> torch.ao dynamic int8 ``LSTM``/``GRU``."""
    return {name: m for name, m in model.named_modules() if is_dynamic_int8_rnn(m)}


def rnn_packed_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """``<rnn>.weight_ih_l0`` ... (int8 quantized tensors) and ``<rnn>.bias_ih_l0`` ... (float) of
    every dynamic int8 LSTM/GRU: what its cell-params objects hold, as ordinary artifact entries."""
    out: dict[str, torch.Tensor] = {}
    for name, module in packed_rnn_modules(model).items():
        prefix = f"{name}." if name else ""
        found = module._weight_bias()
        out.update({prefix + k: w for k, w in found["weight"].items()})
        out.update({prefix + k: b.detach() for k, b in found["bias"].items() if b is not None})
    return out


def _weightless_rnn(module: nn.Module) -> nn.Module:
    """A copy of a dynamic LSTM/GRU sharing its settings, with no cell params (they are stored apart)."""
    copy = type(module).__new__(type(module))
    copy.__dict__.update(module.__dict__)
    copy._parameters, copy._buffers = dict(module._parameters), dict(module._buffers)
    copy._modules = {**module._modules, "_all_weight_values": nn.ModuleList()}
    return copy


def _rnn_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every weight and bias a dynamic LSTM/GRU's ``set_weight_bias`` takes."""
    gates = {"LSTM": 4, "GRU": 3}[module.mode]
    hidden, directions = module.hidden_size, 2 if module.bidirectional else 1
    shapes = {}
    for layer in range(module.num_layers):
        inputs = module.input_size if layer == 0 else hidden * directions
        for suffix in ("", "_reverse")[:directions]:
            shapes[f"weight_ih_l{layer}{suffix}"] = (gates * hidden, inputs)
            shapes[f"weight_hh_l{layer}{suffix}"] = (gates * hidden, hidden)
            shapes[f"bias_ih_l{layer}{suffix}"] = shapes[f"bias_hh_l{layer}{suffix}"] = (gates * hidden,)
    return shapes


def restore_rnns(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Repack each dynamic LSTM/GRU's stored weights (ValueError when one is missing or misshapen);
    returns the entries left for the other packed modules."""
    left = dict(tensors)
    for name, module in packed_rnn_modules(model).items():
        prefix = f"{name}." if name else ""
        found = {}
        for key, shape in _rnn_shapes(module).items():
            t = left.pop(prefix + key, None)
            if t is None:
                raise ValueError(f"int8 {module.mode} {name!r}: {prefix + key} is not stored")
            if tuple(t.shape) != shape or (key.startswith("weight") and t.dtype != torch.qint8):
                raise ValueError(f"{prefix + key} is {t.dtype} {tuple(t.shape)}; the {module.mode} needs {shape}")
            found[key] = t
        module.set_weight_bias(found)
    return left


# --- the encoding of a quantized tensor: int8 values + scales + zero points -------------------


def _encode_quantized(t: torch.Tensor) -> tuple[Parts, Header] | None:
    if not t.is_quantized:
        return None
    dtype = str(t.dtype).removeprefix("torch.")
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales, zero_points = t.q_per_channel_scales(), t.q_per_channel_zero_points()
        header = {"qdtype": dtype, "axis": int(t.q_per_channel_axis())}
        header.update(scales_dtype=str(scales.dtype), zero_points_dtype=str(zero_points.dtype))
        # fbgemm's scales are float32 values held as float64, zero points small: store them narrow
        if torch.equal(scales.float().to(scales.dtype), scales):
            scales = scales.float()
        if zero_points.numel() and int(zero_points.min()) >= -128 and int(zero_points.max()) <= 127:
            zero_points = zero_points.to(torch.int8)
        parts = {"values": t.int_repr().contiguous(), "scales": scales.contiguous(), "zero_points": zero_points}
        return parts, header
    if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        header = {"qdtype": dtype, "scale": float(t.q_scale()), "zero_point": int(t.q_zero_point())}
        return {"values": t.int_repr().contiguous()}, header
    raise ValueError(f"quantized tensor with qscheme {t.qscheme()} cannot be stored (per-tensor/channel only)")


_QDTYPES = {"qint8": torch.qint8, "quint8": torch.quint8, "qint32": torch.qint32}
_INT_REPR = {"qint8": torch.int8, "quint8": torch.uint8, "qint32": torch.int32}
_SCALE_DTYPES = {"torch.float64": torch.float64, "torch.float32": torch.float32}
_ZERO_POINT_DTYPES = {f"torch.{n}": getattr(torch, n) for n in ("int64", "int32", "int16", "int8", "uint8")}


def _check_quantized(parts: Parts, header: Header) -> None:
    """Parts, dtypes and sizes of a quantized tensor against its header, before anything is built."""
    from nncompress.io.encodings import numel_of

    qdtype = header.get("qdtype")
    if qdtype not in _QDTYPES:
        raise ValueError(f"unknown quantized dtype {qdtype!r}; known: {', '.join(_QDTYPES)}")
    shape = header["shape"]
    per_channel = "axis" in header
    if set(parts) != ({"values", "scales", "zero_points"} if per_channel else {"values"}):
        raise ValueError(f"unexpected parts {sorted(parts)} for a quantized tensor")
    values = parts["values"]
    if values.dtype != _INT_REPR[qdtype] or values.numel() != numel_of(shape):
        raise ValueError(
            f"quantized values must be {numel_of(shape)} {_INT_REPR[qdtype]}, got {values.numel()} {values.dtype}"
        )
    if not per_channel:
        scale, zero_point = header.get("scale"), header.get("zero_point")
        if not isinstance(scale, float) or not math.isfinite(scale) or scale <= 0 or type(zero_point) is not int:
            raise ValueError(
                f"per-tensor scale must be a positive float and zero point an int, got {scale!r}, {zero_point!r}"
            )
        return
    axis = header["axis"]
    if type(axis) is not int or not 0 <= axis < len(shape):
        raise ValueError(f"quantization axis {axis!r} is not a dimension of shape {shape}")
    if header.get("scales_dtype") not in _SCALE_DTYPES or header.get("zero_points_dtype") not in _ZERO_POINT_DTYPES:
        raise ValueError(
            f"scales must be float32/float64 and zero points an integer type, got "
            f"{header.get('scales_dtype')!r}, {header.get('zero_points_dtype')!r}"
        )
    scales, zero_points = parts["scales"], parts["zero_points"]
    if not scales.is_floating_point() or zero_points.is_floating_point():
        raise ValueError("stored scales must be floats and zero points integers")
    if scales.numel() != shape[axis] or zero_points.numel() != shape[axis]:
        raise ValueError(f"{scales.numel()} scales / {zero_points.numel()} zero points for {shape[axis]} channels")


def _decode_quantized(parts: Parts, header: Header) -> torch.Tensor:
    qdtype = header["qdtype"]
    if qdtype not in _QDTYPES:
        raise ValueError(f"unknown quantized dtype {qdtype!r}; known: {', '.join(_QDTYPES)}")
    values = parts["values"].reshape(header["shape"])
    if "axis" in header:
        scales = parts["scales"].to(_SCALE_DTYPES[header["scales_dtype"]])
        zero_points = parts["zero_points"].to(_ZERO_POINT_DTYPES[header["zero_points_dtype"]])
        return torch._make_per_channel_quantized_tensor(values, scales, zero_points, int(header["axis"]))
    return torch._make_per_tensor_quantized_tensor(values, float(header["scale"]), int(header["zero_point"]))


QUANTIZED = register_encoding(
    Encoding("quantized-affine", _encode_quantized, _decode_quantized, check=_check_quantized)
)


def encode_quantized(t: torch.Tensor) -> tuple[str, Parts, Header]:
    """``(encoding name, parts, header)`` of a quantized tensor (what ``encode_smallest`` gives)."""
    out = _encode_quantized(t)
    if out is None:
        raise ValueError(f"encode_quantized() takes a quantized tensor, got dtype {t.dtype}")
    return QUANTIZED.name, out[0], out[1]


is_torch_ao_packed = _is_packed_module  # the public name (measure/size.py uses it)
