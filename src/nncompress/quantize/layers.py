"""Inference modules whose weights are stored packed: uniform low-bit codes, k-means codebooks,
binary signs, or float16. They are what the weight-only quantization steps leave in a model.

Every module keeps its weight only as persistent buffers (``packed`` uint8 bit streams plus the
small tensors needed to decode them), so the artifact (which saves every persistent buffer and
parameter) really is small: a 4-bit layer costs ``numel / 2`` bytes plus its scales. ``forward``
decodes the weight once into a float32 cache (a plain attribute, never saved or pickled; rebuilt
whenever a buffer is replaced or modified) and runs ``F.linear`` / ``F.conv1d`` / ``F.conv2d``.
``layer.weight`` is that decoded float32 weight, read-only and computed on access (not a
parameter, never saved), and ``layer.bias`` the source layer's bias, so model code that reads a
layer's ``weight`` (its dtype, shape or values) still runs after quantization.

Packed Linears first offer their forward to ``nncompress.runtime``: where a kernel runs the format
on this CPU (4-bit and 8-bit integer kernels with bfloat16 activations), it runs from weights it
prepared once from these buffers; otherwise (convolutions, fp16 storage, codebooks off any grid,
kernels switched off with ``NNCOMPRESS_KERNELS=reference``) the float32 path above runs.

Formats (``describe()["format"]``):

- ``int-symmetric``: codes in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` offset to unsigned and packed,
  zero point 0 (not stored);
- ``uint-affine``: codes in ``[0, 2^b - 1]`` packed, zero points packed at the same width (or,
  given ``zero_dtype``, fractional zero points stored as floats: HQQ's optimized zeros);
- ``codebook``: cluster indices packed at ``bits`` plus ``2^bits`` centroids (Han et al. 2016);
- ``binary``: one sign bit per weight plus one scale per output channel (XNOR-Net);
- ``float16``: the weight and bias as fp16.

Example:
    >>> layer = quantize_weight_module(nn.Linear(64, 32), QuantSpec(bits=4, granularity="channel"))
    >>> layer.describe()
    {'format': 'int-symmetric', 'bits': 4, 'granularity': 'channel', 'group_size': None}
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.quantize.primitives import (
    QuantSpec,
    binarize,
    compute_qparams,
    dequantize,
    pack_bits,
    quantize,
    quantize_float_zero,
    to_float16,
    to_signed,
    to_unsigned,
    unpack_bits,
)
from nncompress.runtime import run_linear

WeightLayer = nn.Linear | nn.Conv1d | nn.Conv2d
SOURCE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)  # the float layers a packed layer can replace
FP16_TINY = torch.finfo(torch.float16).tiny  # smallest normal fp16: below it fp16 loses relative precision
FP16_MAX = torch.finfo(torch.float16).max


def _check_source(module: nn.Module) -> None:
    if type(module) not in SOURCE_TYPES:
        raise ValueError(f"expected an nn.Linear, nn.Conv1d or nn.Conv2d, got {type(module).__name__}")
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode != "zeros":
        raise ValueError(f"only padding_mode='zeros' convolutions are supported, got {module.padding_mode!r}")


def _packed_class(module: nn.Module, linear_cls: type[PackedWeightLayer], conv_cls: type[PackedWeightLayer]) -> type:
    """``linear_cls`` for an ``nn.Linear``, ``conv_cls`` for an ``nn.Conv2d``, its 1-D twin for an
    ``nn.Conv1d`` (ValueError for anything else)."""
    _check_source(module)
    if isinstance(module, nn.Conv1d):
        return CONV1D_TWINS[conv_cls]
    return linear_cls if isinstance(module, nn.Linear) else conv_cls


def _version_key(t: torch.Tensor | None) -> tuple[int, int, str] | None:
    """Identity + in-place version of a tensor; None for tensors without a version counter."""
    if t is None:
        return (0, 0, "")
    try:
        return (id(t), t._version, str(t.device))
    except RuntimeError:  # inference tensors track no version: never cache them
        return None


class PackedWeightLayer(nn.Module):
    """Base of the packed layers: geometry and bias of the source layer, the decoded-weight cache.

    Subclasses store their codes as persistent buffers and implement ``decode_weight``; the
    geometry mixins (``_LinearOp`` / ``_ConvOp``) implement ``_run``.
    """

    bits: int
    weight_shape: tuple[int, ...]
    # What the layer is, for io (artifact, ONNX) to dispatch on without importing the private classes:
    op: ClassVar[str] = ""  # "linear" or "conv" (the geometry mixin)
    code_format: ClassVar[str] = ""  # "uniform", "codebook", "binary" or "half" (the codes mixin)

    def __init__(self, source: WeightLayer, bits: int, *, bias_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        _check_source(source)
        self.bits = bits
        self.weight_shape = tuple(source.weight.shape)
        self._set_geometry(source)
        bias = source.bias
        if bias is None:
            self.bias = None
        elif bias_dtype not in (torch.float32, torch.float16):
            raise ValueError(f"bias_dtype must be torch.float32 or torch.float16, got {bias_dtype}")
        elif bias_dtype == torch.float32:
            self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=bias.requires_grad)
        else:  # reduced-precision storage: a buffer, upcast in forward
            self.register_buffer("bias", bias.detach().to(bias_dtype).clone())
        self._cache: tuple[Any, torch.Tensor] | None = None

    # --- to be provided by formats / geometry -----------------------------------------------
    def _set_geometry(self, source: WeightLayer) -> None:
        raise NotImplementedError

    def _run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _code_tensors(self) -> tuple[torch.Tensor | None, ...]:
        """The buffers the weight is decoded from (the cache is keyed on their versions)."""
        raise NotImplementedError

    def decode_weight(self) -> torch.Tensor:
        """The float32 weight, shaped like the source layer's, rebuilt from the stored codes."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """``{"format", "bits", "granularity", "group_size"}`` for per-layer reports."""
        raise NotImplementedError

    # --- shared behaviour -------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The decoded float32 weight, shaped like the source layer's: computed on access (cached
        with the forward pass's copy), not a parameter, not saved. Read it; do not modify it."""
        return self.dequantized_weight()

    def dequantized_weight(self) -> torch.Tensor:
        """The decoded weight, cached until a code buffer is replaced or modified in place."""
        keys = tuple(_version_key(t) for t in self._code_tensors())
        cache = getattr(self, "_cache", None)
        if cache is not None and None not in keys and cache[0] == keys:
            return cache[1]
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode
            weight = self.decode_weight()
        self._cache = (keys, weight) if None not in keys else None
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        if self.op == "linear":  # the fastest kernel that runs this format here (nncompress.runtime)
            out = run_linear(self, x, bias)
            if out is not None:
                return out
        weight = self.dequantized_weight()
        return self._run(x, weight if weight.dtype == x.dtype else weight.to(x.dtype), bias)

    def stored_weight_counts(self) -> tuple[int, int]:
        """(elements, non-zeros) of the weight and bias this layer stands for (read by measure/size.py)."""
        weight = self.dequantized_weight()
        total, nonzero = weight.numel(), int(weight.count_nonzero())
        if self.bias is not None:
            total, nonzero = total + self.bias.numel(), nonzero + int(self.bias.count_nonzero())
        return total, nonzero

    def _apply(self, fn: Any, recurse: bool = True) -> PackedWeightLayer:
        self._cache = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # never pickled into artifact skeletons or deep copies
        return state

    def extra_repr(self) -> str:
        info = self.describe()
        text = f"{self._geometry_repr()}, format={info['format']}, bits={info['bits']}"
        if info["granularity"] != "tensor":
            text += f", granularity={info['granularity']}"
        if info["group_size"]:
            text += f", group_size={info['group_size']}"
        return text + f", bias={self.bias is not None}"

    def _geometry_repr(self) -> str:
        raise NotImplementedError

    def _weight_numel(self) -> int:
        """Number of weights of the source layer."""
        return math.prod(self.weight_shape)


