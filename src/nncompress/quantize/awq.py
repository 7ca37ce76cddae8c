"""AWQ: activation-aware weight quantization (Lin et al. 2024, "AWQ: Activation-aware Weight
Quantization for LLM Compression and Acceleration").

A few input channels carry large activations, so rounding errors in their weight columns cost
the most. AWQ scales weight column j up by s_j before round-to-nearest (relatively finer steps
for it) and the input down by s_j, with

    s = mean|x|^alpha,  normalized by sqrt(max s * min s),

choosing alpha on a grid in [0, 1] to minimize the squared output error of the Linears reading
that input (alpha = 0 is plain RTN, so the choice is never worse on the calibration rows). The
reference measures the error at the output of a whole sub-module; here it is measured at the
outputs of the group's Linears (layer-output MSE), which needs no knowledge of the block's code.
1/s is folded into the producing LayerNorm (q/k/v after norm1, fc1 after norm2) or Linear (v
before the attention output projection) when that is exact on the calibration data, else kept as
an explicit per-channel multiply in front of the packed layer (``ScaledInputLinear``).

Optional clipping then shrinks each group's range (1 down to 1 - ``max_shrink``) to minimize
that group's contribution to the output error, computed from its block of X^T X. Unlike the
reference, q and k are clipped too.

Example:
    >>> x = torch.randn(256, 32); x[:, 3] *= 30
    >>> spec = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=16)
    >>> s, alpha, err, err_rtn = awq_search_scales(x, x.abs().mean(0), [torch.randn(8, 32)], [spec])
    >>> err <= err_rtn
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.base.checks import check_count, check_flag
from nncompress.base.settings import BlockCalibration
from nncompress.core.sequential import (
    BlockRun,
    LayerGroup,
    calibration_batches,
    check_blocks_setting,
    no_targets,
    replace_linear,
    run_sequential,
)
from nncompress.core.step import StepContext, register_step
from nncompress.quantize.gptq import (
    WeightOnlyQuantize,
    fake_quantize_column,
    fp16_scales,
    group_qparams,
    rtn_weight,
    scale_dtype_for,
)
from nncompress.quantize.layers import quantize_weight_module
from nncompress.quantize.primitives import QuantSpec, group_count, qparams_from_range
from nncompress.quantize.smoothquant import FOLD_CHECK_CALLS, ScaledInputLinear

# --- pure maths ----------------------------------------------------------------------------------------


def awq_scales(act_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """``mean|x|^alpha`` (>= 1e-4), normalized so that max * min = 1 (alpha 0: all ones)."""
    s = act_mean.float().pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def awq_search_scales(
    x: torch.Tensor,
    act_mean: torch.Tensor,
    weights: Sequence[torch.Tensor],
    specs: Sequence[QuantSpec],
    *,
    grid: int = 20,
    float_zero: bool = False,
) -> tuple[torch.Tensor, float, float, float]:
    """The AWQ scales for Linears reading one input.

    Args:
        x: calibration rows of the input (n, in).
        act_mean: mean |x_j| per input channel over all calibration rows (in,).
        weights: the float weights (out_i, in) of the Linears reading it.
        specs: their quantization specs (round-to-nearest with min-max scales).
        grid: alpha takes ``grid + 1`` values evenly spaced in [0, 1].
        float_zero: round to grids with fractional (fp16) zero points, as the step will pack.

    Returns:
        (scales, alpha, error, error at alpha 0): the summed squared output errors
        ``||x W^T - x (Q(W diag s) diag(1/s))^T||^2`` on ``x``.
    """
    check_count("grid", grid)
    x = x.float()
    refs = [x @ w.float().T for w in weights]
    best: tuple[float, float, torch.Tensor] | None = None
    rtn_err = float("nan")
    for alpha in torch.linspace(0, 1, grid + 1).tolist():
        s = awq_scales(act_mean.to(x), alpha)
        err = sum(
            float((x @ (rtn_weight(w.float() * s, spec, float_zero=float_zero) / s).T - ref).square().sum())
            for w, spec, ref in zip(weights, specs, refs)
        )
        if alpha == 0:
            rtn_err = err
        if best is None or err < best[0]:
            best = (err, alpha, s)
    assert best is not None
    return best[2], best[1], best[0], rtn_err


def awq_clip(
    weight: torch.Tensor,
    x: torch.Tensor,
    spec: QuantSpec,
    *,
    grid: int = 20,
    max_shrink: float = 0.5,
    float_zero: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group clipping of the quantization range that minimizes the group's output error.

    For each output row and group g, tries ranges (r lo, r hi), r from 1 down to 1 - max_shrink
    in steps of 1/grid, and keeps the one of least ``d^T (X_g^T X_g) d`` (d: the group's rounding
    error, X_g: the group's input columns of ``x``). A ragged last group is zero-padded in both W
    and X (its padding adds no error). Returns (scale, zero point) shaped as ``compute_qparams``
    gives them for ``spec``, scales fp16-exact where possible (fractional zeros, with
    ``float_zero``, fp16-exact too).
    """
    w = weight.detach().float()
    rows, n_in = w.shape
    gs = spec.group_size if spec.granularity == "group" else n_in
    groups = group_count(n_in, gs)
    pad = groups * gs - n_in
    wg = F.pad(w, (0, pad)).reshape(rows, groups, gs)  # (out, G, gs)
    xg = F.pad(x.float(), (0, pad)).reshape(-1, groups, gs)  # (n, G, gs)
    gram = torch.einsum("ngk,ngl->gkl", xg, xg)  # (G, gs, gs): X_g^T X_g
    if pad and float_zero:  # the padding is no value: the last group's range is that of its real columns
        real = torch.ones(groups, gs, dtype=torch.bool)
        real[-1, gs - pad :] = False
        lo = wg.masked_fill(~real, float("inf")).amin(-1, keepdim=True)
        hi = wg.masked_fill(~real, float("-inf")).amax(-1, keepdim=True)
    else:
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)  # (out, G, 1)
    row_spec = QuantSpec(bits=spec.bits, symmetric=spec.symmetric, granularity="channel")
    best_err = best_s = best_z = None
    for i in range(int(max_shrink * grid) + 1):
        r = 1.0 - i / grid
        s, z = qparams_from_range(lo * r, hi * r, row_spec, float_zero=float_zero)
        s, z = fp16_scales(s), (z.half().float() if float_zero else z)
        d = wg - fake_quantize_column(wg, s, z, row_spec)  # (out, G, gs)
        err = torch.einsum("ogk,gkl,ogl->og", d, gram, d).unsqueeze(-1)  # (out, G, 1)
        if best_err is None:
            best_err, best_s, best_z = err, s, z
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    shape = (rows, 1) if spec.granularity == "channel" else (rows, groups, 1)
    return best_s.reshape(shape), best_z.reshape(shape)


