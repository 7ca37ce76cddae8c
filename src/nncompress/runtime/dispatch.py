"""Routing a packed layer's forward through its kernel: choose once, cache, run.

The choice is **a rule, not a timing**: a layer with fewer than ``MIN_KERNEL_WEIGHTS`` weights
keeps the reference path (measured below); otherwise kernels are tried in their registered
``priority`` order (lowest first) and the first that claims the layer runs it (see ``registry``);
a kernel may still hand large batches to a dequantize-and-``F.linear`` path of its own (int8).
Prepared kernels live in a module dictionary keyed by the layer's ``id`` (the entry leaves when the
layer is collected), together with the identity and in-place version of the layer's buffers: a
replaced or modified buffer (``load_state_dict``, ``.to()``, an in-place edit) rebuilds them on the
next call, as the layer's own float32 cache does. Nothing of it is a buffer or an attribute of the
layer, so artifacts, pickles and deep copies never carry it.

Example:
    >>> kernel_choice(nn.Linear(4, 4)) is None
    True
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.runtime.cpu import cpu_features
from nncompress.runtime.registry import ACT_DTYPES, KernelChoice, PreparedKernel, Unsupported, kernels_by_priority
from nncompress.runtime.switch import kernels_enabled

# Layers with fewer weights stay on the reference path: per-call overhead decides there. Measured
# here (one thread, batch 1, interleaved medians): hot in cache, 128x128 fp32 3.4 us, int4 7.1 us,
# int8 8.2 us; 256x256 6.3 / 9.8 / 11.1 us; 512x512 47.9 / 40.7 / 45.0 us. Inside a model the
# weights come from memory: SmolLM2's 192x576 k/v projections (110k weights) took 148 us in fp32
# per decode step against 23 us for a 576x576 int4 layer, so the bar sits at 2^16 weights.
MIN_KERNEL_WEIGHTS = 2**16

# --- choosing and caching ---------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    keys: tuple[Any, ...]
    prepared: PreparedKernel | None
    reasons: tuple[str, ...]


# Keyed by id(layer), not a WeakKeyDictionary (whose lookups build a weak reference on every call);
# an entry leaves with its layer (weakref.finalize runs before the id can be reused).
_STATES: dict[int, _State] = {}


def _buffer_keys(layer: nn.Module) -> tuple[Any, ...]:
    """Identity and in-place version of the layer's buffers (inference tensors: identity only).

    Read from ``_buffers`` directly: this runs on every forward, and ``buffers()`` costs a generator."""
    try:
        return tuple((id(t), t._version) for t in layer._buffers.values() if t is not None)
    except RuntimeError:  # inference tensors track no version
        return tuple((id(t), None) for t in layer._buffers.values() if t is not None)


def _prepare(layer: nn.Module, keys: tuple[Any, ...]) -> _State:
    shape = getattr(layer, "weight_shape", ())
    if math.prod(shape) < MIN_KERNEL_WEIGHTS:
        return _State(
            keys, None, (f"{'x'.join(map(str, shape))} weights: below {MIN_KERNEL_WEIGHTS}, F.linear is faster",)
        )
    cpu, reasons = cpu_features(), []
    for kernel in kernels_by_priority():
        try:
            with torch.inference_mode(False), torch.no_grad():
                run = kernel.prepare(layer, cpu)
        except Unsupported as why:
            reasons.append(f"{kernel.name}: {why}")
            continue
        return _State(keys, PreparedKernel(kernel.choice(), run), tuple(reasons))
    return _State(keys, None, tuple(reasons))


def _state(layer: nn.Module) -> _State:
    keys, key = _buffer_keys(layer), id(layer)
    state = _STATES.get(key)
    if state is None or state.keys != keys:
        if state is None:
            weakref.finalize(layer, _STATES.pop, key, None)
        state = _prepare(layer, keys)
        _STATES[key] = state
    return state


def kernel_choice(module: nn.Module) -> KernelChoice | None:
    """The kernel that runs ``module``'s forward on CPU here, or None for the reference path.

    None also for modules no kernel runs (plain layers, convolutions, fp16 storage), and for every
    module while the kernels are switched off (``use_kernels(False)`` / ``NNCOMPRESS_KERNELS``).
    Prepares (and caches) the kernel's weights on first use.

    Example:
        >>> kernel_choice(nn.Linear(4, 4)) is None
        True
    """
    if not kernels_enabled() or getattr(module, "op", None) != "linear" or not getattr(module, "code_format", ""):
        return None
    prepared = _state(module).prepared
    return None if prepared is None else prepared.choice


def kernel_reasons(module: nn.Module) -> tuple[str, ...]:
    """Why each kernel tried before the chosen one (or all, on the reference path) declined ``module``."""
    if getattr(module, "op", None) != "linear" or not getattr(module, "code_format", ""):
        return ("not a packed Linear layer",)
    return _state(module).reasons


@functools.cache
def _onnx_flags() -> tuple[Any, Any] | None:
    """The two modules whose flags ``torch.onnx.is_in_onnx_export`` reads (it imports them on every
    call, 2.5 us of a 40 us layer here), or None where this torch keeps them elsewhere."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return None
    if not (hasattr(_flags, "_is_onnx_exporting") and hasattr(GLOBALS, "in_onnx_export")):
        return None
    return _flags, GLOBALS


def _in_onnx_export() -> bool:
    """``torch.onnx.is_in_onnx_export()``, read from the flags directly where they are found."""
    flags = _onnx_flags()
    if flags is None:
        return torch.onnx.is_in_onnx_export()
    return bool(flags[1].in_onnx_export or flags[0]._is_onnx_exporting)


def _tracing() -> bool:
    """True while a graph is captured (ONNX export, TorchScript tracing, torch.export / compile): the
    exported graph must hold the layer's own ops, which exporters know, not aten's private kernels."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or _in_onnx_export()


def run_linear(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``layer``'s output on its kernel, or None when the reference path must run it.

    The reference path runs when kernels are off, the input is not a CPU float32 / bfloat16 tensor,
    autograd needs the input's gradient, a graph is being exported or traced, or no kernel claims
    the layer. The bias (already in x's
    dtype) is added with a differentiable op, so a bias that needs a gradient still gets one.
    """
    if (
        not x.is_cpu  # cheaper than x.device.type (no device object): this runs on every call
        or x.dtype not in ACT_DTYPES
        or x.numel() == 0
        or (x.requires_grad and torch.is_grad_enabled())
        or not kernels_enabled()
        or _tracing()
    ):
        return None
    prepared = _state(layer).prepared
    if prepared is None:
        return None
    if x.dim() == 2:
        return prepared.run(x, bias)
    out = prepared.run(x.reshape(-1, x.shape[-1]), bias)
    return out.reshape(*x.shape[:-1], out.shape[-1])