class _LinearOp(PackedWeightLayer):
    op = "linear"
    in_features: int
    out_features: int

    def _set_geometry(self, source: WeightLayer) -> None:
        self.in_features, self.out_features = source.in_features, source.out_features

    def _run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def _geometry_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _ConvOp(PackedWeightLayer):
    op = "conv"
    in_channels: int
    out_channels: int

    def _set_geometry(self, source: WeightLayer) -> None:
        assert isinstance(source, (nn.Conv1d, nn.Conv2d))
        self.in_channels, self.out_channels = source.in_channels, source.out_channels
        self.kernel_size, self.stride, self.padding = source.kernel_size, source.stride, source.padding
        self.dilation, self.groups = source.dilation, source.groups

    def _run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        conv = F.conv1d if len(self.weight_shape) == 3 else F.conv2d
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _geometry_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in (0, (0,), (0, 0)):
            text += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text


# --- uniform integer codes ----------------------------------------------------------------------


def _check_uniform_bits(bits: object) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"packed uniform quantization takes bits in [2, 8], got {bits!r} (1 bit: binary_module)")


def _scale_storage(scale: torch.Tensor, scale_dtype: torch.dtype | None) -> torch.Tensor:
    """Scales as float16 when every one is a normal fp16 number (relative error <= 2^-11, far below
    the quantization step), else float32; ``scale_dtype`` forces one."""
    scale = scale.detach().float()
    if scale_dtype is None:
        a = scale.abs()
        fits = bool(torch.isfinite(scale).all()) and bool((a >= FP16_TINY).all()) and bool((a <= FP16_MAX).all())
        scale_dtype = torch.float16 if fits else torch.float32
    if scale_dtype not in (torch.float16, torch.float32):
        raise ValueError(f"scale_dtype must be torch.float16, torch.float32 or None (auto), got {scale_dtype}")
    return scale.to(scale_dtype)


