"""Each tool's way to compress a model, returning a :class:`Candidate` the runner measures.

Every builder takes the task, its fp32 baseline (left untouched) and the group's settings, and
returns the compressed model together with the file its tool's users would save: our ``.ncz``,
``torch.save(state_dict)`` (torch, torchao, quanto, TensorLy-Torch), ``torch.save(model)``
(Torch-Pruning's advice), or the ``.onnx`` file (ONNX Runtime). A builder whose package is not
installed raises :class:`Missing`; the runner records the row as skipped.

The int8 peers reuse ``benchmarks/quantization.py`` (torch.ao FX, ONNX Runtime quantize_static)
and the recovery training reuses ``benchmarks/pruning.py``'s ``finetune``; the runner puts
``benchmarks/`` on ``sys.path`` before importing this module.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS
from lowrank import _conv_ranks
from pruning import finetune
from quantization import OnnxRuntimePeer, onnx_bytes, onnxruntime_peer, torch_ao_peer
from torch import nn

import nncompress as nc
from nncompress.base.data import calibration_inputs
from nncompress.core.recipe import check_order, describe_recipe
from nncompress.measure.flops import REFERENCE_MACS_ATTR, count_macs, mark_reference_macs
from nncompress.measure.size import artifact_bytes
from nncompress.prune.targets import prunable_weights

Save = Callable[[nn.Module, str], None]
ARTIFACTS = RESULTS / "artifacts" / "peers"


class Missing(RuntimeError):
    """A peer's package is not installed (``make peers`` installs them)."""


@dataclass
class Candidate:
    """One tool's compressed model, ready to be measured beside the others of its group.

    ``size_bytes`` is the compressed model's file as its tool saves it; ``baseline_size_bytes``
    the fp32 model saved the same way (so that "x smaller" compares like with like).
    """

    tool: str
    method: str
    model: nn.Module
    settings: dict[str, Any]
    seconds: float
    size_bytes: int
    baseline_size_bytes: int
    artifact: str | None = None
    notes: list[str] = field(default_factory=list)


def save_state_dict(model: nn.Module, path: str) -> None:
    torch.save(model.state_dict(), path)


def save_whole(model: nn.Module, path: str) -> None:
    torch.save(model, path)


def file_size(save: Save, model: nn.Module) -> int:
    """Bytes of the file ``save`` writes for ``model``."""
    with tempfile.TemporaryDirectory(prefix="nncompress-peers-") as d:
        path = os.path.join(d, "model")
        save(model, path)
        return os.path.getsize(path)


