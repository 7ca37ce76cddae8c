"""The comparison groups: one (task, technique), our method and each peer's at matched settings.

A group's ``headline`` names the figure its winner is judged on (see ``_table.mark_winners``):
``"metric"`` where the settings already match the resource (same sparsity, MACs, ranks),
``"latency"`` or ``"size"`` where the resource differs between tools and the metric should not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from _tools import (
    Candidate,
    inc_static,
    onnxruntime_dynamic,
    onnxruntime_static,
    ours,
    quanto,
    tensorly_torch,
    torch_ao_dynamic,
    torch_ao_static,
    torch_prune_l1,
    torch_pruning,
    torchao,
)
from torch import nn

import nncompress as nc

# builder(task, baseline, candidates built so far in the group) -> Candidate
Builder = Callable[[nc.Task, nn.Module, list[Candidate]], Candidate]
HEADLINES = ("metric", "latency", "size")


@dataclass(frozen=True)
class Budget:
    """Training budgets (epochs) every tool of a group gets alike, and calibration batches."""

    mlp_epochs: float = 8.0
    structured_epochs: float = 3.0
    tucker_epochs: float = 2.0
    cp_epochs: float = 1.0
    calibration_batches: int = 8

    @classmethod
    def quick(cls) -> Budget:
        return cls(mlp_epochs=0.05, structured_epochs=0.02, tucker_epochs=0.02, cp_epochs=0.02, calibration_batches=2)


@dataclass(frozen=True)
class Group:
    """One (task, technique) comparison: ``builders`` run in order, ours first."""

    task: str
    technique: str
    headline: str
    matched: str  # the matched setting, in words (goes to the table)
    builders: tuple[Builder, ...]
    quick: bool = True  # part of --quick (each peer code path is in at least one quick group)

    def __post_init__(self) -> None:
        if self.headline not in HEADLINES:
            raise ValueError(f"headline={self.headline!r} is not known; accepted: {', '.join(HEADLINES)}")


def _ours(method: str, recipe: list[nc.Step]) -> Builder:
    return lambda task, base, _done: ours(task, base, method, recipe)


def _first_ours(done: list[Candidate]) -> nn.Module:
    return next(c.model for c in done if c.tool == "nncompress")


def groups(budget: Budget) -> list[Group]:
    """Every group, in table order."""
    b = budget
    cal = b.calibration_batches
    mlp_ft = nc.FineTune(epochs=b.mlp_epochs, lr=2e-3)
    kd = nc.Distill(epochs=b.structured_epochs, lr=2e-3)
    tucker_kd, cp_kd = nc.Distill(epochs=b.tucker_epochs, lr=1e-3), nc.Distill(epochs=b.cp_epochs, lr=3e-4)
    static = nc.StaticInt8Quantize(calibration_batches=cal)
    out: list[Group] = []
    for task in ("fmnist-lenet5", "fmnist-resnet"):
        out.append(
            Group(
                task,
                "int8-static",
                "latency",
                f"static int8, {cal} calibration batches",
                (
                    _ours("int8-static", [static]),
                    lambda t, m, _d: torch_ao_static(t, m, cal),
                    lambda t, m, _d: onnxruntime_static(t, m, cal),
                    lambda t, m, _d: inc_static(t, m, cal),
                ),
                quick=task == "fmnist-lenet5",
            )
        )
    for task in ("fmnist-mlp", "fmnist-vit"):
        out.append(
            Group(
                task,
                "int8-dynamic",
                "latency",
                "int8 weights, activations quantized per batch",
                (
                    _ours("int8-dynamic", [nc.DynamicInt8Quantize()]),
                    # per-tensor weight scales: ONNX Runtime quantize_dynamic's default granularity
                    _ours("int8-dynamic-tensor", [nc.DynamicInt8Quantize(per_channel=False)]),
                    lambda t, m, _d: torch_ao_dynamic(t, m),
                    lambda t, m, _d: torchao(t, m, "int8-dynamic"),
                    lambda t, m, _d: onnxruntime_dynamic(t, m),
                ),
                quick=task == "fmnist-mlp",
            )
        )
    out += [
        Group(
            "fmnist-vit",
            "weight-only-int8",
            "size",
            "8-bit weights, float activations",
            (
                _ours("w8", [nc.WeightQuantize(bits=8)]),
                lambda t, m, _d: torchao(t, m, "int8-weight-only"),
                lambda t, m, _d: quanto(t, m, 8),
            ),
            quick=False,
        ),
        Group(
            "fmnist-vit",
            "weight-only-int4",
            "size",
            "4-bit weights, float activations",
            (
                _ours("w4", [nc.WeightQuantize(bits=4, rest_bits=8)]),
                lambda t, m, _d: torchao(t, m, "int4-weight-only"),
                lambda t, m, _d: quanto(t, m, 4),
            ),
        ),
    ]
    out += [
        Group(
            "fmnist-mlp",
            "unstructured-90",
            "metric",
            "90% of the hidden layers' weights zero, same fine-tune",
            (
                _ours("magnitude-global-90", [nc.MagnitudePrune(sparsity=0.9, scope="global"), mlp_ft]),
                lambda t, m, _d: torch_prune_l1(t, m, 0.9, mlp_ft),
            ),
        ),
        Group(
            "fmnist-resnet",
            "structured-macs80",
            "metric",
            ">= 80% of MACs removed, same KD recovery",
            (
                _ours("channel-global-macs80", [nc.ChannelPrune(macs_reduction=0.8, scope="global"), kd]),
                _ours(
                    "channel-layer-taylor-macs80",
                    [nc.ChannelPrune(macs_reduction=0.8, scope="layer", criterion="taylor"), kd],
                ),
                lambda t, m, _d: torch_pruning(t, m, 0.8, kd, global_pruning=True),
                lambda t, m, _d: torch_pruning(t, m, 0.8, kd, global_pruning=False),
            ),
        ),
        Group(
            "fmnist-resnet",
            "tucker",
            "metric",
            "Tucker-2 at the same per-layer ranks, same KD recovery",
            (
                _ours("tucker-params30", [nc.TuckerFactorize(rank="params:0.3"), tucker_kd]),
                lambda t, m, d: tensorly_torch(t, m, _first_ours(d), "tucker", tucker_kd),
            ),
        ),
        Group(
            "fmnist-resnet",
            "cp",
            "metric",
            "CP at the same per-layer ranks, same KD recovery",
            (
                _ours("cp-params25", [nc.CPFactorize(rank="params:0.25"), cp_kd]),
                lambda t, m, d: tensorly_torch(t, m, _first_ours(d), "cp", cp_kd),
            ),
            quick=False,
        ),
    ]
    return out