class _UniformCodes(PackedWeightLayer):
    """Weight = dequantize(codes, scale, zero_point, spec); codes packed at ``spec.bits``."""

    code_format = "uniform"
    spec: QuantSpec

    def __init__(
        self,
        source: WeightLayer,
        spec: QuantSpec,
        *,
        scale: torch.Tensor | None = None,
        zero_point: torch.Tensor | None = None,
        method: str = "minmax",
        scale_dtype: torch.dtype | None = None,
        bias_dtype: torch.dtype = torch.float32,
        zero_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(source, spec.bits, bias_dtype=bias_dtype)
        self._store_codes(source.weight, spec, scale, zero_point, method, scale_dtype, zero_dtype)

    def _store_codes(
        self,
        weight: torch.Tensor,
        spec: QuantSpec,
        scale: torch.Tensor | None,
        zero_point: torch.Tensor | None,
        method: str,
        scale_dtype: torch.dtype | None,
        zero_dtype: torch.dtype | None = None,
    ) -> None:
        _check_uniform_bits(spec.bits)
        weight = weight.detach().float()
        given = scale is not None
        if scale is None:
            if zero_point is not None:
                raise ValueError("zero_point was given without scale; give both or neither")
            scale, zero_point = compute_qparams(weight, spec, method)
        elif zero_point is None:
            if not spec.symmetric:
                raise ValueError("affine (symmetric=False) quantization with a given scale needs its zero_point")
            zero_point = torch.zeros_like(scale, dtype=torch.int32)
        expected = compute_qparams(weight, spec, "minmax")[0].shape if given else scale.shape
        if given and scale.numel() != expected.numel():
            raise ValueError(
                f"scale has {scale.numel()} values but {spec.granularity!r} quantization of a weight of shape "
                f"{tuple(weight.shape)} needs {expected.numel()} (shape {tuple(expected)})"
            )
        scale = _scale_storage(scale.reshape(expected), torch.float32 if given and scale_dtype is None else scale_dtype)
        if zero_dtype is not None:
            codes, zero_buffer = _float_zero_codes(weight, scale.float(), zero_point, spec, zero_dtype, expected)
        else:
            zero_point = zero_point.detach().round().reshape(expected).to(torch.int32)
            if spec.symmetric and bool(zero_point.any()):
                raise ValueError("symmetric quantization needs zero points of 0")
            if bool((zero_point < spec.qmin).any()) or bool((zero_point > spec.qmax).any()):
                raise ValueError(f"zero points must lie in [{spec.qmin}, {spec.qmax}] for {spec.bits}-bit affine codes")
            codes = quantize(weight, scale.float(), zero_point, spec)  # with the stored (maybe fp16) scale
            zero_buffer = None if spec.symmetric else pack_bits(zero_point, spec.bits)
        unsigned = to_unsigned(codes, spec.bits) if spec.symmetric else codes
        self.spec = spec
        self.qparam_shape = tuple(expected)
        self.register_buffer("packed", pack_bits(unsigned, spec.bits))
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_buffer)

    def _code_tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.packed, self.scale, self.zero_point

    def codes(self) -> torch.Tensor:
        """Integer codes shaped like the weight (signed for symmetric, unsigned for affine)."""
        codes = unpack_bits(self.packed, self.spec.bits, self._weight_numel())
        codes = to_signed(codes, self.spec.bits) if self.spec.symmetric else codes
        return codes.reshape(self.weight_shape)

    def zero_points(self) -> torch.Tensor:
        """Zero points (int32; float32 when stored fractional) shaped like ``scale``."""
        if self.zero_point is None:
            return torch.zeros(self.qparam_shape, dtype=torch.int32)
        if self.zero_point.is_floating_point():
            return self.zero_point.float().cpu().reshape(self.qparam_shape)
        n = self.scale.numel()
        return unpack_bits(self.zero_point, self.spec.bits, n).to(torch.int32).reshape(self.qparam_shape)

    def decode_weight(self) -> torch.Tensor:
        device = self.packed.device
        w = dequantize(self.codes(), self.scale.float().cpu(), self.zero_points(), self.spec)
        return w.to(device)

    def describe(self) -> dict[str, Any]:
        return {
            "format": "int-symmetric" if self.spec.symmetric else "uint-affine",
            "bits": self.spec.bits,
            "granularity": self.spec.granularity,
            "group_size": self.spec.group_size,
        }


