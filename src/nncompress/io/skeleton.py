"""Compact pickling of an artifact's skeleton (the module tree without its tensors).

A plain pickle of an ``nn.Module`` writes every module's dozen bookkeeping dicts (forward and
backward hooks, state-dict hooks, ...), empty in nearly every model, and each meta-device
placeholder tensor through torch's generic tensor reduction. For a LeNet-5 that was 3 KB of
pickle (about 1 KB after LZMA), as much as its Huffman-coded fc2 layer. Here a module pickles as
its class plus only the attributes that differ from a fresh ``nn.Module``'s empty defaults, and a
meta placeholder as its dtype, shape and ``requires_grad``; unpickling rebuilds the defaults with
``nn.Module.__init__`` and the class's own ``__setstate__`` (so ``nn.LSTM``/``nn.GRU`` rebuild their
weight lists). Other plain tensors (non-persistent buffers such as rotary tables) pickle as their
dtype, shape and raw bytes, not through ``torch.save`` of their storage. The result is an ordinary
pickle; ``loads`` reads it through the restricted unpickler of ``io/trust.py`` (no code but the
allowed classes runs), and modules with their own ``__reduce__`` pickle as before.

Example:
    >>> from torch import nn
    >>> model = loads(dumps(nn.Sequential(nn.Linear(2, 3), nn.ReLU())))
    >>> model[0].weight.shape, model[0]._forward_hooks
    (torch.Size([3, 2]), OrderedDict())
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch import nn

KEEP = ("_parameters", "_buffers", "_modules", "training")  # always written: load assigns into them


def _default_state() -> dict[str, Any]:
    return nn.Module().__dict__


def _is_empty_default(key: str, value: Any, defaults: dict[str, Any]) -> bool:
    if key in KEEP or key not in defaults:
        return False
    default = defaults[key]
    if type(value) is not type(default):
        return False
    try:
        return len(value) == 0 and len(default) == 0
    except TypeError:  # not a container: compare values (e.g. a flag left at its default)
        return value is default or (isinstance(value, bool) and value == default)


def rebuild_module(cls: type, state: dict[str, Any]) -> nn.Module:
    """Unpickle a module written by ``dumps``: fresh ``nn.Module`` bookkeeping, then the class's own
    ``__setstate__`` (``nn.RNNBase`` rebuilds its flat weight lists there)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or not isinstance(state, dict):
        raise pickle.UnpicklingError(f"rebuild_module needs an nn.Module class and a dict, got {cls!r}")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    module.__setstate__(state)
    return module


def _dtype(name: Any) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"unknown tensor dtype {name!r}")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or not all(type(d) is int and 0 <= d < 2**40 for d in shape):
        raise pickle.UnpicklingError(f"a tensor shape must be non-negative integers, got {shape!r}")
    return tuple(shape)


def rebuild_meta(dtype: str, shape: tuple[int, ...], requires_grad: bool, parameter: bool) -> torch.Tensor:
    """A meta-device placeholder (the artifact's tensors replace it on load)."""
    t = torch.empty(_shape(shape), dtype=_dtype(dtype), device="meta")
    return nn.Parameter(t, bool(requires_grad)) if parameter else t


def rebuild_tensor(
    dtype: str, shape: tuple[int, ...], data: bytes, requires_grad: bool, parameter: bool
) -> torch.Tensor:
    """A CPU tensor from its raw bytes (what ``dumps`` writes for a skeleton's plain tensors)."""
    dt, shape = _dtype(dtype), _shape(shape)
    numel = 1
    for d in shape:
        numel *= d
    if not isinstance(data, bytes) or len(data) != numel * dt.itemsize:
        raise pickle.UnpicklingError(f"a {dtype} tensor of shape {list(shape)} needs {numel * dt.itemsize} bytes")
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    t = flat.view(dt).reshape(shape)
    return nn.Parameter(t, bool(requires_grad)) if parameter else t


def _is_plain(obj: torch.Tensor) -> bool:
    return type(obj) in (torch.Tensor, nn.Parameter) and not obj.is_quantized and obj.layout == torch.strided


class _CompactPickler(pickle.Pickler):
    defaults: dict[str, Any]

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and _is_plain(obj):
            dtype = str(obj.dtype).removeprefix("torch.")
            param = isinstance(obj, nn.Parameter)
            if obj.device.type == "meta":
                return rebuild_meta, (dtype, tuple(obj.shape), obj.requires_grad, param)
            data = obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            return rebuild_tensor, (dtype, tuple(obj.shape), data, obj.requires_grad, param)
        cls = type(obj)
        plain = cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
        if isinstance(obj, nn.Module) and plain:  # modules with their own reduction pickle as before
            state = obj.__getstate__()
            if isinstance(state, dict):
                compact = {k: v for k, v in state.items() if not _is_empty_default(k, v, self.defaults)}
                return rebuild_module, (cls, compact)
        return NotImplemented


def dumps(skeleton: nn.Module) -> bytes:
    """Pickle ``skeleton`` (protocol 4) without the empty defaults every module carries."""
    buffer = io.BytesIO()
    pickler = _CompactPickler(buffer, protocol=4)
    pickler.defaults = _default_state()
    pickler.dump(skeleton)
    return buffer.getvalue()


def loads(data: bytes, *, trust: tuple[str, ...] = (), source: str = "artifact") -> Any:
    """Unpickle a skeleton through the restricted unpickler (``io/trust.py``): only allowed or
    trusted classes are imported, no other code runs."""
    from nncompress.io.trust import loads_restricted

    return loads_restricted(data, trust=trust, source=source)