def _import(module: str, pip_name: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise Missing(f"{pip_name} is not installed ({e}); `make peers` installs the peer tools") from e


@contextmanager
def _quiet() -> Iterator[None]:
    """Peers' deprecation and tracer warnings, which the tables do not need."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _timed(build: Callable[[], nn.Module]) -> tuple[nn.Module, float]:
    t0 = time.perf_counter()
    model = build()
    return model, time.perf_counter() - t0


def _reference_macs(model: nn.Module, baseline: nn.Module, task: nc.Task) -> nn.Module:
    """Quantized kernels are invisible to the FLOP counter: record the float graph's MACs."""
    return mark_reference_macs(model, baseline, task.single_example())


def _teacher(baseline: nn.Module) -> nn.Module:
    return copy.deepcopy(baseline).eval().requires_grad_(False)


# --- ours -------------------------------------------------------------------------------------


def ours(task: nc.Task, baseline: nn.Module, method: str, recipe: list[nc.Step], seed: int = 0) -> Candidate:
    """Run ``recipe`` (the same loop as ``nc.compress``, without its measurements, so that the
    time taken is the compression alone), save the ``.ncz`` and load it back as users would."""
    check_order(recipe)
    ctx = nc.StepContext(task=task, teacher=_teacher(baseline), seed=seed)
    t0 = time.perf_counter()
    model = copy.deepcopy(baseline)
    for step in recipe:
        torch.manual_seed(seed)
        model = step.apply(model, ctx)
    seconds = time.perf_counter() - t0
    described = describe_recipe(recipe)
    artifact = ARTIFACTS / f"{task.name}--{method}.ncz"
    nc.save(model.eval(), artifact, metadata={"task": task.name, "method": method, "recipe": described, "seed": seed})
    loaded = nc.load(artifact).eval()
    if hasattr(model, REFERENCE_MACS_ATTR) and not hasattr(loaded, REFERENCE_MACS_ATTR):
        setattr(loaded, REFERENCE_MACS_ATTR, getattr(model, REFERENCE_MACS_ATTR))
    return Candidate(
        "nncompress",
        method,
        loaded,
        {"recipe": described, "seed": seed, "saved": ".ncz"},
        seconds,
        os.path.getsize(artifact),
        artifact_bytes(baseline),
        artifact=str(artifact.relative_to(RESULTS.parent.parent)),
        notes=list(ctx.log),
    )


# --- pruning ----------------------------------------------------------------------------------


def torch_prune_l1(task: nc.Task, baseline: nn.Module, sparsity: float, recovery: nc.FineTune) -> Candidate:
    """torch.nn.utils.prune.global_unstructured (L1) over the same weights our step targets, the
    same recovery training (the mask is a forward pre-hook, so pruned weights stay zero), then
    ``prune.remove`` as its tutorial does: the saved state_dict is dense."""
    import torch.nn.utils.prune as torch_prune

    def build() -> nn.Module:
        model = copy.deepcopy(baseline)
        names = [n.rpartition(".")[0] for n in prunable_weights(model)]
        params = [(model.get_submodule(n), "weight") for n in names]
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
        finetune(model, task, recovery, baseline)
        for module, name in params:
            torch_prune.remove(module, name)
        return model.eval()

    model, seconds = _timed(build)
    settings = {
        "api": "global_unstructured(L1Unstructured) + remove",
        "amount": sparsity,
        "recovery": recovery.describe(),
        "saved": "torch.save(state_dict)",
    }
    return Candidate(
        "torch.nn.utils.prune",
        f"l1-global-{round(100 * sparsity)}",
        model,
        settings,
        seconds,
        file_size(save_state_dict, model),
        file_size(save_state_dict, baseline),
    )


def torch_pruning(
    task: nc.Task, baseline: nn.Module, macs_reduction: float, recovery: nc.FineTune, global_pruning: bool
) -> Candidate:
    """Torch-Pruning's MetaPruner (DepGraph; L1 group magnitude), stepped until at least
    ``macs_reduction`` of the MACs are gone, then the same recovery training as ours."""
    tp = _import("torch_pruning", "torch-pruning")
    example = task.single_example()
    dense = count_macs(baseline, example)
    steps = 60  # each step removes ~1.6% of the prunable channels: the target is overshot by little

    def build() -> tuple[nn.Module, int]:
        model = copy.deepcopy(baseline).eval()
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=0.95,
            iterative_steps=steps,
            ignored_layers=[classifier],
            global_pruning=global_pruning,
        )
        taken = 0
        while 1 - count_macs(model, example) / dense < macs_reduction and taken < steps:
            pruner.step()
            taken += 1
        return finetune(model, task, recovery, baseline).eval(), taken

    t0 = time.perf_counter()
    (model, taken) = build()
    seconds = time.perf_counter() - t0
    scope = "global" if global_pruning else "local"
    settings = {
        "api": "MetaPruner",
        "importance": "GroupMagnitudeImportance(p=1)",
        "global_pruning": global_pruning,
        "pruner_steps": taken,
        "macs_reduction": round(1 - count_macs(model, example) / dense, 4),
        "recovery": recovery.describe(),
        "saved": "torch.save(model)",
    }
    return Candidate(
        "Torch-Pruning",
        f"channel-{scope}",
        model,
        settings,
        seconds,
        file_size(save_whole, model),
        file_size(save_whole, baseline),
    )


# --- int8 -------------------------------------------------------------------------------------


def torch_ao_static(task: nc.Task, baseline: nn.Module, calibration_batches: int) -> Candidate:
    """torch.ao FX static int8, x86 default qconfig mapping (``benchmarks/quantization.py``)."""
    calibration = calibration_inputs(task.train, calibration_batches, task.name)
    model, seconds = _timed(lambda: torch_ao_peer(baseline, calibration))
    settings = {
        "api": "prepare_fx/convert_fx",
        "qconfig_mapping": "x86 default",
        "calibration_batches": calibration_batches,
        "saved": "torch.save(state_dict)",
    }
    return Candidate(
        "torch.ao",
        "fx-static-int8",
        _reference_macs(model, baseline, task),
        settings,
        seconds,
        file_size(save_state_dict, model),
        file_size(save_state_dict, baseline),
    )


