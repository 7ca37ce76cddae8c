"""Compact pickling of an artifact's skeleton (the module tree without its tensors).

A plain pickle of an ``nn.Module`` writes every module's dozen bookkeeping dicts (forward and
backward hooks, state-dict hooks, ...), empty in nearly every model, and each meta-device
placeholder tensor through torch's generic tensor reduction. For a LeNet-5 that was 3 KB of
pickle (about 1 KB after LZMA), as much as its Huffman-coded fc2 layer. Here a module pickles as
its class plus only the attributes that differ from a fresh ``nn.Module``'s empty defaults, and a
meta placeholder as its dtype, shape and ``requires_grad``; unpickling rebuilds the defaults with
``nn.Module.__init__``. The result is an ordinary pickle: ``pickle.loads`` reads it (with
nncompress importable), and modules with their own ``__reduce__`` pickle as before.

Example:
    >>> import pickle
    >>> from torch import nn
    >>> model = pickle.loads(dumps(nn.Sequential(nn.Linear(2, 3), nn.ReLU())))
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
    """Unpickle a module written by ``dumps``: fresh ``nn.Module`` bookkeeping, then its state."""
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    module.__dict__.update(state)
    return module


def rebuild_meta(dtype: str, shape: tuple[int, ...], requires_grad: bool, parameter: bool) -> torch.Tensor:
    """A meta-device placeholder (the artifact's tensors replace it on load)."""
    t = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
    return nn.Parameter(t, requires_grad) if parameter else t


class _CompactPickler(pickle.Pickler):
    defaults: dict[str, Any]

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and obj.device.type == "meta" and type(obj) in (torch.Tensor, nn.Parameter):
            dtype = str(obj.dtype).removeprefix("torch.")
            return rebuild_meta, (dtype, tuple(obj.shape), obj.requires_grad, isinstance(obj, nn.Parameter))
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
