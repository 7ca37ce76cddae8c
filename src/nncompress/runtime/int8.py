"""8-bit kernel: aten's ``_weight_int8pack_mm`` (int8 weights, one scale per output row) with
bfloat16 activations.

Runs layers exact on a 256-level grid: 5- to 8-bit uniform codes per channel, per tensor or per
group (an LM head packed at 8 bits in groups of 128), and what the 4-bit kernel declined among
lower widths (an output width not divisible by 16, inputs not divisible by 32). Codes minus an
integer zero that fit in int8 are multiplied as they are; otherwise (8-bit affine codes) they are
shifted by 128 and the zeros' share is added back as ``scale * (128 - zero) * sum(x)`` per group.
The kernel takes one bf16 scale per output row, which would round 8-bit weights by up to half a
step, so it gets unit scales and the float32 scales multiply its output. With G groups per row the
kernel runs once per group, on that group's inputs and a contiguous copy of its columns of codes,
and the G outputs are scaled per group and summed (``_split_runner``); groups whose width is not a
multiple of 16 (the op's input widths) instead make each input row G kernel rows, the row masked
to one group's inputs (``_masked_runner``). The weights it multiplies are exact; outputs round to
bf16 (per group, as before the split).

Measured here (AMD EPYC AVX-512, one thread, batch 1, interleaved medians, noisy shared machine,
preliminary): 1536x576 55-59 us vs fp32 ``F.linear`` 76-93 us, 576x1536 55-57 vs 65-73 us; at 128
rows (prefill) 8.7 vs 7.8 ms and 8.0 vs 7.0 ms (10-15% slower; at 64 rows on 128-1024 wide layers
13-140% slower, so above ``MAX_KERNEL_ROWS`` rows the int8 codes are dequantized per call and run
through ``F.linear``). float32 activations (no bf16 cast) were 12-15x slower than ``F.linear``.
The op slows down per weight on wide rows: at 4096 outputs it took 0.06-0.08 ns per weight up to
512 inputs and 0.14 from 576 to 768 inputs (0.11 at 1536, 0.075 at 4096 again), so a layer of at
least ``SPLIT_MIN_OUTPUTS`` outputs and ``SPLIT_INPUTS`` inputs runs as calls of at most
``CALL_INPUTS`` inputs: the 49152x576 LM head per channel 3.8-4.1 ms in one call, 2.0 ms in two of
288 (4096x1536: 690 vs 516 us; 2048x4096 lost, 617 vs 773 us, so not above 2048 inputs). Groups
of 128 on 576 inputs (the head packed at 8 bits) as five calls: 2.1-3.5 ms against 10.4-13.7 ms
as five masked kernel rows; 1536x576 124 vs 253 us, 576x576 86 vs 149 us (under
``ATEN_CPU_CAPABILITY=avx2``: 3.8 vs 13-21 ms, 119 vs 332 us, 93 vs 197 us).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.runtime.checks import check_matches, claim_grid
from nncompress.runtime.cpu import CpuFeatures
from nncompress.runtime.grid import AffineGrid
from nncompress.runtime.registry import Kernel, RunFn, Unsupported, register_kernel

SHIFT = 128  # codes in [0, 255] shifted into int8
MAX_GROUPS = 16  # scale groups per row run as that many kernel calls (or rows); more cost more than they save
MAX_KERNEL_ROWS = 32  # more kernel rows: codes dequantized per call and F.linear (the kernel was 10-50% slower)
K_MULTIPLE = 16  # input widths _weight_int8pack_mm handles (measured: 8, 24, 40, 72, 136 crash at 2+ rows)
SPLIT_MIN_OUTPUTS = 4096  # per-channel layers this wide (and SPLIT_INPUTS deep) run as several calls
SPLIT_INPUTS = (512, 2048)  # (exclusive, inclusive) input widths where one call per CALL_INPUTS is faster
CALL_INPUTS = 512


def available(cpu: CpuFeatures) -> str | None:
    """None when the kernel can run here, else why not."""
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return f"torch {torch.__version__} has no _weight_int8pack_mm"
    if not (cpu.x86 and cpu.avx2):
        return f"needs an x86 CPU with AVX2 or AVX-512, this is {cpu.describe()}"
    return None


def column_ranges(grid: AffineGrid) -> list[tuple[int, int]] | None:
    """The input range ``(start, stop)`` of each kernel call, each inside one scale group (one per
    group; per channel, wide layers in pieces of at most ``CALL_INPUTS``), or None when a group's
    width is not a multiple of ``K_MULTIPLE`` (the op cannot run it alone)."""
    n, k = grid.shape
    if grid.groups > 1:
        ranges = [(g * grid.group_size, min(k, (g + 1) * grid.group_size)) for g in range(grid.groups)]
        return None if any((stop - start) % K_MULTIPLE for start, stop in ranges) else ranges
    if n < SPLIT_MIN_OUTPUTS or not SPLIT_INPUTS[0] < k <= SPLIT_INPUTS[1]:
        return [(0, k)]
    calls = math.ceil(k / CALL_INPUTS)
    width = math.ceil(k / calls / K_MULTIPLE) * K_MULTIPLE
    return [(start, min(k, start + width)) for start in range(0, k, width)]


@register_kernel
class Int8PackKernel(Kernel):
    """Up to 256-level codes, float32 scales per row or per group, bfloat16 activations."""

    name = "int8pack-bf16"
    weight_bits = 8
    priority = 20

    def prepare(self, layer: nn.Module, cpu: CpuFeatures) -> RunFn:
        grid = claim_grid(layer, 2**self.weight_bits, available(cpu))
        groups = grid.groups
        if groups > MAX_GROUPS:
            raise Unsupported(f"{groups} scale groups per row (one kernel call per group: at most {MAX_GROUPS})")
        n, k = grid.shape
        if k % K_MULTIPLE:  # aten's kernel reads past the row otherwise (segfaults from 2 input rows, torch 2.13)
            raise Unsupported(f"{k} inputs: _weight_int8pack_mm needs a multiple of {K_MULTIPLE}")
        column_group = torch.arange(k) // grid.group_size  # (K,): the group of every input, ragged last one too
        scale, zero = grid.scale, grid.zero  # (N, G)
        centered = grid.codes.float() - zero.round()[:, column_group]  # exact: |values| < 2^24
        if bool((zero == zero.round()).all()) and float(centered.min()) >= -128 and float(centered.max()) <= 127:
            codes, offset = centered.to(torch.int8), None
        else:  # 8-bit affine: shifted codes, the zeros' share added from (per-group) input sums
            codes, offset = (grid.codes.to(torch.int16) - SHIFT).to(torch.int8), (scale * (SHIFT - zero)).contiguous()
        weight = codes.float().mul_(scale[:, column_group])
        if offset is not None:
            weight += offset[:, column_group]
        check_matches(layer, weight.reshape(n, k, 1), scale[:, column_group].reshape(n, k, 1), self.name)
        weights = _GroupWeights(scale.contiguous(), offset, column_group)
        ranges = column_ranges(grid)
        return _masked_runner(weights, codes) if ranges is None else _split_runner(weights, codes, ranges)


class _GroupWeights:
    """An 8-bit layer's float32 side of ``W = codes * scale (+ offset)`` per group of inputs."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor | None, column_group: torch.Tensor) -> None:
        self.scale, self.offset, self.column_group = scale, offset, column_group
        groups = scale.shape[1]
        self.masks = (column_group[None, :] == torch.arange(groups)[:, None]).to(torch.bfloat16)  # (G, K)
        self.group_inputs = self.masks.float().t().contiguous()  # (K, G): x @ it sums each group's inputs
        self.offset_t = None if offset is None else offset.t().contiguous()  # (G, N)
        self.unit = torch.ones(scale.shape[0], dtype=torch.bfloat16)

    def dense(self, x: torch.Tensor, bias: torch.Tensor | None, codes: torch.Tensor) -> torch.Tensor:
        """``x @ W^T + bias`` through ``F.linear`` on the weights decoded for this call (large batches)."""
        weight = codes.float().mul_(self.scale[:, self.column_group])
        if self.offset is not None:
            weight += self.offset[:, self.column_group]
        return F.linear(x.float(), weight, None if bias is None else bias.float()).to(x.dtype)

    def finish(
        self, out: torch.Tensor, xb: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """The zeros' share (shifted codes), the bias, and ``dtype``."""
        if self.offset_t is not None:
            out.addmm_(xb.float() @ self.group_inputs, self.offset_t)
        if bias is not None:
            out = out + bias
        return out.to(dtype)


def _split_runner(w: _GroupWeights, codes: torch.Tensor, ranges: list[tuple[int, int]]) -> RunFn:
    """One kernel call per input range (each inside one group), scaled by its group's float32 scales and summed."""
    calls = [(start, stop, codes[:, start:stop].contiguous()) for start, stop in ranges]  # the only copy kept
    call_scale = w.scale.t()[w.column_group[[start for start, _ in ranges]]][:, None, :].contiguous()  # (C, 1, N)

    def all_codes() -> torch.Tensor:
        return torch.cat([part for _, _, part in calls], dim=1)

    def run(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.shape[0] > MAX_KERNEL_ROWS:  # dequantize per call: costs about 1 / rows of the matmul
            return w.dense(x, bias, all_codes())
        xb = x.to(torch.bfloat16)
        if len(calls) == 1:
            out = torch.ops.aten._weight_int8pack_mm(xb, calls[0][2], w.unit).float().mul_(call_scale[0])
        else:
            parts = torch.stack([torch.ops.aten._weight_int8pack_mm(xb[:, a:b], c, w.unit) for a, b, c in calls])
            out = parts.float().mul_(call_scale).sum(0)
        return w.finish(out, xb, bias, x.dtype)

    return run


def _masked_runner(w: _GroupWeights, codes: torch.Tensor) -> RunFn:
    """One kernel row per (input row, group): the row masked to the group's inputs."""
    n, groups = w.scale.shape
    scale_t = w.scale.t().contiguous()  # (G, N)

    def run(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.shape[0]
        if rows * groups > MAX_KERNEL_ROWS:
            return w.dense(x, bias, codes)
        xb = x.to(torch.bfloat16)
        split = (xb[:, None, :] * w.masks).reshape(rows * groups, -1)
        part = torch.ops.aten._weight_int8pack_mm(split, codes, w.unit).float().reshape(rows, groups, n)
        return w.finish((part * scale_t).sum(1), xb, bias, x.dtype)

    return run
