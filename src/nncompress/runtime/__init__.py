"""Run packed layers on the fastest correct kernel of the machine that loads them.

Weight-only packed Linears (``quantize/layers.py``) ask ``run_linear`` first in ``forward``; a
registered kernel that claims the layer runs it from weights it prepared once, else the layer runs
its reference path (decode to float32, ``F.linear``). The artifact is unchanged: kernels read the
layer's buffers. Kernels are picked by a rule (priority order, each checking exactness), not by
timing; see ``registry.py`` and each kernel module for the measurements behind the order.

- ``kernel_choice(module)``: the ``KernelChoice(name, weight_bits, skips_zeros)`` that runs a layer
  here, or None for the reference path (for energy and size estimates);
- ``use_kernels(False)`` / ``NNCOMPRESS_KERNELS=reference``: force the reference path;
- ``cpu_features()``: what the CPU can do (AVX2 / AVX-512, VNNI, BF16), read, never assumed.

Example:
    >>> import nncompress.runtime as rt
    >>> with rt.use_kernels(False):
    ...     rt.kernels_enabled()
    False
"""

from __future__ import annotations

from nncompress.runtime import csr, int4, int8  # noqa: F401  (register the built-in kernels, in priority order)
from nncompress.runtime.cpu import CpuFeatures, cpu_features
from nncompress.runtime.dispatch import kernel_choice, kernel_reasons, run_linear
from nncompress.runtime.registry import KERNELS, Kernel, KernelChoice, Unsupported, register_kernel
from nncompress.runtime.switch import kernels_enabled, use_kernels

__all__ = [
    "KERNELS",
    "CpuFeatures",
    "Kernel",
    "KernelChoice",
    "Unsupported",
    "cpu_features",
    "kernel_choice",
    "kernel_reasons",
    "kernels_enabled",
    "register_kernel",
    "run_linear",
    "use_kernels",
]
