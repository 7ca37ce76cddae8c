"""An energy ESTIMATE from the MACs each layer's kernel runs and the weight bytes it reads from DRAM.

Per-operation energies are the 45 nm figures of Horowitz, "Computing's energy problem (and what
we can do about it)", ISSCC 2014, Fig. 1.1.9. They are a rough, hardware-agnostic model, not a
measurement: use them to compare compressed variants of one model, never as joules on your CPU.

The estimate follows the kernel that really runs each layer (``estimate_model_energy``):

- a float layer runs dense: all its MACs at its dtype's precision, every weight byte read, zeros
  included (unstructured sparsity on dense kernels saves nothing here);
- a packed low-bit layer on a fast kernel (``nncompress.runtime.kernel_choice``) reads its codes
  at the kernel's bit width and computes at the kernel's precision; a sparse kernel that skips
  zeros runs only the non-zero MACs and reads the non-zeros plus their indices;
- a packed layer with no fast kernel decodes to a float32 cache and runs as a float32 layer;
- int8 layers (torch.ao, ONNX Runtime graphs) run int8 MACs and read one byte per weight;
- MACs outside weight layers (attention's activation products) run at float32;
- an embedding lookup reads only the rows it gathers, which is not counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.measure.flops import REFERENCE_MACS_ATTR, count_macs, count_macs_by_module
from nncompress.measure.size import stored_weight_counts

# picojoules per operation (Horowitz 2014, 45 nm, 0.9 V)
PJ_PER_MAC = {
    "fp32": 3.7 + 0.9,  # float32 multiply + add
    "fp16": 1.1 + 0.4,  # float16 multiply + add
    "bf16": 1.1 + 0.4,  # not in the table: taken as float16's (a narrower multiplier, the same adder width)
    "int32": 3.1 + 0.1,
    "int8": 0.2 + 0.03,  # 8-bit integer multiply + add
}
PJ_PER_DRAM_BYTE = 640.0 / 4  # 64-bit DRAM access of 1.3-2.6 nJ ~ 640 pJ per 32-bit word
SOURCE = "Horowitz, ISSCC 2014, 45nm per-operation energies (estimate, not a measurement)"
INDEX_BYTES = 4  # a sparse kernel's column index per non-zero (int32)
DTYPE_PRECISION = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}


@dataclass(frozen=True)
class EnergyEstimate:
    """Estimated energy of one batch-1 forward pass, split into compute and weight traffic."""

    compute_uj: float
    memory_uj: float
    total_uj: float
    precision: str  # the precision of most MACs ("fp32", "int8", ...)
    source: str = SOURCE
    macs_by_precision: dict[str, int] = field(default_factory=dict)
    weight_bytes_read: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerCost:
    """What one layer's kernel does per forward pass: MACs at a precision and weight bytes read."""

    macs: int
    precision: str
    weight_bytes: int


def estimate_energy(macs: int, weight_bytes: int, precision: str = "fp32") -> EnergyEstimate:
    """Compute energy = MACs x pJ/MAC at ``precision``; memory = weight bytes read once from DRAM."""
    return _estimate([LayerCost(macs, _check_precision(precision), weight_bytes)])


def _check_precision(precision: str) -> str:
    if precision not in PJ_PER_MAC:
        raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PJ_PER_MAC)}")
    return precision


def _estimate(costs: list[LayerCost]) -> EnergyEstimate:
    by_precision: Counter[str] = Counter()
    for cost in costs:
        by_precision[cost.precision] += cost.macs
    compute = sum(macs * PJ_PER_MAC[p] for p, macs in by_precision.items()) / 1e6
    read = sum(cost.weight_bytes for cost in costs)
    memory = read * PJ_PER_DRAM_BYTE / 1e6
    main = max(by_precision, key=by_precision.__getitem__) if any(by_precision.values()) else "fp32"
    return EnergyEstimate(compute, memory, compute + memory, main, SOURCE, dict(by_precision), int(read))


def _kernel_choice(module: nn.Module) -> Any:
    from nncompress.runtime import kernel_choice  # lazy: the runtime layer sits above measure

    return kernel_choice(module)


