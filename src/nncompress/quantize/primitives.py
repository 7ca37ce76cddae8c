"""Quantization maths on plain tensors: quantization parameters, (fake-)quantize/dequantize, low-bit
schemes (binary, ternary, power-of-two), float casts and lossless bit packing. No modules, no steps.

Integer ranges (``QuantSpec.qmin``/``qmax``):

- symmetric: restricted signed range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` with zero point 0, so the grid
  is symmetric around zero (int8: [-127, 127]) and ``-scale * qmin == scale * qmax``. Needs b >= 2;
  1-bit symmetric quantization is :func:`binarize`.
- asymmetric: unsigned range ``[0, 2^b - 1]`` with an integer zero point inside it, so that 0.0 is
  exactly representable (zero padding and pruned weights stay exactly zero).

Storage dtypes: the smallest of int8 / uint8 / int16 / int32 that holds ``[qmin, qmax]``
(``QuantSpec.storage_dtype``). Bit packing stores codes in exactly ``ceil(numel * bits / 8)`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Granularity = Literal["tensor", "channel", "group"]
GRANULARITIES = ("tensor", "channel", "group")
QPARAM_METHODS = ("minmax", "mse")
FLOAT_FORMATS = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _check_bits(bits: object, lo: int = 1, hi: int = 16) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise ValueError(f"bits must be an integer in [{lo}, {hi}], got {bits!r}")
    return bits


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a tensor to ``bits``-bit integers.

    Args:
        bits: integer bit width in [1, 16] (symmetric needs >= 2).
        symmetric: restricted signed range and zero point 0; else unsigned range with a zero point.
        granularity: one scale for the whole tensor, one per slice along ``axis`` ("channel"), or one
            per ``group_size`` consecutive values of each slice ("group", e.g. a Linear weight's rows
            of inputs, or a conv filter's flattened in_channels * kh * kw values).
        axis: the channel axis for "channel" and "group" (0 = output channels of a weight).
        group_size: values per group. When it does not divide the values per channel, the last
            group of each channel is ragged: it holds the remainder (576 values in groups of 128:
            four groups of 128 and one of 64).

    Example:
        >>> spec = QuantSpec(bits=4, symmetric=True, granularity="channel")
        >>> (spec.qmin, spec.qmax, spec.storage_dtype)
        (-7, 7, torch.int8)
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = "tensor"
    axis: int = 0
    group_size: int | None = None

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if self.symmetric and self.bits < 2:
            raise ValueError(f"symmetric quantization needs bits >= 2, got bits={self.bits} (use binarize() for 1 bit)")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "group":
            gs = self.group_size
            if isinstance(gs, bool) or not isinstance(gs, int) or gs < 1:
                raise ValueError(f"granularity='group' needs an integer group_size >= 1, got {gs!r}")
        elif self.group_size is not None:
            raise ValueError(
                f"group_size is only used with granularity='group', got group_size={self.group_size} "
                f"with granularity={self.granularity!r}"
            )

    @property
    def qmin(self) -> int:
        """Smallest integer code."""
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def storage_dtype(self) -> torch.dtype:
        """Smallest torch integer dtype holding [qmin, qmax]."""
        for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
            info = torch.iinfo(dtype)
            if info.min <= self.qmin and self.qmax <= info.max:
                return dtype
        raise AssertionError("unreachable: bits <= 16 always fits int32")


# --- granularity views: every scheme reduces over the last dim of a (rows, values) view ------------


def group_count(values: int, group_size: int) -> int:
    """Groups per channel of ``values`` values in groups of ``group_size``, a ragged last one included."""
    return -(-values // group_size)


def _padded_groups(per_channel: torch.Tensor, gs: int) -> torch.Tensor:
    """(C, groups, gs) view of (C, n) values, the ragged last group zero-padded to ``gs``.

    Zero padding changes no quantization parameter: every range is widened to contain 0 anyway, and
    0 has an exact code (integer zero points), so it adds no error to the MSE search either.
    """
    c, n = per_channel.shape
    pad = group_count(n, gs) * gs - n
    if pad:
        per_channel = torch.nn.functional.pad(per_channel, (0, pad))
    return per_channel.reshape(c, -1, gs)


def _rows(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """(rows, values): one row per scale (1 for tensor, C for channel, C * groups for group; a ragged
    last group is zero-padded)."""
    if spec.granularity == "tensor":
        return x.reshape(1, -1)
    if x.dim() == 0 or not -x.dim() <= spec.axis < x.dim():
        raise ValueError(f"axis={spec.axis} is out of range for a tensor of shape {tuple(x.shape)}")
    per_channel = x.movedim(spec.axis, 0).reshape(x.shape[spec.axis], -1)  # (C, values per channel)
    if spec.granularity == "channel":
        return per_channel
    return _padded_groups(per_channel, spec.group_size).reshape(-1, spec.group_size)  # (C * groups, gs)


def _param_shape(x: torch.Tensor, spec: QuantSpec) -> tuple[int, ...]:
    """Public shape of scale / zero_point for ``x``: broadcastable to x (tensor, channel) or to the
    grouped view (C, groups, group_size) of x moved to channel-first (group)."""
    if spec.granularity == "tensor":
        return ()
    c = x.shape[spec.axis]
    if spec.granularity == "channel":
        shape = [1] * x.dim()
        shape[spec.axis] = c
        return tuple(shape)
    return (c, group_count(x.numel() // c, spec.group_size), 1)


def _apply(x: torch.Tensor, spec: QuantSpec, fn, *params: torch.Tensor) -> torch.Tensor:
    """Run the elementwise ``fn(x, *params)`` with params broadcast per granularity; keeps x's shape."""
    if spec.granularity != "group":
        return fn(x, *params)
    moved = x.movedim(spec.axis, 0)
    c = moved.shape[0]
    per_channel = moved.reshape(c, -1)
    grouped = _padded_groups(per_channel, spec.group_size)  # (C, groups, group_size)
    out = fn(grouped, *(p.reshape(c, -1, 1) for p in params)).reshape(c, -1)[:, : per_channel.shape[1]]
    return out.reshape(moved.shape).movedim(0, spec.axis)


