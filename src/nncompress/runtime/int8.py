"""8-bit kernel: aten's ``_weight_int8pack_mm`` (int8 weights, one scale per output row) with
bfloat16 activations.

Runs layers exact on a 256-level grid with one scale and zero per output row: 5- to 8-bit uniform
codes per channel (or per tensor), and what the 4-bit kernel declined among lower widths (an
output width not divisible by 16, inputs not divisible by 32). Codes minus an integer zero that
fit in int8 are multiplied as they are; otherwise (8-bit affine codes) the codes are shifted by
128 and the zeros' share is added back as ``scale * (128 - zero) * sum(x)``. The kernel gets unit
scales and the float32 row scale multiplies its output, so the weights stay exact. Per-group
scales are not supported (the kernel has one scale per row): such layers keep the reference path.

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

from nncompress.runtime.checks import check_matches
from nncompress.runtime.cpu import CpuFeatures
from nncompress.runtime.grid import NotOnGrid, affine_grid
from nncompress.runtime.registry import Kernel, RunFn, Unsupported, register_kernel

SHIFT = 128  # codes in [0, 255] shifted into int8
MAX_KERNEL_ROWS = 32  # more rows: int8 codes dequantized per call and F.linear (the kernel was 10-50% slower)


def available(cpu: CpuFeatures) -> str | None:
    """None when the kernel can run here, else why not."""
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return f"torch {torch.__version__} has no _weight_int8pack_mm"
    if not (cpu.x86 and cpu.avx2):
        return f"needs an x86 CPU with AVX2 or AVX-512, this is {cpu.describe()}"
    return None


@register_kernel
class Int8PackKernel(Kernel):
    """Up to 256-level codes with one scale per output row, bfloat16 activations."""

    name = "int8pack-bf16"
    weight_bits = 8
    priority = 20

    def prepare(self, layer: nn.Module, cpu: CpuFeatures) -> RunFn:
        reason = available(cpu)
        if reason:
            raise Unsupported(reason)
        try:
            grid = affine_grid(layer, 2**self.weight_bits)
        except NotOnGrid as why:
            raise Unsupported(str(why)) from None
        if grid.groups != 1:
            raise Unsupported(f"{grid.groups} scale groups per row (the kernel takes one scale per output row)")
        n, k = grid.shape
        scale, zero = grid.scale[:, 0].contiguous(), grid.zero[:, 0]
        centered = grid.codes.float() - zero.round()[:, None]  # exact: |values| < 2^24 or not integral anyway
        if bool((zero == zero.round()).all()) and float(centered.min()) >= -128 and float(centered.max()) <= 127:
            codes, offset = centered.to(torch.int8), None
        else:
            codes, offset = (grid.codes.to(torch.int16) - SHIFT).to(torch.int8), (scale * (SHIFT - zero)).contiguous()
        weight = codes.float().mul_(scale[:, None])
        if offset is not None:
            weight += offset[:, None]
        check_matches(layer, weight.reshape(n, 1, k), scale.reshape(n, 1, 1), self.name)
        unit = torch.ones(n, dtype=torch.bfloat16)

        def run(x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > MAX_KERNEL_ROWS:  # dequantize per call: costs 1 / rows of the matmul
                dense = codes.float().mul_(scale[:, None])
                out = F.linear(x.float(), dense)
                if offset is not None:
                    out += x.float().sum(-1, keepdim=True) * offset
                return out.to(x.dtype)
            xb = x.to(torch.bfloat16)
            out = torch.ops.aten._weight_int8pack_mm(xb, codes, unit).float() * scale
            if offset is not None:
                out += xb.float().sum(-1, keepdim=True) * offset
            return out.to(x.dtype)

        return run