def _packed_cost(module: nn.Module, macs: int) -> LayerCost:
    """A packed layer (quantize/layers.py): on its fast kernel, or decoded to float32."""
    numel, nonzero = module.stored_weight_counts()
    bias = getattr(module, "bias", None)
    bias_bytes = 4 * bias.numel() if isinstance(bias, torch.Tensor) else 0  # biases stay float32
    numel -= bias_bytes // 4
    choice = _kernel_choice(module)
    if choice is None:
        return LayerCost(macs, "fp32", 4 * numel + bias_bytes)
    precision = getattr(choice, "compute", "bf16")  # the low-bit kernels here run bfloat16 activations
    if choice.skips_zeros:
        density = min(1.0, nonzero / max(1, numel))
        read = nonzero * (choice.weight_bits // 8 + INDEX_BYTES)
        return LayerCost(round(macs * density), precision, read + bias_bytes)
    return LayerCost(macs, precision, -(-numel * choice.weight_bits // 8) + bias_bytes)


def _int8_cost(module: nn.Module, macs: int) -> LayerCost | None:
    """torch.ao int8 modules (static or dynamic): int8 MACs, one byte per weight."""
    counts = stored_weight_counts(module)
    return None if counts is None else LayerCost(macs, "int8", counts[0])


def _graph_costs(module: nn.Module, macs: int) -> list[LayerCost]:
    """A whole graph in another runtime (ONNX Runtime int8): its rows' bits, MACs at the main format's."""
    rows = module.layer_rows()
    weight_bytes = sum(-(-row["params"] * (row.get("bits") or 32) // 8) for row in rows)
    int8 = any(row.get("format") == "int8" for row in rows)
    return [LayerCost(macs, "int8" if int8 else "fp32", weight_bytes)]


def _float_cost(module: nn.Module, params: list[nn.Parameter], macs: int) -> LayerCost:
    """A float layer on dense kernels: every MAC and every weight byte (``params``), zeros included."""
    weight = getattr(module, "weight", None)
    dtype = str(weight.dtype) if isinstance(weight, nn.Parameter) else "torch.float32"
    return LayerCost(macs, DTYPE_PRECISION.get(dtype, "fp32"), sum(p.numel() * p.element_size() for p in params))


def layer_costs(
    model: nn.Module, per_module_macs: dict[str, int], total_macs: int, *, rest: str = "fp32"
) -> list[LayerCost]:
    """One cost per weight-holding module (tied weights read once), plus the MACs no layer owns at ``rest``
    (int8 where an int8 kernel hid its MACs from the counter, which then sit in that remainder)."""
    costs, seen_params, inside = [], set(), []
    owned = 0
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        macs = per_module_macs.get(name, 0)
        if callable(getattr(module, "layer_rows", None)):  # a graph: everything under it is one cost
            costs += _graph_costs(module, max(0, total_macs - owned))
            owned = total_macs
            inside.append(f"{name}." if name else "")
            continue
        if callable(getattr(module, "stored_weight_counts", None)) and callable(getattr(module, "describe", None)):
            cost = _packed_cost(module, macs)
        elif (int8 := _int8_cost(module, macs)) is not None:
            cost = int8
            rest = "int8" if not macs else rest  # its kernel hid its MACs from the counter: they are in the rest
        elif isinstance(module, nn.Embedding):  # a lookup reads the rows it gathers (not counted)
            continue
        else:
            own = [p for p in module.parameters(recurse=False) if id(p) not in seen_params]
            if not own and not macs:
                continue
            seen_params.update(id(p) for p in own)
            costs.append(_float_cost(module, own, macs))
            owned += macs
            continue
        costs.append(cost)
        inside.append(f"{name}.")
        owned += macs
    if total_macs > owned:
        costs.append(LayerCost(total_macs - owned, rest, 0))
    return costs


def estimate_model_energy(
    model: nn.Module,
    example: Any,
    *,
    total_macs: int | None = None,
    per_module_macs: dict[str, int] | None = None,
) -> EnergyEstimate:
    """Energy of one forward pass of ``model`` on ``example`` (batch 1), following each layer's kernel;
    MACs already counted (``flops.count_macs_by_module``) may be given to skip the counting pass."""
    if per_module_macs is None:
        counted, per_module_macs = count_macs_by_module(model, example)
        total_macs = counted if total_macs is None else total_macs
    elif total_macs is None:
        total_macs = count_macs(model, example)
    # int8 kernels hide their MACs from the counter: a model carrying its float graph's MACs runs the rest in int8
    rest = "int8" if getattr(model, REFERENCE_MACS_ATTR, None) else "fp32"
    return _estimate(layer_costs(model, per_module_macs, total_macs, rest=rest))