# --- quantization parameters --------------------------------------------------------------------


def qparams_from_range(
    lo: torch.Tensor | float, hi: torch.Tensor | float, spec: QuantSpec, *, float_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) mapping [lo, hi] onto the spec's integer range.

    The range is widened to contain 0. Symmetric: ``scale = max(|lo|, |hi|) / qmax``, zero point 0.
    Asymmetric: ``scale = (hi - lo) / (qmax - qmin)``, zero point ``round(-lo / scale)``. A zero-width
    range gets scale 1 (any scale reproduces an all-zero tensor), so the scale is never 0.

    ``float_zero`` (asymmetric only): the zero point is the unrounded ``qmin - lo / scale`` (float32)
    and the range is not widened, so the grid's ends are exactly ``lo`` and ``hi`` (GGUF Q4_1's
    ``w = d q + m``); codes come from :func:`quantize_float_zero`.

    Example:
        >>> qparams_from_range(-1.0, 3.0, QuantSpec(bits=8, symmetric=False))
        (tensor(0.0157), tensor(64, dtype=torch.int32))
    """
    if float_zero and spec.symmetric:
        raise ValueError("float_zero needs symmetric=False (symmetric codes have zero point 0)")
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    if not float_zero:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = torch.maximum(-lo, hi) / spec.qmax if spec.symmetric else (hi - lo) / (spec.qmax - spec.qmin)
    scale = torch.where(scale > torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))
    if spec.symmetric:
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    elif float_zero:
        zero_point = spec.qmin - lo / scale
    else:
        zero_point = (spec.qmin - torch.round(lo / scale)).clamp(spec.qmin, spec.qmax).to(torch.int32)
    return scale, zero_point


def _sq_error(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """(R, 1) summed squared error of fake-quantizing each row (in-place temporaries: this is a hot loop);
    a floating ``zp`` is added before rounding (:func:`quantize_float_zero`)."""
    q = torch.div(rows, scale)
    if spec.symmetric:  # zero point 0
        q.round_().clamp_(spec.qmin, spec.qmax)
    elif zp.is_floating_point():
        q.add_(zp).round_().clamp_(spec.qmin, spec.qmax).sub_(zp)
    else:
        q.round_().add_(zp).clamp_(spec.qmin, spec.qmax).sub_(zp)
    return q.mul_(scale).sub_(rows).square_().sum(1, keepdim=True)


def compute_qparams(
    x: torch.Tensor, spec: QuantSpec, method: str = "minmax", *, grid: int = 100, float_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for ``x`` per ``spec.granularity``.

    ``method="minmax"`` covers each slice's [min, max]. ``method="mse"`` tries ``grid`` clipping
    ratios r in (0, 1] of that range, (r * min, r * max), and keeps, per channel / group, the one with
    the smallest reconstruction error; r = 1 is among them, so it is never worse than min-max.
    ``float_zero``: unrounded float32 zero points (see :func:`qparams_from_range`).

    Returns scale (float32) and zero point (int32, or float32 with ``float_zero``), shaped () for
    "tensor", like x with 1 everywhere but ``axis`` for "channel", and (C, groups, 1) for "group".

    Example:
        >>> w = torch.randn(16, 64)
        >>> scale, zp = compute_qparams(w, QuantSpec(bits=4, granularity="group", group_size=32), "mse")
        >>> scale.shape
        torch.Size([16, 2, 1])
    """
    if method not in QPARAM_METHODS:
        raise ValueError(f"method must be one of {QPARAM_METHODS}, got {method!r}")
    if x.numel() == 0:
        raise ValueError(f"cannot compute quantization parameters of an empty tensor of shape {tuple(x.shape)}")
    rows = _rows(x.detach().float(), spec)  # (R, values)
    lo, hi = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)  # (R, 1)
    if float_zero and spec.granularity == "group" and rows.shape[1] * rows.shape[0] != x.numel():
        lo, hi = _unpadded_range(x.detach().float(), spec)  # the ragged group's zero padding is no value
    scale, zp = qparams_from_range(lo, hi, spec, float_zero=float_zero)
    if method == "mse":
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be an integer >= 1, got {grid!r}")
        best = _sq_error(rows, scale, zp, spec)
        for r in torch.linspace(1.0, 1.0 / grid, grid)[1:].tolist():  # r = 1 is the start
            s, z = qparams_from_range(lo * r, hi * r, spec, float_zero=float_zero)
            err = _sq_error(rows, s, z, spec)
            better = err < best
            best = torch.where(better, err, best)
            scale, zp = torch.where(better, s, scale), torch.where(better, z, zp)
    shape = _param_shape(x, spec)
    return scale.reshape(shape), zp.reshape(shape)


