"""HQQ-style calibration-free weight quantization (Badri & Shaji 2023, "Half-Quadratic Quantization
of Large Machine Learning Models").

Round-to-nearest spends its range on a group's extreme weights. HQQ keeps each group's min-max
scale and optimizes its (fractional) zero point so the dequantized weights match the float ones
under a sparsity-promoting l_p norm (p < 1), which tolerates a few large errors (outliers) in
exchange for many small ones. Half-quadratic splitting makes that tractable: with an auxiliary
error W_e, alternate

    W_e <- shrink_p(W - dequant(W; s, z), beta)      (proximal step of the l_p term)
    z   <- mean(q - (W - W_e) / s)                  (closed-form least squares in z)

with beta growing by ``kappa`` per iteration. No data is needed. Optionally the scale gets its
closed-form least-squares update too. Zero points stay fractional and are stored as float16
(``QuantizedLinear`` with ``zero_dtype``), as in the reference; scales as float16 where exact.

Two departures from the reference, both safeguards: the iterate kept per group is the one of
least *squared* weight error seen (the min-max round-to-nearest start included, so HQQ never
does worse than RTN in that measure), and the loop stops early, as the reference does, once the
mean absolute error stops falling.

Example:
    >>> w = torch.randn(16, 64)
    >>> spec = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=32)
    >>> w_hat, scale, zero = hqq_quantize(w, spec)
    >>> from nncompress.quantize.gptq import rtn_weight
    >>> bool((w - w_hat).norm() <= (w - rtn_weight(w, spec)).norm())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nncompress.base.checks import check_count, check_flag
from nncompress.core.sequential import no_targets
from nncompress.core.step import StepContext, register_step
from nncompress.quantize.gptq import WeightOnlyQuantize, fp16_scales
from nncompress.quantize.primitives import QuantSpec, compute_qparams


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding, the proximal operator HQQ uses for the l_p norm (p < 1):
    ``sign(x) * max(|x| - |x|^(p-1) / beta, 0)``; p = 1 is ordinary soft-thresholding."""
    a = x.abs()
    return torch.sign(x) * torch.relu(a - a.add(1e-8).pow(p - 1) / beta)