def _float_zero_codes(
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    spec: QuantSpec,
    zero_dtype: torch.dtype,
    shape: tuple[int, ...] | torch.Size,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``clamp(round(w / scale + zero))`` and the stored zeros, for fractional zero points."""
    if zero_dtype not in (torch.float16, torch.float32):
        raise ValueError(f"zero_dtype must be torch.float16, torch.float32 or None (integer), got {zero_dtype}")
    if spec.symmetric or spec.axis != 0 or zero_point is None:
        raise ValueError("fractional zero points (zero_dtype) need symmetric=False, axis 0 and a given zero_point")
    zero = zero_point.detach().reshape(shape).to(zero_dtype)
    if not bool(torch.isfinite(zero).all()):
        raise ValueError("fractional zero points must be finite (and fit zero_dtype)")
    return quantize_float_zero(weight, scale, zero, spec), zero  # groups may be ragged (primitives handles them)


class QuantizedLinear(_UniformCodes, _LinearOp):
    """``nn.Linear`` with a packed ``bits``-bit weight (weight-only: activations stay float).

    Example:
        >>> q = QuantizedLinear(nn.Linear(16, 8), QuantSpec(bits=4, granularity="channel"))
        >>> q.packed.numel(), q(torch.randn(2, 16)).shape
        (64, torch.Size([2, 8]))
    """


class QuantizedConv2d(_UniformCodes, _ConvOp):
    """``nn.Conv2d`` with a packed ``bits``-bit weight; stride, padding, dilation, groups kept.

    Example:
        >>> q = QuantizedConv2d(nn.Conv2d(3, 8, 3, padding=1), QuantSpec(bits=4, granularity="channel"))
        >>> q(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """


def quantize_weight_module(
    module: WeightLayer,
    spec: QuantSpec,
    *,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
    method: str = "minmax",
    scale_dtype: torch.dtype | None = None,
    bias_dtype: torch.dtype = torch.float32,
    zero_dtype: torch.dtype | None = None,
) -> nn.Module:
    """A ``QuantizedLinear`` / ``QuantizedConv2d`` holding ``module``'s weight packed per ``spec``.

    Args:
        module: the float ``nn.Linear`` or ``nn.Conv2d`` (left untouched).
        spec: bits (2..8), symmetric or affine, granularity (axis 0 = output channels).
        scale, zero_point: quantization parameters learned elsewhere (QAT, LSQ), shaped as
            ``compute_qparams`` returns them (any shape with that many values); by default
            computed with ``compute_qparams(weight, spec, method)``.
        method: ``"minmax"`` or ``"mse"`` when computing the parameters.
        scale_dtype: storage of the scales. None (auto): float16 for computed scales when every
            one is a normal fp16 number, float32 for given scales (they stay exactly as trained).
        bias_dtype: float32 (a trainable ``nn.Parameter``) or float16 (a buffer, upcast in forward).
        zero_dtype: None: integer zero points, packed at ``spec.bits``. torch.float16 / float32:
            the given ``zero_point`` may be fractional (HQQ) and is stored in that dtype; codes are
            ``round(w / scale + zero)``.

    Example:
        >>> q = quantize_weight_module(nn.Conv2d(4, 8, 3), QuantSpec(bits=3, symmetric=False, granularity="channel"))
        >>> q.describe()["format"]
        'uint-affine'
    """
    cls = _packed_class(module, QuantizedLinear, QuantizedConv2d)
    return cls(
        module,
        spec,
        scale=scale,
        zero_point=zero_point,
        method=method,
        scale_dtype=scale_dtype,
        bias_dtype=bias_dtype,
        zero_dtype=zero_dtype,
    )


# --- codebooks ------------------------------------------------------------------------------------


class _CodebookCodes(PackedWeightLayer):
    """Weight = centroids[codes]; codes packed at ``bits``."""

    code_format = "codebook"

    def __init__(
        self,
        source: WeightLayer,
        centroids: torch.Tensor,
        codes: torch.Tensor,
        bits: int,
        *,
        centroid_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(source, bits)
        self._store_codebook(centroids, codes, bits, centroid_dtype)

    def _store_codebook(
        self, centroids: torch.Tensor, codes: torch.Tensor, bits: int, centroid_dtype: torch.dtype
    ) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"codebook bits must be an integer in [1, 8], got {bits!r}")
        centroids = centroids.detach().reshape(-1)
        if not 1 <= centroids.numel() <= 2**bits:
            raise ValueError(f"a {bits}-bit codebook holds 1 to {2**bits} centroids, got {centroids.numel()}")
        if tuple(codes.shape) != self.weight_shape:
            raise ValueError(f"codes have shape {tuple(codes.shape)}, the weight {self.weight_shape}")
        if codes.is_floating_point() or (codes.numel() and int(codes.max()) >= centroids.numel()):
            raise ValueError(f"codes must be integers indexing the {centroids.numel()} centroids")
        if centroid_dtype not in (torch.float16, torch.float32):
            raise ValueError(f"centroid_dtype must be torch.float16 or torch.float32, got {centroid_dtype}")
        self.register_buffer("packed", pack_bits(codes, bits))
        self.register_buffer("centroids", centroids.to(centroid_dtype).clone())

    def _code_tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.packed, self.centroids

    def codes(self) -> torch.Tensor:
        """Cluster index of every weight, shaped like the weight (uint8)."""
        return unpack_bits(self.packed, self.bits, self._weight_numel()).reshape(self.weight_shape)

    def decode_weight(self) -> torch.Tensor:
        return self.centroids.float()[self.codes().long().to(self.centroids.device)]

    def describe(self) -> dict[str, Any]:
        return {"format": "codebook", "bits": self.bits, "granularity": "tensor", "group_size": None}


class CodebookLinear(_CodebookCodes, _LinearOp):
    """``nn.Linear`` whose weights share ``2**bits`` values (Deep Compression weight sharing).

    Example:
        >>> layer = nn.Linear(8, 4)
        >>> centroids, codes = torch.tensor([-0.5, 0.5]), (layer.weight > 0).to(torch.uint8)
        >>> CodebookLinear(layer, centroids, codes, 1).decode_weight().unique().tolist()
        [-0.5, 0.5]
    """


class CodebookConv2d(_CodebookCodes, _ConvOp):
    """``nn.Conv2d`` whose weights share ``2**bits`` values.

    Example:
        >>> conv = nn.Conv2d(2, 4, 3)
        >>> CodebookConv2d(conv, torch.tensor([0.0, 1.0]), torch.zeros(4, 2, 3, 3, dtype=torch.uint8), 1).bits
        1
    """


def codebook_module(
    module: WeightLayer,
    centroids: torch.Tensor,
    codes: torch.Tensor,
    bits: int,
    *,
    centroid_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A ``CodebookLinear`` / ``CodebookConv2d``: ``module``'s geometry and bias, weight ``centroids[codes]``.

    Example:
        >>> from nncompress.quantize.codebook import kmeans_codebook
        >>> layer = nn.Linear(32, 16)
        >>> shared = codebook_module(layer, *kmeans_codebook(layer.weight, 4), 4)
        >>> shared.centroids.numel(), shared.packed.numel()
        (16, 256)
    """
    cls = _packed_class(module, CodebookLinear, CodebookConv2d)
    return cls(module, centroids, codes, bits, centroid_dtype=centroid_dtype)


# --- binary -----------------------------------------------------------------------------------------


class _BinaryCodes(PackedWeightLayer):
    """Weight = alpha * sign; one bit per weight (1 = +1), alpha per output channel."""

    code_format = "binary"

    def __init__(self, source: WeightLayer, alpha: torch.Tensor | None = None) -> None:
        super().__init__(source, 1)
        self._store_signs(source.weight, alpha)

    def _store_signs(self, weight: torch.Tensor, alpha: torch.Tensor | None) -> None:
        signs, default_alpha = binarize(weight.detach(), axis=0)
        if alpha is None:
            alpha = default_alpha
        channels = self.weight_shape[0]
        if alpha.numel() not in (1, channels):
            raise ValueError(f"alpha must hold 1 or {channels} (output channels) values, got {alpha.numel()}")
        shape = (channels,) + (1,) * (len(self.weight_shape) - 1)
        self.register_buffer("packed", pack_bits((signs > 0).to(torch.uint8), 1))
        self.register_buffer("alpha", alpha.detach().float().reshape(-1).expand(channels).reshape(shape).clone())

    def _code_tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.packed, self.alpha

    def signs(self) -> torch.Tensor:
        """+1 / -1 (float32) shaped like the weight."""
        bits = unpack_bits(self.packed, 1, self._weight_numel()).reshape(self.weight_shape).float()
        return bits * 2 - 1

    def decode_weight(self) -> torch.Tensor:
        return self.signs().to(self.alpha.device) * self.alpha

    def describe(self) -> dict[str, Any]:
        return {"format": "binary", "bits": 1, "granularity": "channel", "group_size": None}


class BinaryLinear(_BinaryCodes, _LinearOp):
    """``nn.Linear`` with weight ``alpha * sign(w)`` stored in one bit per weight.

    Example:
        >>> BinaryLinear(nn.Linear(16, 4)).packed.numel()  # 64 weights in 8 bytes
        8
    """


class BinaryConv2d(_BinaryCodes, _ConvOp):
    """``nn.Conv2d`` with weight ``alpha * sign(w)`` stored in one bit per weight.

    Example:
        >>> BinaryConv2d(nn.Conv2d(1, 8, 3))(torch.randn(1, 1, 5, 5)).shape
        torch.Size([1, 8, 3, 3])
    """


def binary_module(module: WeightLayer, alpha: torch.Tensor | None = None) -> nn.Module:
    """A ``BinaryLinear`` / ``BinaryConv2d``; ``alpha`` defaults to mean |w| per output channel (XNOR-Net).

    Example:
        >>> binary_module(nn.Linear(8, 2)).describe()["bits"]
        1
    """
    return _packed_class(module, BinaryLinear, BinaryConv2d)(module, alpha)


# --- float16 storage --------------------------------------------------------------------------------


class _HalfCodes(PackedWeightLayer):
    """Weight and bias stored as float16 (saturating at +-65504), computed in the input's dtype."""

    code_format = "half"

    def __init__(self, source: WeightLayer) -> None:
        super().__init__(source, 16, bias_dtype=torch.float16)
        self._store_half(source.weight)

    def _store_half(self, weight: torch.Tensor) -> None:
        self.register_buffer("weight16", to_float16(weight.detach()))

    def _code_tensors(self) -> tuple[torch.Tensor | None, ...]:
        return (self.weight16,)

    def decode_weight(self) -> torch.Tensor:
        return self.weight16.float()

    def describe(self) -> dict[str, Any]:
        return {"format": "float16", "bits": 16, "granularity": "tensor", "group_size": None}


class HalfLinear(_HalfCodes, _LinearOp):
    """``nn.Linear`` storing weight and bias in float16; takes and returns float32.

    Example:
        >>> HalfLinear(nn.Linear(4, 2))(torch.randn(1, 4)).dtype
        torch.float32
    """


class HalfConv2d(_HalfCodes, _ConvOp):
    """``nn.Conv2d`` storing weight and bias in float16; takes and returns float32.

    Example:
        >>> HalfConv2d(nn.Conv2d(1, 2, 3))(torch.randn(1, 1, 4, 4)).dtype
        torch.float32
    """


def half_module(module: WeightLayer) -> nn.Module:
    """A ``HalfLinear`` / ``HalfConv2d`` copy of ``module``.

    Example:
        >>> half_module(nn.Linear(4, 2)).weight16.dtype
        torch.float16
    """
    return _packed_class(module, HalfLinear, HalfConv2d)(module)


class QuantizedConv1d(_UniformCodes, _ConvOp):
    """``nn.Conv1d`` with a packed ``bits``-bit weight (weight shaped ``(C_out, C_in / groups, k)``).

    Example:
        >>> q = QuantizedConv1d(nn.Conv1d(3, 8, 3, padding=1), QuantSpec(bits=4, granularity="channel"))
        >>> q(torch.randn(1, 3, 10)).shape, q.weight.shape
        (torch.Size([1, 8, 10]), torch.Size([8, 3, 3]))
    """


class CodebookConv1d(_CodebookCodes, _ConvOp):
    """``nn.Conv1d`` whose weights share ``2**bits`` values."""


class BinaryConv1d(_BinaryCodes, _ConvOp):
    """``nn.Conv1d`` with weight ``alpha * sign(w)`` stored in one bit per weight."""


class HalfConv1d(_HalfCodes, _ConvOp):
    """``nn.Conv1d`` storing weight and bias in float16; takes and returns float32."""


CONV1D_TWINS: dict[type, type] = {
    QuantizedConv2d: QuantizedConv1d,
    CodebookConv2d: CodebookConv1d,
    BinaryConv2d: BinaryConv1d,
    HalfConv2d: HalfConv1d,
}

PACKED_LAYERS = (
    QuantizedLinear,
    QuantizedConv2d,
    CodebookLinear,
    CodebookConv2d,
    BinaryLinear,
    BinaryConv2d,
    HalfLinear,
    HalfConv2d,
    *CONV1D_TWINS.values(),
)
