"""``--to executorch``: a ``.pte`` program for ExecuTorch, delegated to XNNPACK.

``torch.export`` of :func:`~nncompress.deploy.prepare.torch_graph`'s module (batch axis dynamic up
to ``max_batch``), then ``to_edge_transform_and_lower`` with the XNNPACK partitioner. int8-static
models arrive as PT2E quantize/dequantize pairs with our scales, which XNNPACK runs as its int8
convolutions and fully-connected layers (no recalibration). XNNPACK has no weight-only low-bit
format (its 4-bit path also quantizes activations dynamically), so packed weight layers are
exported as their dequantized fp32 weights, each named in a note.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from nncompress.deploy.targets import Exported, Target, register_target


class ExecuTorchModule(nn.Module):
    """Runs a ``.pte`` program's ``forward`` in ExecuTorch; splits batches above the bound it holds
    (``max_batch``, halved when the program refuses a batch that large)."""

    def __init__(self, path: str | os.PathLike, *, max_batch: int) -> None:
        super().__init__()
        from executorch.runtime import Runtime

        self.program = Runtime.get().load_program(Path(path))
        self.method = self.program.load_method("forward")
        self.max_batch = max_batch

    def forward(self, *inputs: torch.Tensor) -> Any:
        n = inputs[0].shape[0]
        if n <= self.max_batch:  # one call, no slicing or concatenation: ~6 of a 16 us batch-1 MLP call
            try:
                outs = self.method.execute([x.contiguous() for x in inputs])  # fresh tensors, not the arena's
                return outs[0] if len(outs) == 1 else tuple(outs)
            except RuntimeError:
                if n == 1:
                    raise
                self.max_batch = max(1, n // 2)
        chunks = []
        start = 0
        while start < n:
            part = [x[start : start + self.max_batch].contiguous() for x in inputs]
            try:
                chunks.append(self.method.execute(part))
            except RuntimeError:
                if self.max_batch == 1 or part[0].shape[0] == 1:
                    raise
                # the planned input buffer can be smaller than the exported bound (an int8 conv graph
                # bounded at 16..32 held 15 samples): run smaller chunks from now on
                self.max_batch = max(1, part[0].shape[0] // 2)
                continue
            start += part[0].shape[0]
        outs = [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]
        return outs[0] if len(outs) == 1 else tuple(outs)


def batch_trace(example: tuple[torch.Tensor, ...], max_batch: int) -> tuple[tuple[torch.Tensor, ...], tuple]:
    """Example inputs of batch 2 (batch 1 would be specialized by ``torch.export``) and the
    ``dynamic_shapes`` that leave their batch axis free in [1, 2 * max_batch]."""
    trace = tuple(t[:2] if t.shape[0] >= 2 else torch.cat([t, t]) for t in example)
    # bound with headroom: memory planning came out one sample short of the bound (16 -> 15) in a test
    batch = torch.export.Dim("batch", min=1, max=2 * max_batch)
    return trace, (tuple({0: batch} for _ in trace),)


class Positional(nn.Module):
    """``forward(*tensors)``: one dynamic-shape spec shape fits every model (``torch.export`` matches
    ``dynamic_shapes`` to the signature)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.model(*inputs)


def lower_to_pte(module: nn.Module, example: tuple[torch.Tensor, ...], *, max_batch: int) -> tuple[bytes, list[str]]:
    """``torch.export`` (batch axis dynamic in [1, max_batch], else fixed) -> XNNPACK-delegated ``.pte`` bytes."""
    edge, notes = lower_to_edge(module, example, max_batch=max_batch)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return edge.to_executorch().buffer, notes


def lower_to_edge(module: nn.Module, example: tuple[torch.Tensor, ...], *, max_batch: int) -> tuple[Any, list[str]]:
    """``module`` exported and lowered with the XNNPACK partitioner: the ``EdgeProgramManager`` and notes."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    notes = []
    module = Positional(module).eval()
    trace, dynamic = batch_trace(example, max_batch)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(module, trace, dynamic_shapes=dynamic, strict=False)
        except Exception as e:  # noqa: BLE001 - a data-dependent batch: fix it at the example's size
            program = torch.export.export(module, example, strict=False)
            notes.append(f"batch axis fixed at {example[0].shape[0]} (torch.export: {str(e).splitlines()[0][:120]})")
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    left = _left_out(edge)
    if left:
        notes.append(f"{len(left)} op(s) left outside XNNPACK on portable kernels: {', '.join(left[:4])}")
    return edge, notes


def delegated_ops(edge: Any) -> tuple[int, dict[str, int], dict[str, int]]:
    """(XNNPACK subgraphs, ``{op: n}`` inside them, ``{op: n}`` outside) of a lowered program."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    ops = info.delegation_by_operator.values()
    inside = {op.op_type: op.delegated for op in ops if op.delegated}
    outside = {op.op_type: op.non_delegated for op in ops if op.non_delegated}
    return info.num_delegated_subgraphs, inside, outside


def _left_out(edge: Any) -> list[str]:
    """Compute operators the XNNPACK partitioner did not take (they run on portable kernels)."""
    kinds = ("convolution", "addmm", ".mm.", "linear", "add.Tensor", "mul.Tensor", "quantize")
    graph = edge.exported_program().graph
    return [n.name for n in graph.nodes if n.op == "call_function" and any(k in str(n.target) for k in kinds)]


@register_target
class ExecuTorchTarget(Target):
    """ExecuTorch ``.pte`` with the XNNPACK delegate (phones, embedded Linux)."""

    name: ClassVar[str] = "executorch"
    extra: ClassVar[str] = "executorch"
    modules: ClassVar[tuple[str, ...]] = ("executorch", "onnx")
    suffix: ClassVar[str] = ".pte"
    description: ClassVar[str] = (
        "ExecuTorch + XNNPACK: int8 QDQ as PT2E int8 with our scales; weight-only codes dequantized"
    )

    def export(
        self, model: nn.Module, path: str | os.PathLike, example_inputs: Any, *, max_batch: int = 1024
    ) -> Exported:
        from nncompress.deploy.prepare import torch_graph
        from nncompress.io.atomic import atomic_write_bytes

        module, layers, notes = torch_graph(model, self.name)
        example = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        if not all(isinstance(t, torch.Tensor) for t in example):
            raise ValueError("--to executorch takes models whose inputs are tensors (positional); got keyword inputs")
        data, lower_notes = lower_to_pte(module, example, max_batch=max_batch)
        atomic_write_bytes(Path(path), data)
        return Exported(str(path), len(data), ExecuTorchModule(path, max_batch=max_batch), layers, notes + lower_notes)