def _grouped(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """(rows, values): one row per scale (output channel, or group of an output channel)."""
    w = weight.detach().float()
    return w.reshape(-1, spec.group_size) if spec.granularity == "group" else w.reshape(w.shape[0], -1)


def hqq_quantize(
    weight: torch.Tensor,
    spec: QuantSpec,
    *,
    iters: int = 20,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    optimize_scale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` (out, in) with HQQ-optimized fractional zero points.

    Args:
        weight: the float weight.
        spec: bits, ``symmetric=False``, ``"channel"`` or ``"group"`` granularity on axis 0.
        iters: half-quadratic iterations (at most; stops once the mean |error| stops falling).
        lp_norm: p of the l_p error norm, in (0, 1].
        beta, kappa: the penalty weight of the split and its growth factor per iteration.
        optimize_scale: also update each scale in closed form (least squares).

    Returns:
        (Ŵ, scale, zero): Ŵ (float32) = (q - zero) * scale exactly for integer codes q in [0, 2^bits - 1];
        scale (fp16-exact where possible) and zero (fp16-exact floats) shaped (out, 1) per
        channel or (out, groups, 1) per group.
    """
    if spec.symmetric or spec.granularity not in ("channel", "group") or spec.axis != 0:
        raise ValueError(f"hqq needs symmetric=False and per-channel or per-group scales on axis 0, got {spec}")
    settings = {"iters": iters, "lp_norm": lp_norm, "beta": beta, "kappa": kappa, "optimize_scale": optimize_scale}
    cols = weight.shape[1] if weight.dim() > 1 else 1
    if spec.granularity == "group" and cols % spec.group_size:  # ragged last group: optimized on its own
        main = cols - cols % spec.group_size
        tail_spec = QuantSpec(bits=spec.bits, symmetric=False, granularity="channel")
        parts = [hqq_quantize(weight[:, main:], tail_spec, **settings)]
        if main:
            parts.insert(0, hqq_quantize(weight[:, :main], spec, **settings))
        rows = weight.shape[0]
        w_hat = torch.cat([p[0] for p in parts], dim=1)
        scale = torch.cat([p[1].reshape(rows, -1) for p in parts], dim=1).unsqueeze(-1)
        zero = torch.cat([p[2].reshape(rows, -1) for p in parts], dim=1).unsqueeze(-1)
        return w_hat, scale, zero
    w = _grouped(weight, spec)  # (R, n)
    qmin, qmax = spec.qmin, spec.qmax

    def rounded(s: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s, z = fp16_scales(s), z.half().float()  # as stored, so errors are those of the packed layer
        q = torch.clamp(torch.round(w / s + z), qmin, qmax)
        return s, z, q

    row_spec = QuantSpec(bits=spec.bits, symmetric=False, granularity="channel")
    s0, z0 = compute_qparams(w, row_spec, "minmax")  # round-to-nearest start: integer zero points
    best_s, best_z, q = rounded(s0, z0.float())
    best_err = ((q - best_z) * best_s - w).square().sum(1, keepdim=True)
    lo = w.amin(1, keepdim=True)
    scale, zero = best_s.clone(), (-lo.clamp(max=0) / best_s).clamp(qmin, qmax)  # HQQ's fractional start
    last_abs = float("inf")
    for _ in range(iters):
        s, z, q = rounded(scale, zero)
        w_e = shrink_lp(w - (q - z) * s, beta, lp_norm)
        target = w - w_e  # what the dequantized weights should match
        zero = (q - target / scale).mean(1, keepdim=True)
        if optimize_scale:
            d = q - zero
            fitted = (d * target).sum(1, keepdim=True) / d.square().sum(1, keepdim=True).clamp(min=1e-12)
            scale = torch.where(fitted > 0, fitted, scale)
        beta *= kappa
        s, z, q = rounded(scale, zero)
        err = (q - z) * s - w
        sq = err.square().sum(1, keepdim=True)
        better = sq < best_err
        best_err = torch.where(better, sq, best_err)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
        mean_abs = float(err.abs().mean())
        if mean_abs >= last_abs:
            break
        last_abs = mean_abs
    q = torch.clamp(torch.round(w / best_s + best_z), qmin, qmax)
    w_hat = ((q - best_z) * best_s).reshape(weight.shape)
    shape = (weight.shape[0], 1) if spec.granularity == "channel" else (weight.shape[0], -1, 1)
    return w_hat, best_s.reshape(shape), best_z.reshape(shape)


@register_step("hqq", family="quantize")
@dataclass(frozen=True)
class HQQQuantize(WeightOnlyQuantize):
    """HQQ calibration-free weight quantization to packed low-bit Linears (Badri & Shaji 2023).

    Half-quadratic optimization of each group's zero point under an l_p (p < 1) error norm; needs
    no data.

    Leaves packed ``QuantizedLinear`` layers with unsigned codes, float16 scales and float16
    (fractional) zero points. Weights pruned to zero earlier do not stay exactly zero (a
    fractional zero point has no exact code for 0).

    Args:
        bits, group_size, layers, exclude, keep_classifier: see ``WeightOnlyQuantize``.
        symmetric: must stay False (HQQ optimizes the zero point).
        zero_dtype: must stay ``"fp16"`` (the optimized zero points are fractional).
        iters: at most this many iterations (>= 1; 20 as in the reference).
        lp_norm: p of the error norm, in (0, 1] (0.7 as in the reference).
        beta: initial weight of the half-quadratic penalty (> 0).
        kappa: its growth factor per iteration (>= 1).
        optimize_scale: also fit each group's scale in closed form.

    Example:
        >>> HQQQuantize(bits=3, group_size=64)  # doctest: +ELLIPSIS
        HQQQuantize(bits=3, group_size=64, symmetric=False, ..., iters=20, lp_norm=0.7, ...)
    """

    zero_dtype: str = "fp16"
    iters: int = 20
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    optimize_scale: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.symmetric:
            raise ValueError("hqq optimizes a zero point: symmetric must be False")
        if self.zero_dtype != "fp16":
            raise ValueError(
                f"hqq optimizes fractional zero points: zero_dtype must be 'fp16'; got {self.zero_dtype!r}"
            )
        check_count("iters", self.iters)
        _check_number("lp_norm", self.lp_norm, 0.0, 1.0, "in (0, 1]")
        _check_number("beta", self.beta, 0.0, float("inf"), "> 0")
        _check_number("kappa", self.kappa, 1.0, float("inf"), ">= 1", low_open=False)
        check_flag("optimize_scale", self.optimize_scale)

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        targets = self.targets(model)
        if no_targets(targets, self.kind, ctx):
            return model
        note = self.ragged_note(targets)
        if note:
            ctx.log.append(note)
        for name, layer in targets.items():
            spec = self.spec_for(name, layer, ctx)
            w, s, z = hqq_quantize(
                layer.weight,
                spec,
                iters=self.iters,
                lp_norm=self.lp_norm,
                beta=self.beta,
                kappa=self.kappa,
                optimize_scale=self.optimize_scale,
            )
            self.pack(model, name, layer, w, s, z, spec, zero_dtype=torch.float16)
        self.round_rest(model, ctx)
        ctx.log.append(f"{self.kind}: {len(targets)} Linear layers packed without data, {self.bits}-bit")
        return model


def _check_number(name: str, value: object, low: float, high: float, accepted: str, *, low_open: bool = True) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (value > low if low_open else value >= low) and value <= high  # type: ignore[operator]
    if not ok:
        raise ValueError(f"{name} must be a number {accepted}, got {value!r}")
