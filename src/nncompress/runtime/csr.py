"""Sparse kernel: a very sparse packed weight as a float32 CSR matrix (zeros neither stored nor multiplied).

For packed layers no integer kernel claimed (k-means codebooks off any grid, fp16 storage, more
than 16 groups of 8-bit codes) whose decoded weight is mostly zeros, as Deep Compression leaves
them: ``torch.sparse`` CSR with int32 indices and the decoded float32 values, so the result is
the reference path's up to summation order. Dense integer kernels go first: at 90% zeros a 4-bit
dense layer reads 0.5 byte per weight, CSR 0.8 (a float32 value and an int32 index per non-zero).

Measured here (AMD EPYC AVX-512, one thread, batch 1, interleaved medians, noisy shared machine,
preliminary), fp32 ``F.linear`` against CSR: at 95% zeros 300x784 18.7 vs 15.1 us, 1536x576 75.7
vs 39.7 us, 4096x4096 13.8 vs 3.7 ms; at 90% zeros 300x784 20.9 vs 24.4 us and 1536x576 107 vs
607 us (slower), 4096x4096 14.4 vs 8.0 ms. Hence the rule: at most ``MAX_DENSITY`` non-zeros, or
``MAX_DENSITY_LARGE`` on layers of at least ``LARGE`` weights.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from nncompress.runtime.cpu import CpuFeatures
from nncompress.runtime.registry import Kernel, RunFn, Unsupported, register_kernel

MAX_DENSITY = 0.05
MAX_DENSITY_LARGE = 0.10
LARGE = 2**20


@register_kernel
class CsrKernel(Kernel):
    """float32 CSR sparse-dense product for weights with few non-zeros."""

    name = "csr-fp32"
    weight_bits = 32
    skips_zeros = True
    priority = 40

    def prepare(self, layer: nn.Module, cpu: CpuFeatures) -> RunFn:
        if getattr(layer, "op", "") != "linear":
            raise Unsupported("not a Linear layer")
        weight = layer.decode_weight().detach().float().cpu()
        weight = weight.reshape(weight.shape[0], -1)
        density = int(weight.count_nonzero()) / max(weight.numel(), 1)
        limit = MAX_DENSITY_LARGE if weight.numel() >= LARGE else MAX_DENSITY
        if density > limit:
            raise Unsupported(f"{density:.1%} of weights non-zero (CSR is faster only up to {limit:.0%} here)")
        with warnings.catch_warnings():  # torch flags its CSR support as beta on every construction
            warnings.simplefilter("ignore", UserWarning)
            csr = weight.to_sparse_csr()
            csr = torch.sparse_csr_tensor(
                csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32), csr.values(), size=weight.shape
            )

        def run(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            out = (csr @ x.float().t()).t()
            if bias is not None:
                out = out + bias
            return out.to(x.dtype)

        return run