# --- the step --------------------------------------------------------------------------------------------


@register_step("awq", family="quantize")
@dataclass(frozen=True)
class AWQQuantize(BlockCalibration, WeightOnlyQuantize):
    """AWQ activation-aware weight-only quantization to packed low-bit Linears (Lin et al. 2024).

    Per-input-channel scaling searched on calibration data, optional output-aware clipping, then
    packed ``QuantizedLinear`` layers.

    Scales are searched on the float block's inputs, block by block (``core/sequential.py``); 1/s
    is folded into the preceding LayerNorm / Linear when exact, else applied by an explicit
    per-channel multiply (``ScaledInputLinear``, a tiny extra op).

    Args:
        bits, group_size, symmetric, layers, exclude, keep_classifier: see ``WeightOnlyQuantize``.
        grid: alpha is searched over ``grid + 1`` points in [0, 1] (and clipping over
            ``grid * max_shrink + 1`` ratios).
        clip: search a clipping range per group after scaling.
        max_shrink: clipping shrinks a group's range by at most this fraction, in [0, 1).
        calibration_batches: train batches whose inputs calibrate (>= 1).
        blocks: the block list (None: found automatically; "" the whole model is one block).

    Example:
        >>> AWQQuantize(bits=4, group_size=128, clip=False)  # doctest: +ELLIPSIS
        AWQQuantize(bits=4, group_size=128, symmetric=False, ..., grid=20, clip=False, ...)
    """

    grid: int = 20
    clip: bool = True
    max_shrink: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("grid", self.grid)
        check_flag("clip", self.clip)
        if isinstance(self.max_shrink, bool) or not isinstance(self.max_shrink, (int, float)):
            raise ValueError(f"max_shrink must be a number in [0, 1), got {self.max_shrink!r}")
        if not 0 <= self.max_shrink < 1:
            raise ValueError(f"max_shrink must be a number in [0, 1), got {self.max_shrink!r}")
        check_blocks_setting(self.blocks)

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        targets = self.targets(model)
        if no_targets(targets, self.kind, ctx):
            return model
        notes: list[str] = []

        def process(run: BlockRun, groups: list[LayerGroup]) -> None:
            reference = run.forward(limit=FOLD_CHECK_CALLS)
            plans = []
            for group in groups:  # search every scale and fold first: folds are checked on the float block
                stats = group.stats[group.selected[0]]
                specs = [self.spec_for(n, group.module(n), ctx) for n in group.selected]
                weights = [group.module(n).weight.detach() for n in group.selected]
                s, alpha, err, err_rtn = awq_search_scales(
                    stats.samples, stats.absmean(), weights, specs, grid=self.grid, float_zero=self.float_zero
                )
                producer = run.try_fold(group, s, reference) if alpha > 0 else None
                where = "none" if alpha == 0 else producer or "explicit"
                notes.append(
                    f"{'/'.join(group.selected)}: alpha {alpha:.2f} -> {where} ({err / max(err_rtn, 1e-30):.2f}x RTN)"
                )
                plans.append((group, specs, s if alpha > 0 and producer is None else None, stats.samples / s))
            for group, specs, explicit, x in plans:
                for name, spec in zip(group.selected, specs):
                    self._pack(run.model, name, group.module(name), spec, explicit, x)

        batches = calibration_batches(ctx, self.calibration_batches, self.kind)
        done = run_sequential(
            model,
            batches,
            process,
            select=targets,
            needs=("samples", "abs_sum"),
            true_sequential=False,
            blocks=self.blocks,
            log=ctx.log,
        )
        ctx.log += [f"{self.kind}: {n}" for n in notes]
        ragged = self.ragged_note(targets)
        if ragged:
            ctx.log.append(ragged)
        self.round_rest(model, ctx)
        clip = ", clipped" if self.clip else ""
        ctx.log.append(
            f"{self.kind}: {len(done)} Linear layers packed ({self.bits}-bit{clip}) from {len(batches)} batch(es)"
        )
        return model

    def _pack(
        self,
        model: nn.Module,
        name: str,
        layer: nn.Linear,
        spec: QuantSpec,
        explicit: torch.Tensor | None,
        x: torch.Tensor,
    ) -> None:
        """Quantize ``layer`` (already scaled when folded) and put it in place; ``x``: its scaled input rows."""
        if explicit is not None:
            with torch.no_grad():
                layer.weight.mul_(explicit.to(layer.weight).reshape(1, -1))
        if self.clip:
            scale, zero = awq_clip(
                layer.weight, x, spec, grid=self.grid, max_shrink=self.max_shrink, float_zero=self.float_zero
            )
        else:
            scale, zero = group_qparams(layer.weight, spec, "minmax", self.float_zero)
        packed = quantize_weight_module(
            layer,
            spec,
            scale=scale,
            zero_point=zero,
            scale_dtype=scale_dtype_for(scale),
            zero_dtype=torch.float16 if self.float_zero else None,
        )
        replace_linear(model, name, packed if explicit is None else ScaledInputLinear(packed, 1.0 / explicit), layer)
