"""4-bit kernel: aten's ``_weight_int4pack_mm_for_cpu`` with bfloat16 activations.

Runs every layer whose weight is exact on a 16-level affine grid (``grid.py``): 2-, 3- and 4-bit
uniform codes (symmetric or affine, integer or fractional zeros), binary signs (2 levels) and
codebooks whose centroids are evenly spaced. The kernel computes ``(q - 8) * scale + zero`` per
group of ``g`` inputs, ``g`` in 32, 64, 128 or 256: a layer group (ragged last group included)
maps onto the largest such ``g`` dividing both its group size and the layer's inputs, by repeating
its scales (group 128 on 576 inputs: kernel group 64). Layers with one scale per row run with unit
kernel scales and the float32 scale applied to the output, so their weights stay exact. Needs an
output width divisible by 16 and AVX-512: under ``ATEN_CPU_CAPABILITY=avx2`` the kernel took
650-785 us on 1536x576 where the int8 kernel took 64-67 us (the 49152x576 head: 18.8-19.6 ms
against 21.9-24.5 ms), so AVX2-only CPUs run 2- to 8-bit codes on the int8 kernel instead;
activations go to bfloat16 and back inside the call (with float32 activations the kernel was
5-30x slower than ``F.linear``).

Measured here (AMD EPYC, AVX-512 VNNI/BF16, one thread, batch 1, interleaved medians, noisy shared
machine; ``/tmp`` scratch, figures preliminary): 1536x576 54 us vs fp32 ``F.linear`` 76 us,
576x1536 54 vs 65 us, 49152x576 (the LM head) 3.6 ms vs 23.2 ms; at 128 rows (prefill) 7.3 vs
7.8 ms and 7.2 vs 7.0 ms: never clearly slower, so it runs at every batch size.
"""

from __future__ import annotations

import torch
from torch import nn

from nncompress.runtime.checks import check_matches, claim_grid
from nncompress.runtime.cpu import CpuFeatures
from nncompress.runtime.registry import Kernel, RunFn, Unsupported, register_kernel

KERNEL_GROUPS = (256, 128, 64, 32)  # group sizes the kernel accepts, largest (fewest scales) first
N_MULTIPLE = 16  # the packing's tile of output rows
OFFSET = 8  # the kernel's implicit zero: w = (q - 8) * scale + zero


def available(cpu: CpuFeatures) -> str | None:
    """None when the kernel can run here, else why not."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return f"torch {torch.__version__} has no _weight_int4pack_mm_for_cpu"
    if not (cpu.x86 and cpu.avx512):
        return f"needs AVX-512 (on AVX2 the int8 kernel is faster), this is {cpu.describe()}"
    return None


@register_kernel
class Int4PackKernel(Kernel):
    """Up to 16-level codes, bfloat16 activations, group scales and zeros in bfloat16."""

    name = "int4pack-bf16"
    weight_bits = 4
    priority = 10

    def prepare(self, layer: nn.Module, cpu: CpuFeatures) -> RunFn:
        grid = claim_grid(layer, 2**self.weight_bits, available(cpu))
        n, k = grid.shape
        if n % N_MULTIPLE:
            raise Unsupported(f"{n} outputs (the kernel needs a multiple of {N_MULTIPLE})")
        g = next((g for g in KERNEL_GROUPS if grid.group_size % g == 0 and k % g == 0), None)
        if g is None:
            raise Unsupported(f"no kernel group in {KERNEL_GROUPS} divides group {grid.group_size} and {k} inputs")
        codes, scale, zero = grid.grouped(g)  # (N, K/g, g), (N, K/g, 1), (N, K/g, 1)
        if grid.groups == 1:  # one scale per row: exact codes in the kernel, the float32 scale after it
            post = grid.scale[:, 0].contiguous()
            kernel_scale, kernel_zero = torch.ones_like(scale), OFFSET - zero
        else:
            post = None
            kernel_scale, kernel_zero = scale, (OFFSET - zero) * scale
        scales_zeros = torch.cat([kernel_scale, kernel_zero], dim=-1).to(torch.bfloat16)  # (N, K/g, 2)
        rounded = scales_zeros.float()
        weight = (codes.float() - OFFSET).mul_(rounded[..., :1]).add_(rounded[..., 1:])
        check_matches(layer, weight if post is None else weight * post[:, None, None], scale, self.name)
        scales_zeros = scales_zeros.transpose(0, 1).contiguous()  # (K/g, N, 2), as the kernel takes them
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(grid.codes.to(torch.int32), 1)

        def run(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), packed, g, scales_zeros)
            if post is not None:
                out = out.float() * post
            if bias is not None:  # bf16 + float32 promotes to float32 in the one add
                return torch.add(bias, out).to(x.dtype)
            return out.to(x.dtype)

        return run