def onnxruntime_static(task: nc.Task, baseline: nn.Module, calibration_batches: int) -> Candidate:
    """ONNX Runtime quantize_static with its defaults (``benchmarks/quantization.py``)."""
    calibration = calibration_inputs(task.train, calibration_batches, task.name)
    t0 = time.perf_counter()
    model, size, fp32_size = onnxruntime_peer(baseline, calibration, task.single_example())
    seconds = time.perf_counter() - t0
    settings = {
        "api": "quant_pre_process + quantize_static (defaults: QDQ, QInt8, per-tensor, MinMax)",
        "calibration_batches": calibration_batches,
        "saved": ".onnx",
    }
    return Candidate(
        "ONNX Runtime", "quantize_static", _reference_macs(model, baseline, task), settings, seconds, size, fp32_size
    )


def onnxruntime_dynamic(task: nc.Task, baseline: nn.Module) -> Candidate:
    """ONNX Runtime quantize_dynamic with its defaults (int8 weights, activations per batch)."""
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="nncompress-peers-") as d:
        fp32, q = os.path.join(d, "fp32.onnx"), os.path.join(d, "int8.onnx")
        t0 = time.perf_counter()
        onnx_bytes(baseline.eval(), task.single_example(), fp32)
        with _quiet():
            quantize_dynamic(fp32, q)
        model = OnnxRuntimePeer(Path(q).read_bytes())
        seconds = time.perf_counter() - t0
        sizes = os.path.getsize(q), os.path.getsize(fp32)
    settings = {"api": "quantize_dynamic (defaults: QInt8 weights, per-tensor)", "saved": ".onnx"}
    return Candidate(
        "ONNX Runtime", "quantize_dynamic", _reference_macs(model, baseline, task), settings, seconds, *sizes
    )


def torch_ao_dynamic(task: nc.Task, baseline: nn.Module) -> Candidate:
    """torch.ao.quantization.quantize_dynamic on every nn.Linear (qint8)."""

    def build() -> nn.Module:
        with _quiet():
            return torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(baseline).eval(), {nn.Linear}, dtype=torch.qint8
            )

    model, seconds = _timed(build)
    settings = {"api": "quantize_dynamic({nn.Linear}, qint8)", "saved": "torch.save(state_dict)"}
    return Candidate(
        "torch.ao",
        "dynamic-int8",
        _reference_macs(model, baseline, task),
        settings,
        seconds,
        file_size(save_state_dict, model),
        file_size(save_state_dict, baseline),
    )


def inc_static(task: nc.Task, baseline: nn.Module, calibration_batches: int) -> Candidate:
    """Intel Neural Compressor 3.x static PTQ through PT2E (export, prepare, calibrate, convert),
    then ``torch.compile`` as its documentation does: the converted graph holds quantize /
    dequantize pairs that only Inductor fuses into int8 kernels."""
    export = _import("neural_compressor.torch.export", "neural-compressor").export
    logging.getLogger("neural_compressor").setLevel(logging.WARNING)  # one INFO line per rewritten node
    quant = _import("neural_compressor.torch.quantization", "neural-compressor")
    calibration = calibration_inputs(task.train, calibration_batches, task.name)
    example = task.single_example()

    def build() -> nn.Module:
        with _quiet():
            batch = torch.export.Dim("batch", min=1, max=4096)
            exported = export(
                copy.deepcopy(baseline).eval(),
                example_inputs=(example.repeat(2, 1, 1, 1),),
                dynamic_shapes=({0: batch},),
            )
            prepared = quant.prepare(exported, quant_config=quant.StaticQuantConfig())
            with torch.no_grad():
                for args in calibration:
                    prepared(*args)
            return quant.convert(prepared)

    converted, seconds = _timed(build)
    compiled = _Compiled(converted)
    settings = {
        "api": "export + prepare/convert(StaticQuantConfig()) + torch.compile",
        "calibration_batches": calibration_batches,
        "saved": "torch.save(state_dict) of the converted graph",
    }
    return Candidate(
        "neural-compressor",
        "pt2e-static-int8",
        _reference_macs(compiled, baseline, task),
        settings,
        seconds,
        file_size(save_state_dict, converted),
        file_size(save_state_dict, baseline),
        notes=["timed and evaluated compiled; compile time is not in the compression time"],
    )


class _Compiled(nn.Module):
    """A ``torch.compile``d graph behind a plain module, compiled lazily on the first call."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self._fn: Callable[..., Any] | None = None

    def train(self, mode: bool = True) -> _Compiled:
        """An exported graph refuses ``.train()``/``.eval()`` (torchao's opt-in re-exports the graph
        on every call): it is inference-only, so only this wrapper's flag changes."""
        self.training = mode
        return self

    def forward(self, *args: Any) -> Any:
        if self._fn is None:
            self._fn = torch.compile(self.graph, dynamic=True)
        with _quiet():
            return self._fn(*args)


# --- torchao and quanto -----------------------------------------------------------------------


