"""Latency of an ONNX file in ONNX Runtime at batch 1 and batch N, timed beside PyTorch models.

Uses ``measure/latency.py``'s interleaved rounds (warm-up, alternating models, medians) on an
:class:`OrtModule`, an ``nn.Module`` around an ONNX Runtime session, so ONNX Runtime and PyTorch
are timed the same way in one process. Sessions do not spin (``session.intra_op.allow_spinning``
0): spinning threads would steal the cores PyTorch's turn needs on a small machine.

Example:
    >>> stats = onnx_latency("model.onnx", torch.randn(1, 1, 28, 28), others={"torch": model})  # doctest: +SKIP
    >>> stats["onnx"][64].median_ms, stats["torch"][64].median_ms  # doctest: +SKIP
    (1.04, 1.58)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.io.ort_session import ort_session
from nncompress.measure.latency import LatencyStats, interleaved_latency
from nncompress.tasks.task import repeat_batch, slice_batch


class OrtModule(nn.Module):
    """Run an ONNX model in ONNX Runtime (CPU); takes and returns torch tensors.

    Args:
        model: an ``.onnx`` path or the serialized model.
        threads: intra-op threads (0: ``torch.get_num_threads()`` now).
        spinning: let idle intra-op threads busy-wait (faster alone, unfair beside PyTorch).

    Example:
        >>> OrtModule("model.onnx")(torch.randn(2, 1, 28, 28)).shape  # doctest: +SKIP
        torch.Size([2, 10])
    """

    def __init__(self, model: str | os.PathLike | bytes, *, threads: int = 0, spinning: bool = False) -> None:
        super().__init__()
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an integer >= 0 (0: torch's thread count), got {threads!r}")
        self.threads = threads or torch.get_num_threads()
        self.session = ort_session(data, threads=self.threads, spinning=spinning)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"this ONNX model takes {len(self.input_names)} input(s), got {len(inputs)}")
        feeds = {n: x.detach().cpu().contiguous().numpy() for n, x in zip(self.input_names, inputs)}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def onnx_latency(
    model: str | os.PathLike | bytes | OrtModule,
    example_inputs: Any,
    *,
    batch_sizes: Sequence[int] = (1, 64),
    others: Mapping[str, nn.Module] | None = None,
    threads: int = 0,
    rounds: int = 5,
    runs: int = 50,
    min_seconds: float = 1.0,
) -> dict[str, dict[int, LatencyStats]]:
    """Median latency of the ONNX model (key ``"onnx"``) and of ``others`` at each batch size.

    Inputs of each size are the first sample of ``example_inputs`` repeated. All models are timed
    in ``rounds`` alternating rounds per batch size (``interleaved_latency``), so their ratios are
    fair on a machine whose speed drifts.

    Example:
        >>> onnx_latency("int8.onnx", x, others={"fp32 onnx": OrtModule("fp32.onnx")})["onnx"][1]  # doctest: +SKIP
        LatencyStats(batch_size=1, median_ms=0.043, ...)
    """
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)!r}")
    names = ["onnx", *(others or {})]
    if "onnx" in (others or {}):
        raise ValueError("others may not use the name 'onnx' (it is the ONNX model's key)")
    session = model if isinstance(model, OrtModule) else OrtModule(model, threads=threads)
    models = [session, *(others or {}).values()]
    one = slice_batch(example_inputs, 1)
    result: dict[str, dict[int, LatencyStats]] = {n: {} for n in names}
    for batch in batch_sizes:
        inputs = repeat_batch(one, batch)
        stats = interleaved_latency(models, inputs, batch_size=batch, rounds=rounds, runs=runs, min_seconds=min_seconds)
        for name, s in zip(names, stats):
            result[name][batch] = s
    return result
