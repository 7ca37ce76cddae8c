"""What the CPU that runs the model can do: torch's dispatch level and the instruction-set flags.

Kernels ask this before they claim a layer, so a model saved on an AVX-512 machine still runs
(on the reference path or a slower kernel) on an AVX2-only one. Nothing is assumed: the flags come
from ``torch.backends.cpu.get_cpu_capability()`` (what aten's vectorized kernels were dispatched
to, which also honours ``ATEN_CPU_CAPABILITY``) and, on Linux, ``/proc/cpuinfo``.

Example:
    >>> features = cpu_features()
    >>> features.capability in ("DEFAULT", "NO AVX", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256")  # doctest: +SKIP
    True
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's vector capabilities as torch dispatches them, plus the raw flags.

    Args:
        capability: ``torch.backends.cpu.get_cpu_capability()`` ("AVX512", "AVX2", "DEFAULT", ...).
        flags: instruction-set flags from /proc/cpuinfo (empty where it cannot be read).
        machine: ``platform.machine()`` ("x86_64", "aarch64", ...).
    """

    capability: str
    flags: frozenset[str]
    machine: str

    @property
    def x86(self) -> bool:
        """True on x86-64, where the aten int4/int8 CPU kernels are vectorized."""
        return self.machine.lower() in ("x86_64", "amd64")

    @property
    def avx2(self) -> bool:
        """torch dispatches AVX2 (or better) kernels."""
        return self.capability in ("AVX2", "AVX512")

    @property
    def avx512(self) -> bool:
        """torch dispatches AVX-512 kernels."""
        return self.capability == "AVX512"

    @property
    def avx512_vnni(self) -> bool:
        """AVX-512 with VNNI (int8 dot products) on an AVX-512 dispatch."""
        return self.avx512 and "avx512_vnni" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        """AVX-512 with native bfloat16 conversions and dot products on an AVX-512 dispatch."""
        return self.avx512 and "avx512_bf16" in self.flags

    def describe(self) -> str:
        """One line for logs and benchmark rows, e.g. ``"x86_64 AVX512 (vnni, bf16)"``."""
        extras = [name for name, on in (("vnni", self.avx512_vnni), ("bf16", self.avx512_bf16)) if on]
        return f"{self.machine} {self.capability}" + (f" ({', '.join(extras)})" if extras else "")


def _proc_flags() -> frozenset[str]:
    """The ``flags`` line of /proc/cpuinfo (empty on systems without it)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """The features of this machine's CPU (read once per process)."""
    return CpuFeatures(
        capability=str(torch.backends.cpu.get_cpu_capability()),
        flags=_proc_flags(),
        machine=platform.machine(),
    )
