"""8-bit kernel: aten's ``_weight_int8pack_mm`` (int8 weights, one scale per output row) with
bfloat16 activations.

Runs layers exact on a 256-level grid: 5- to 8-bit uniform codes per channel, per tensor or per
group (an LM head packed at 8 bits in groups of 128), and what the 4-bit kernel declined among
lower widths (an output width not divisible by 16, inputs not divisible by 32). Codes minus an
integer zero that fit in int8 are multiplied as they are; otherwise (8-bit affine codes) they are
shifted by 128 and the zeros' share is added back as ``scale * (128 - zero) * sum(x)`` per group.
The kernel takes one bf16 scale per output row, which would round 8-bit weights by up to half a
step, so it gets unit scales and the float32 scales multiply its output: with G groups per row,
each input row becomes G kernel rows (the row masked to one group's inputs), whose outputs are
scaled per group and summed. The weights it multiplies are exact; outputs round to bf16.

Measured here (AMD EPYC AVX-512, one thread, batch 1, interleaved medians, noisy shared machine,
preliminary): 1536x576 55-59 us vs fp32 ``F.linear`` 76-93 us, 576x1536 55-57 vs 65-73 us, the
49152x576 LM head 10.0 ms vs 23-26 ms; at 128 rows (prefill) 8.7 vs 7.8 ms and 8.0 vs 7.0 ms
(10-15% slower; at 64 rows on 128-1024 wide layers 13-140% slower, so above ``MAX_KERNEL_ROWS``
rows the int8 codes are dequantized per call and run through ``F.linear``). float32 activations
(no bf16 cast) were 12-15x slower than ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.runtime.checks import check_matches, claim_grid
from nncompress.runtime.cpu import CpuFeatures
from nncompress.runtime.registry import Kernel, RunFn, Unsupported, register_kernel

SHIFT = 128  # codes in [0, 255] shifted into int8
MAX_GROUPS = 16  # scale groups per row run as that many kernel rows; more cost more than they save
MAX_KERNEL_ROWS = 32  # more kernel rows: codes dequantized per call and F.linear (the kernel was 10-50% slower)


def available(cpu: CpuFeatures) -> str | None:
    """None when the kernel can run here, else why not."""
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return f"torch {torch.__version__} has no _weight_int8pack_mm"
    if not (cpu.x86 and cpu.avx2):
        return f"needs an x86 CPU with AVX2 or AVX-512, this is {cpu.describe()}"
    return None


K_MULTIPLE = 16  # input widths _weight_int8pack_mm handles (measured: 8, 24, 40, 72, 136 crash at 2+ rows)


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
            raise Unsupported(f"{groups} scale groups per row (one kernel row per group: at most {MAX_GROUPS})")
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
        return _runner(codes, scale.contiguous(), offset, column_group)


def _runner(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, column_group: torch.Tensor) -> RunFn:
    """``x @ W^T`` with ``W = codes * scale (+ offset)`` per group: one kernel row per (input row, group)."""
    n, groups = scale.shape
    unit = torch.ones(n, dtype=torch.bfloat16)
    masks = (column_group[None, :] == torch.arange(groups)[:, None]).to(torch.bfloat16)  # (G, K)
    scale_t = scale.t().contiguous()  # (G, N)

    def run(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.shape[0]
        if rows * groups > MAX_KERNEL_ROWS:  # dequantize per call: costs about 1 / rows of the matmul
            dense = codes.float().mul_(scale[:, column_group])
            if offset is not None:
                dense += offset[:, column_group]
            return F.linear(x.float(), dense, None if bias is None else bias.float()).to(x.dtype)
        xb = x.to(torch.bfloat16)
        if groups == 1:
            out = torch.ops.aten._weight_int8pack_mm(xb, codes, unit).float() * scale_t
        else:  # row (m, g) holds x[m] on group g's inputs only
            split = (xb[:, None, :] * masks).reshape(rows * groups, -1)
            part = torch.ops.aten._weight_int8pack_mm(split, codes, unit).float().reshape(rows, groups, n)
            out = (part * scale_t).sum(1)
        if offset is not None:
            out += (xb.float() @ masks.float().t()) @ offset.t()
        if bias is not None:
            out = out + bias
        return out.to(x.dtype)

    return run