def _unpadded_range(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, 1) min and max of each group, a ragged last group's zero padding left out (padding with
    +inf / -inf before taking the min / max)."""
    per_channel = x.movedim(spec.axis, 0).reshape(x.shape[spec.axis], -1)
    c, n = per_channel.shape
    pad = group_count(n, spec.group_size) * spec.group_size - n
    fill = torch.nn.functional.pad
    lo = fill(per_channel, (0, pad), value=float("inf")).reshape(-1, spec.group_size).amin(1, keepdim=True)
    hi = fill(per_channel, (0, pad), value=float("-inf")).reshape(-1, spec.group_size).amax(1, keepdim=True)
    return lo, hi


# --- quantize / dequantize -------------------------------------------------------------------------


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes ``clamp(round(x / scale) + zero_point, qmin, qmax)`` in ``spec.storage_dtype``.

    Example:
        >>> spec = QuantSpec(bits=8)
        >>> quantize(torch.tensor([0.5, -2.0]), *qparams_from_range(-1.0, 1.0, spec), spec)
        tensor([  64, -127], dtype=torch.int8)
    """

    def fn(v: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(v / s) + z, spec.qmin, spec.qmax)

    return _apply(x.detach().float(), spec, fn, scale.float(), zero_point.float()).to(spec.storage_dtype)


