"""Intermediate features for distillation: capture named modules' outputs, and pair student layers
with teacher layers (by name, or automatically by position).

``FeatureCapture`` registers forward hooks for the duration of a ``with`` block and removes every
one of them on exit, also when the block raises. ``auto_layer_pairs`` maps the i-th of a student's
``k`` layers to the teacher's layer ``round((i + 1) * n / k) - 1`` of ``n`` (uniform, as DistilBERT
and TinyBERT map layers): a 2-block student of a 4-block teacher gets blocks 1 and 3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

LAYER_KINDS = ("auto", "blocks", "stages")
BLOCK_CONTAINERS = ("blocks", "layers", "layer", "h")  # ViT/timm, many encoders, BERT, GPT-2
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


class FeatureCapture:
    """Record the outputs of named submodules on every forward, while the ``with`` block lasts.

    ``outputs`` maps each name to the module's latest output (a module returning a tuple or list
    contributes its first element; a module called twice in one forward keeps the second call's
    output). Call ``clear()`` between forwards to drop references. Every hook is removed on exit,
    also when the block raises, and ``outputs`` is emptied.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> with FeatureCapture(model, ["1"]) as cap:
        ...     _ = model(torch.zeros(5, 3))
        ...     cap.outputs["1"].shape
        torch.Size([5, 4])
        >>> len(model[1]._forward_hooks)
        0
    """

    def __init__(self, model: nn.Module, names: Iterable[str], *, detach: bool = False) -> None:
        self.model, self.names, self.detach = model, list(dict.fromkeys(names)), detach
        self.outputs: dict[str, Any] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.modules = {name: find_module(model, name) for name in self.names}  # fail before hooking

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)) and output:
                output = output[0]
            if self.detach and isinstance(output, torch.Tensor):
                output = output.detach()
            self.outputs[name] = output

        return hook

    def __enter__(self) -> FeatureCapture:
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __getitem__(self, name: str) -> Any:
        if name not in self.outputs:
            raise KeyError(f"no output captured for {name!r}: did the forward run through that module?")
        return self.outputs[name]

    def clear(self) -> None:
        """Forget the captured outputs (hooks stay)."""
        self.outputs.clear()

    def remove(self) -> None:
        """Remove every hook and forget the outputs (what leaving the ``with`` block does)."""
        while self._handles:
            self._handles.pop().remove()
        self.outputs.clear()


def find_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with an error that lists nearby names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"{type(model).__name__} has no module named {name!r}; some it has: {names[:12]}") from None


def _containers(model: nn.Module, wanted: Iterable[str]) -> list[str]:
    """Names of the first ``ModuleList``/``Sequential`` whose last name component is in ``wanted``."""
    wanted = tuple(wanted)
    for name, module in model.named_modules():
        if name and name.rsplit(".", 1)[-1] in wanted and isinstance(module, (nn.ModuleList, nn.Sequential)):
            return [f"{name}.{child}" for child, _ in module.named_children()]
    return []


def layer_names(model: nn.Module, kind: str) -> list[str]:
    """The layers ``auto_layer_pairs`` maps, in order.

    ``"blocks"``: the children of the first ``ModuleList``/``Sequential`` named ``blocks``,
    ``layers``, ``layer`` or ``h`` (the transformer blocks of ViT, BERT, GPT-2).
    ``"stages"``: the last module of each stage: with a container named ``stages`` (ResNet), the last
    child of each of its children; otherwise the pooling layers (max/avg, not adaptive), each of
    which ends a resolution stage of a plain CNN (LeNet-5: ``pool1``, ``pool2``).

    Example:
        >>> from nncompress.models import ResNet
        >>> layer_names(ResNet(widths=(4, 8)), "stages")
        ['stages.0.0', 'stages.1.0']
    """
    if kind == "blocks":
        return _containers(model, BLOCK_CONTAINERS)
    if kind == "stages":
        stages = _containers(model, ("stages",))
        if stages:
            out = []
            for stage in stages:
                children = list(model.get_submodule(stage).named_children())
                out.append(f"{stage}.{children[-1][0]}" if children else stage)
            return out
        return [name for name, m in model.named_modules() if isinstance(m, POOLS)]
    raise ValueError(f"layer kind must be 'blocks' or 'stages', got {kind!r}")


def uniform_map(k: int, n: int) -> list[int]:
    """Teacher index for each of ``k`` student layers over ``n`` teacher layers:
    ``round((i + 1) * n / k) - 1`` (halves round up), at least 0.

    Example:
        >>> uniform_map(2, 4), uniform_map(4, 12), uniform_map(3, 3)
        ([1, 3], [2, 5, 8, 11], [0, 1, 2])
    """
    if k < 1 or n < 1:
        return []
    return [max(0, (2 * (i + 1) * n + k) // (2 * k) - 1) for i in range(k)]


def auto_layer_pairs(student: nn.Module, teacher: nn.Module, kind: str = "auto") -> dict[str, str]:
    """Student layer name -> teacher layer name, mapped uniformly by position (see ``uniform_map``).

    ``kind`` is ``"blocks"``, ``"stages"`` (see ``layer_names``) or ``"auto"``: blocks when both
    models have them, else stages when both have them, else no pairs (``{}``).

    Example:
        >>> from nncompress.models import VisionTransformer
        >>> vit = lambda depth: VisionTransformer(patch_size=7, dim=8, depth=depth, num_heads=2, mlp_hidden=8)
        >>> auto_layer_pairs(vit(2), vit(4))
        {'blocks.0': 'blocks.1', 'blocks.1': 'blocks.3'}
    """
    if kind not in LAYER_KINDS:
        raise ValueError(f"layer kind must be one of {LAYER_KINDS}, got {kind!r}")
    for k in ("blocks", "stages") if kind == "auto" else (kind,):
        s, t = layer_names(student, k), layer_names(teacher, k)
        if s and t:
            return {name: t[j] for name, j in zip(s, uniform_map(len(s), len(t)))}
    return {}


def resolve_layers(student: nn.Module, teacher: nn.Module, layers: Mapping[str, str] | str) -> dict[str, str]:
    """An explicit ``{"student.name": "teacher.name"}`` mapping (names checked), or
    ``auto_layer_pairs(student, teacher, layers)`` for a kind name."""
    if isinstance(layers, str):
        return auto_layer_pairs(student, teacher, layers)
    pairs = dict(layers)
    for s, t in pairs.items():
        find_module(student, s)
        find_module(teacher, t)
    return pairs


def is_attention(module: nn.Module) -> bool:
    """A self-attention module with separate ``q``/``k`` Linear projections and ``num_heads``
    (``nncompress.models.vit.MultiHeadSelfAttention`` and look-alikes)."""
    return (
        isinstance(getattr(module, "q", None), nn.Linear)
        and isinstance(getattr(module, "k", None), nn.Linear)
        and isinstance(getattr(module, "num_heads", None), int)
    )


def attention_in(model: nn.Module, name: str) -> str | None:
    """``name`` when that module is an attention module, else its first attention descendant."""
    root = find_module(model, name)
    for sub, module in root.named_modules():
        if is_attention(module):
            return f"{name}.{sub}" if sub else name
    return None


def attention_pairs(student: nn.Module, teacher: nn.Module, pairs: Mapping[str, str]) -> dict[str, str]:
    """The attention modules inside each mapped layer pair (pairs where either side has none are
    left out): student attention name -> teacher attention name."""
    out = {}
    for s, t in pairs.items():
        sa, ta = attention_in(student, s), attention_in(teacher, t)
        if sa is not None and ta is not None:
            out[sa] = ta
    return out
