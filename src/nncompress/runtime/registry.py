"""The kernel registry: each kernel family says which packed layers it runs and prepares them.

A kernel (a ``Kernel`` subclass registered with ``@register_kernel``) checks whether it can run a
layer on this CPU and, if so, packs the layer's weights once: ``prepare`` returns a function of
the (M, K) activations, or raises ``Unsupported`` naming why not. Every ``prepare`` also checks
that its weights equal the layer's decoded weights within a small fraction of the format's grid
step (``checks.py``), so a kernel changes what the model computes only by bfloat16 rounding.

Kernels are tried in ``priority`` order, lowest first (``dispatch.py``): the order follows the
measurements in each kernel module's docstring (batch 1, SmolLM2-135M layer shapes): the 4-bit
kernel reads the fewest bytes and was the fastest wherever it applies (AVX-512), then the 8-bit
one, then CSR for very sparse layers no integer kernel runs exactly.

Example:
    >>> [k.name for k in kernels_by_priority()]  # doctest: +SKIP
    ['int4pack-bf16', 'int8pack-bf16', 'csr-fp32']
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from nncompress.runtime.cpu import CpuFeatures

RunFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (M, K) x, bias -> (M, N), x's dtype
ACT_DTYPES = (torch.float32, torch.bfloat16)


class Unsupported(Exception):
    """A kernel does not run a layer (the reason is the message)."""


@dataclass(frozen=True)
class KernelChoice:
    """What runs a packed layer, for energy and size estimates.

    Args:
        name: the registered kernel's name (e.g. ``"int4pack-bf16"``).
        weight_bits: bits the kernel reads per weight (not counting per-group scales).
        skips_zeros: True when zero weights are neither stored nor multiplied (a sparse kernel).
    """

    name: str
    weight_bits: int
    skips_zeros: bool


@dataclass(frozen=True)
class PreparedKernel:
    """A kernel bound to one layer's prepared weights: ``run(x2d, bias)`` computes ``x2d @ W^T + bias``
    in ``x2d``'s dtype (the bias added in the kernel's own epilogue, saving a pass)."""

    choice: KernelChoice
    run: RunFn


class Kernel(ABC):
    """One kernel family: claims layers it can run exactly and prepares their weights.

    Subclasses set ``name``, ``weight_bits``, ``priority`` (lower is tried first) and implement
    ``prepare`` (raise ``Unsupported`` with a reason for a layer they do not run).
    """

    name: ClassVar[str]
    weight_bits: ClassVar[int]
    skips_zeros: ClassVar[bool] = False
    priority: ClassVar[int]

    @abstractmethod
    def prepare(self, layer: nn.Module, cpu: CpuFeatures) -> RunFn:
        """The layer's weights packed for this kernel, as a function of (M, K) activations."""

    def choice(self) -> KernelChoice:
        """The introspection record of this kernel."""
        return KernelChoice(self.name, self.weight_bits, self.skips_zeros)


KERNELS: dict[str, Kernel] = {}


def register_kernel(cls: type[Kernel]) -> type[Kernel]:
    """Class decorator: add a kernel to the registry under its ``name``."""
    if cls.name in KERNELS:
        raise ValueError(f"a kernel named {cls.name!r} is already registered")
    KERNELS[cls.name] = cls()
    return cls


def kernels_by_priority() -> list[Kernel]:
    """The registered kernels in the order they are tried."""
    return sorted(KERNELS.values(), key=lambda k: k.priority)
