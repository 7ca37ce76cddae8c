"""An energy ESTIMATE from MACs by precision and weight bytes moved from DRAM.

Per-operation energies are the 45 nm figures of Horowitz, "Computing's energy problem (and what
we can do about it)", ISSCC 2014, Fig. 1.1.9. They are a rough, hardware-agnostic model, not a
measurement: use them to compare compressed variants of one model, never as joules on your CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# picojoules per operation (Horowitz 2014, 45 nm, 0.9 V)
PJ_PER_MAC = {
    "fp32": 3.7 + 0.9,  # float32 multiply + add
    "fp16": 1.1 + 0.4,  # float16 multiply + add
    "int32": 3.1 + 0.1,
    "int8": 0.2 + 0.03,  # 8-bit integer multiply + add
}
PJ_PER_DRAM_BYTE = 640.0 / 4  # 64-bit DRAM access of 1.3-2.6 nJ ~ 640 pJ per 32-bit word
SOURCE = "Horowitz, ISSCC 2014, 45nm per-operation energies (estimate, not a measurement)"


@dataclass(frozen=True)
class EnergyEstimate:
    """Estimated energy of one batch-1 forward pass, split into compute and weight traffic."""

    compute_uj: float
    memory_uj: float
    total_uj: float
    precision: str
    source: str = SOURCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_energy(macs: int, weight_bytes: int, precision: str = "fp32") -> EnergyEstimate:
    """Compute energy = MACs x pJ/MAC at ``precision``; memory = weight bytes read once from DRAM."""
    if precision not in PJ_PER_MAC:
        raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PJ_PER_MAC)}")
    compute = macs * PJ_PER_MAC[precision] / 1e6
    memory = weight_bytes * PJ_PER_DRAM_BYTE / 1e6
    return EnergyEstimate(compute, memory, compute + memory, precision)