def torchao(task: nc.Task, baseline: nn.Module, config: str) -> Candidate:
    """torchao ``quantize_`` with one of ``"int8-weight-only"``, ``"int8-dynamic"`` (int8
    activations and weights) or ``"int4-weight-only"`` (IntxWeightOnlyConfig, int4, groups of 32:
    ``Int4WeightOnlyConfig`` needs a package not on PyPI). torchao quantizes nn.Linear only."""
    q = _import("torchao.quantization", "torchao")
    from torchao.quantization.granularity import PerGroup

    configs = {
        "int8-weight-only": q.Int8WeightOnlyConfig,
        "int8-dynamic": q.Int8DynamicActivationInt8WeightConfig,
        "int4-weight-only": lambda: q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)),
    }
    if config not in configs:
        raise ValueError(f"torchao config {config!r} is not benchmarked; accepted: {', '.join(configs)}")
    made = configs[config]()

    def build() -> nn.Module:
        model = copy.deepcopy(baseline).eval()
        with _quiet():
            q.quantize_(model, made)
        return model

    model, seconds = _timed(build)
    settings = {"config": repr(made), "saved": "torch.save(state_dict)"}
    return Candidate(
        "torchao",
        config,
        _reference_macs(model, baseline, task),
        settings,
        seconds,
        file_size(save_state_dict, model),
        file_size(save_state_dict, baseline),
    )


def quanto(task: nc.Task, baseline: nn.Module, bits: int) -> Candidate:
    """optimum-quanto weight-only qint8 / qint4 (``quantize`` then ``freeze``)."""
    oq = _import("optimum.quanto", "optimum-quanto")
    if bits not in (4, 8):
        raise ValueError(f"quanto bits={bits} is not benchmarked; accepted: 4, 8")
    weights = oq.qint8 if bits == 8 else oq.qint4

    def build() -> nn.Module:
        model = copy.deepcopy(baseline).eval()
        with _quiet():
            oq.quantize(model, weights=weights)
            oq.freeze(model)
        return model

    model, seconds = _timed(build)
    settings = {"api": f"quantize(weights=qint{bits}) + freeze", "saved": "torch.save(state_dict)"}
    return Candidate(
        "optimum-quanto",
        f"w{bits}",
        _NoGrad(_reference_macs(model, baseline, task)),
        settings,
        seconds,
        file_size(save_state_dict, model),
        file_size(save_state_dict, baseline),
        notes=["run under torch.no_grad: its int4 path fails under torch.inference_mode (PEERS.md)"],
    )


class _NoGrad(nn.Module):
    """Runs the wrapped model under ``torch.no_grad`` outside inference mode."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        setattr(self, REFERENCE_MACS_ATTR, getattr(inner, REFERENCE_MACS_ATTR))

    def forward(self, *args: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return self.inner(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))


# --- low rank ---------------------------------------------------------------------------------


def tensorly_torch(
    task: nc.Task, baseline: nn.Module, ours_model: nn.Module, kind: str, recovery: nc.FineTune
) -> Candidate:
    """TensorLy-Torch ``FactorizedConv.from_conv`` (factorized implementation) at the same
    per-layer ranks as ``ours_model`` (``benchmarks/lowrank.py``'s ``_conv_ranks``), then the same
    recovery training."""
    tltorch = _import("tltorch", "tensorly-torch")
    ranks = _conv_ranks(ours_model, kind)
    if not ranks:
        raise ValueError(f"our {kind} model has no factorized convolution to take ranks from")

    def build() -> nn.Module:
        torch.manual_seed(0)
        model = copy.deepcopy(baseline)
        for name, rank in ranks.items():
            conv = model.get_submodule(name)
            tl_rank = [rank[0], rank[1], *conv.kernel_size] if kind == "tucker" else rank
            with _quiet():  # its SVD start asks small modes for more vectors than they have
                new = tltorch.FactorizedConv.from_conv(
                    conv, rank=tl_rank, factorization=kind, implementation="factorized"
                )
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)
        return finetune(model, task, recovery, baseline).eval()

    model, seconds = _timed(build)
    settings = {
        "api": "FactorizedConv.from_conv(implementation='factorized')",
        "factorization": kind,
        "ranks": {k: list(v) if isinstance(v, tuple) else v for k, v in ranks.items()},
        "recovery": recovery.describe(),
        "saved": "torch.save(state_dict)",
    }
    return Candidate(
        "tensorly-torch",
        kind,
        model,
        settings,
        seconds,
        file_size(save_state_dict, model),
        file_size(save_state_dict, baseline),
    )