def quantize_float_zero(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Affine codes ``clamp(round(x / scale + zero), qmin, qmax)`` for fractional (float) zero points,
    in ``spec.storage_dtype``; :func:`dequantize` inverts them as ``(q - zero) * scale``.

    The zero point is added before rounding, so any real zero (HQQ's optimized ones, or
    ``-min / scale`` kept unrounded) places the grid exactly.

    Example:
        >>> spec = QuantSpec(bits=4, symmetric=False)
        >>> quantize_float_zero(torch.tensor([-1.0, 0.0, 1.0]), torch.tensor(0.25), torch.tensor(4.5), spec).tolist()
        [0, 4, 8]
    """
    if spec.symmetric:
        raise ValueError("fractional zero points need symmetric=False (symmetric codes have zero point 0)")

    def fn(v: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(v / s + z), spec.qmin, spec.qmax)

    return _apply(x.detach().float(), spec, fn, scale.float(), zero.float()).to(spec.storage_dtype)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Real values ``(q - zero_point) * scale`` as ``dtype``.

    Example:
        >>> spec = QuantSpec(bits=8)
        >>> dequantize(torch.tensor([127], dtype=torch.int8), torch.tensor(0.5), torch.tensor(0), spec)
        tensor([63.5000])
    """

    def fn(v: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (v - z) * s

    return _apply(q.float(), spec, fn, scale.float(), zero_point.float()).to(dtype)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``dequantize(quantize(x))`` in x's float dtype, differentiable for QAT.

    Gradients: straight-through to x inside the representable range and 0 where x is clipped; to
    ``scale`` (when it requires grad) the LSQ gradient ``round(x/s) - x/s`` inside the range and
    ``qmin - z`` / ``qmax - z`` where clipped (Esser et al. 2020, without LSQ's gradient scaling).

    Example:
        >>> x = torch.tensor([0.3, 5.0], requires_grad=True)
        >>> fake_quantize(x, torch.tensor(0.1), torch.tensor(0), QuantSpec(bits=4)).sum().backward()
        >>> x.grad
        tensor([1., 0.])
    """

    def fn(v: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(round_ste(v / s) + z, spec.qmin, spec.qmax)
        return (q - z) * s

    zp = zero_point.to(scale.dtype) if not zero_point.is_floating_point() else zero_point
    return _apply(x, spec, fn, scale, zp).to(x.dtype)


# --- float casts -----------------------------------------------------------------------------------


def cast_float(x: torch.Tensor, fmt: str = "fp16", *, saturate: bool = True) -> torch.Tensor:
    """``x`` cast to fp16 or bf16 (round to nearest even). With ``saturate``, values beyond fp16's
    largest finite value (65504) are clamped to it instead of becoming inf.

    Example:
        >>> cast_float(torch.tensor([1e5, 1.0]), "fp16").tolist()
        [65504.0, 1.0]
    """
    if fmt not in FLOAT_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(FLOAT_FORMATS)}, got {fmt!r}")
    dtype = FLOAT_FORMATS[fmt]
    if saturate:
        big = torch.finfo(dtype).max
        x = x.clamp(-big, big)
    return x.to(dtype)


def float_roundtrip(x: torch.Tensor, fmt: str = "fp16", *, saturate: bool = True) -> torch.Tensor:
    """``x`` cast to fp16 / bf16 and back to its own dtype: the values a half-precision copy holds.

    Example:
        >>> float_roundtrip(torch.tensor([1.0 + 2**-12]), "bf16")
        tensor([1.])
    """
    return cast_float(x, fmt, saturate=saturate).to(x.dtype)


def to_float16(x: torch.Tensor) -> torch.Tensor:
    """fp16 copy of ``x``, saturating at +-65504. Example: ``to_float16(torch.ones(2))``."""
    return cast_float(x, "fp16")


def to_bfloat16(x: torch.Tensor) -> torch.Tensor:
    """bf16 copy of ``x``. Example: ``to_bfloat16(torch.ones(2))``."""
    return cast_float(x, "bf16")


# --- binary / ternary / power-of-two ---------------------------------------------------------------


def _per_slice(w: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(rows, values) view of |w| per slice along ``axis`` (one row for None) and the broadcast shape."""
    if axis is None or w.dim() == 0:
        return w.detach().float().abs().reshape(1, -1), ()
    if not -w.dim() <= axis < w.dim():
        raise ValueError(f"axis={axis} is out of range for a tensor of shape {tuple(w.shape)}")
    shape = [1] * w.dim()
    shape[axis] = w.shape[axis]
    return w.detach().float().abs().movedim(axis, 0).reshape(w.shape[axis], -1), tuple(shape)


def binarize(w: torch.Tensor, axis: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """XNOR-Net binarization (Rastegari et al. 2016): ``w ~ alpha * sign(w)``.

    Returns signs (int8 in {-1, +1}; 0 maps to +1) and alpha = mean |w| per slice along ``axis``
    (per tensor for None), shaped to broadcast against w; alpha is the L2-optimal scale for fixed signs.

    Example:
        >>> signs, alpha = binarize(torch.tensor([[1.0, -3.0], [0.5, 0.5]]))
        >>> (signs * alpha).tolist()
        [[2.0, -2.0], [0.5, 0.5]]
    """
    absw, shape = _per_slice(w, axis)
    alpha = absw.mean(1).reshape(shape)
    signs = torch.where(w >= 0, 1, -1).to(torch.int8)
    return signs, alpha


def ternarize(w: torch.Tensor, threshold_ratio: float = 0.7, axis: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary Weight Networks (Li et al. 2016): ``w ~ alpha * t`` with t in {-1, 0, +1}.

    Per slice along ``axis``: ``delta = threshold_ratio * mean|w|``, ``t = sign(w) * (|w| > delta)``,
    ``alpha = mean of |w| over |w| > delta`` (0 when nothing exceeds delta, i.e. an all-zero slice).

    Example:
        >>> t, alpha = ternarize(torch.tensor([[2.0, -2.0, 0.1, 0.0]]))
        >>> t.tolist(), alpha.tolist()
        ([[1, -1, 0, 0]], [[2.0]])
    """
    if not threshold_ratio >= 0:  # also rejects NaN
        raise ValueError(f"threshold_ratio must be >= 0, got {threshold_ratio}")
    absw, shape = _per_slice(w, axis)  # (R, values)
    delta = threshold_ratio * absw.mean(1, keepdim=True)
    keep = absw > delta
    alpha = (absw * keep).sum(1) / keep.sum(1).clamp(min=1)
    # Rows are slices along axis: back to w's layout.
    mask = keep.reshape(w.movedim(axis, 0).shape).movedim(0, axis) if shape else keep.reshape(w.shape)
    codes = (torch.sign(w.detach()) * mask).to(torch.int8)
    return codes, alpha.reshape(shape)


def power_of_two(w: torch.Tensor, bits: int = 4, axis: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logarithmic quantization onto ``{0} U {+-scale * 2^-k : k = 0 .. M-1}``, M = 2^(bits-1) - 1.

    ``scale`` is max |w| per slice along ``axis`` (per tensor for None). Codes are signed int8 in
    [-M, M]: 0 is zero and code ``c`` is ``sign(c) * scale * 2^(|c| - M)``; each weight takes the
    nearest level (linear distance). See :func:`dequantize_power_of_two`; since the levels are
    powers of two times the scale, dequantization is exact.

    Example:
        >>> codes, scale = power_of_two(torch.tensor([1.0, 0.4, -0.2, 0.0]), bits=3, axis=None)
        >>> codes.tolist(), dequantize_power_of_two(codes, scale, 3).tolist()
        ([3, 2, -1, 0], [1.0, 0.5, -0.25, 0.0])
    """
    _check_bits(bits, 2, 8)
    m = 2 ** (bits - 1) - 1
    absw, shape = _per_slice(w, axis)
    scale = absw.amax(1).reshape(shape)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    a = w.detach().float().abs() / scale  # in [0, 1]
    mant, exp = torch.frexp(a)  # a = mant * 2^exp, mant in [0.5, 1): floor(log2 a) = exp - 1
    e = exp - 1 + (mant >= 0.75).to(exp.dtype)  # nearest of 2^(exp-1) and 2^exp (midpoint 1.5 * 2^(exp-1))
    level = (e + m).clamp(1, m)
    level = torch.where(a < 2.0**-m, 0, level)  # below half the smallest level: zero is nearer
    codes = (level * torch.sign(w.detach())).to(torch.int8)
    return codes, scale


def dequantize_power_of_two(codes: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Float values of :func:`power_of_two` codes: ``sign(c) * scale * 2^(|c| - M)``, 0 for c = 0.

    Example:
        >>> dequantize_power_of_two(torch.tensor([3, -1, 0]), torch.tensor(2.0), 3).tolist()
        [2.0, -0.5, 0.0]
    """
    m = 2 ** (_check_bits(bits, 2, 8) - 1) - 1
    c = codes.to(torch.int32)
    mag = torch.ldexp(scale.float().expand(c.shape), (c.abs() - m).to(torch.float32))
    return torch.where(c == 0, 0.0, torch.sign(c) * mag)


# --- bit packing -----------------------------------------------------------------------------------


def unsigned_dtype(bits: int) -> torch.dtype:
    """Smallest torch dtype holding [0, 2^bits): uint8, int16 or int32."""
    bits = _check_bits(bits)
    return torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32


def signed_dtype(bits: int) -> torch.dtype:
    """Smallest torch dtype holding [-2^(bits-1), 2^(bits-1)): int8 or int16."""
    return torch.int8 if _check_bits(bits) <= 8 else torch.int16


def to_unsigned(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes in [-2^(b-1), 2^(b-1)) offset by 2^(b-1) into [0, 2^b), ready for :func:`pack_bits`.

    Example:
        >>> to_unsigned(torch.tensor([-7, 0, 7], dtype=torch.int8), 4).tolist()
        [1, 8, 15]
    """
    half = 2 ** (_check_bits(bits) - 1)
    c = codes.to(torch.int32)
    if c.numel() and (c.min() < -half or c.max() >= half):
        raise ValueError(
            f"signed {bits}-bit codes must lie in [{-half}, {half - 1}], got [{int(c.min())}, {int(c.max())}]"
        )
    return (c + half).to(unsigned_dtype(bits))


def to_signed(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`to_unsigned`: unsigned codes in [0, 2^b) back to [-2^(b-1), 2^(b-1)).

    Example:
        >>> to_signed(torch.tensor([1, 8, 15], dtype=torch.uint8), 4).tolist()
        [-7, 0, 7]
    """
    half = 2 ** (_check_bits(bits) - 1)
    return (codes.to(torch.int32) - half).to(signed_dtype(bits))


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that :func:`pack_bits` uses for ``numel`` codes: ``ceil(numel * bits / 8)``."""
    return (numel * _check_bits(bits) + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (< 2^bits) into a flat uint8 tensor of ``ceil(numel * bits / 8)`` bytes.

    Layout: one little-endian bit stream. Code i of the flattened tensor occupies stream bits
    [i * bits, (i + 1) * bits), least significant bit first; stream bit j is bit (j % 8) of byte
    j // 8. The last byte is zero-padded. Widths 1, 2, 4 and 8 use shifts; others go through numpy.

    Example:
        >>> pack_bits(torch.tensor([1, 2, 3]), 2).tolist()
        [57]
    """
    bits = _check_bits(bits)
    flat = codes.detach().reshape(-1)
    if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor, got dtype {flat.dtype}")
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(
            f"codes must lie in [0, {2**bits - 1}] for bits={bits}, got [{int(flat.min())}, {int(flat.max())}]"
            " (signed codes: use to_unsigned first)"
        )
    if bits == 8:
        return flat.to(torch.uint8).cpu()
    if bits in (1, 2, 4):
        per = 8 // bits
        padded = torch.zeros(packed_nbytes(flat.numel(), bits) * per, dtype=torch.int32)
        padded[: flat.numel()] = flat.cpu().to(torch.int32)
        shifts = torch.arange(per, dtype=torch.int32) * bits
        return (padded.reshape(-1, per) << shifts).sum(1).to(torch.uint8)  # (bytes,)
    values = flat.cpu().to(torch.int64).numpy()
    planes = ((values[:, None] >> np.arange(bits)) & 1).astype(np.uint8)  # (numel, bits), LSB first
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` codes, flat, as ``unsigned_dtype(bits)``.

    Example:
        >>> unpack_bits(torch.tensor([57], dtype=torch.uint8), 2, 3).tolist()
        [1, 2, 3]
    """
    bits = _check_bits(bits)
    need = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.numel() < need:
        raise ValueError(
            f"packed must be a uint8 tensor of at least {need} bytes for {numel} {bits}-bit codes, "
            f"got {packed.numel()} values of dtype {packed.dtype}"
        )
    flat = packed.detach().reshape(-1).cpu()[:need]
    out_dtype = unsigned_dtype(bits)
    if bits == 8:
        return flat[:numel].clone()
    if bits in (1, 2, 4):
        shifts = torch.arange(8 // bits, dtype=torch.int32) * bits
        codes = (flat.to(torch.int32)[:, None] >> shifts) & (2**bits - 1)  # (bytes, per)
        return codes.reshape(-1)[:numel].to(out_dtype)
    stream = np.unpackbits(flat.numpy(), bitorder="little")[: numel * bits].reshape(numel, bits)
    values = (stream.astype(np.int64) << np.arange(bits)).sum(1)
    return torch.from_numpy(values).to(out_dtype)
