"""The criterion interface and its registry: one class per pruning criterion, found by name.

A criterion scores weights (higher = keep) for every pruning step that takes ``criterion``:
unstructured and N:M pruning (``weight_scores``: one score per weight), channel pruning
(``channel_scores``: one per channel of a coupled group) and head pruning (``head_scores``: one per
attention head). The defaults build the structured scores from ``tensor_scores`` (elementwise, then
summed over each channel's weights); a criterion overrides what it does differently. A new criterion
is one file in this folder with a ``@register_criterion`` class, imported in ``__init__.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from nncompress.models.vit import MultiHeadSelfAttention
from nncompress.prune import importance

CRITERIA: dict[str, Criterion] = {}


class Criterion:
    """Base of the pruning criteria (see the module docstring)."""

    name: ClassVar[str] = ""
    structured: ClassVar[bool] = True  # usable by channel and head pruning
    needs_gradients: ClassVar[bool] = False  # structured steps collect loss gradients for it
    scores_norms: ClassVar[bool] = False  # norm layers (BatchNorm, LayerNorm) vote on their channels

    def weight_scores(
        self, model: nn.Module, targets: Mapping[str, nn.Parameter], ctx: Any, batches: int
    ) -> dict[str, torch.Tensor]:
        """One score per weight of each target (``{param name: scores}``); ``ctx`` is the StepContext."""
        return {n: self.tensor_scores(w, n, {}) for n, w in targets.items()}  # type: ignore[misc]

    def tensor_scores(self, t: torch.Tensor, name: str, grads: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Elementwise scores of parameter ``name`` (None: it does not vote)."""
        raise NotImplementedError

    def folded_scores(self, layer: nn.Module, bn: nn.Module) -> torch.Tensor | None:
        """Per-row scores of ``layer`` with the BatchNorm after it folded in (None: not folded)."""
        return None

    def member_scores(
        self, model: nn.Module, member: Any, grads: Mapping[str, torch.Tensor], followers: Mapping[str, str]
    ) -> torch.Tensor | None:
        """Score of each position along a group member's cut axis, or None when it does not vote."""
        if member.kind == "norm" and not self.scores_norms:
            return None  # magnitudes of norm layers vote only when folded into their producer
        if member.kind == "out" and member.name in followers:
            folded = self.folded_scores(model.get_submodule(member.name), model.get_submodule(followers[member.name]))
            if folded is not None:
                return folded
        total = None
        for name, t, dim in member_tensors(model, member):
            e = self.tensor_scores(t, name, grads)
            if e is None:
                continue
            s = importance.reduce_groups(e, dim)
            total = s if total is None else total + s
        return total

    def channel_scores(
        self,
        model: nn.Module,
        group: Any,
        grads: Mapping[str, torch.Tensor],
        followers: Mapping[str, str],
        generator: torch.Generator,
    ) -> torch.Tensor:
        """One score per channel of a coupled group (``prune.graph.ChannelGroup``): the sum over its members."""
        total = torch.zeros(group.size)
        for member in group.members:
            s = self.member_scores(model, member, grads, followers)
            if s is not None:
                total += s.detach().float().cpu()[group.positions(member)].sum(-1)
        return total

    def head_scores(
        self, attn: MultiHeadSelfAttention, name: str, grads: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        """One score per attention head: the scores of its q/k/v rows and its output-projection columns."""
        h, d = attn.num_heads, attn.head_dim
        total = torch.zeros(h * d)
        for part in ("q", "k", "v"):
            for leaf in ("weight", "bias"):
                key, t = f"{name}.{part}.{leaf}", getattr(getattr(attn, part), leaf)
                e = None if t is None else self.tensor_scores(t, key, grads)
                if e is not None:
                    total += importance.reduce_groups(e, 0).cpu()
        e = self.tensor_scores(attn.proj.weight, f"{name}.proj.weight", grads)
        if e is not None:
            total += importance.reduce_groups(e, 1).cpu()
        return total.view(h, d).sum(1)


def register_criterion(*names: str) -> Any:
    """Class decorator: register one instance of the criterion under each of ``names``."""

    def deco(cls: type[Criterion]) -> type[Criterion]:
        for name in names:
            if name in CRITERIA:
                raise ValueError(f"criterion {name!r} is already registered by {type(CRITERIA[name]).__name__}")
            CRITERIA[name] = cls()
        cls.name = names[0]
        return cls

    return deco


def get_criterion(name: str, *, structured: bool = False) -> Criterion:
    """The criterion registered as ``name``; ValueError naming the accepted ones otherwise."""
    accepted = [n for n, c in CRITERIA.items() if c.structured or not structured]
    if name not in accepted:
        raise ValueError(f"criterion must be one of {', '.join(accepted)}; got {name!r}")
    return CRITERIA[name]


def member_tensors(model: nn.Module, member: Any) -> list[tuple[str, torch.Tensor, int]]:
    """(parameter name, tensor, channel dim) of what a producer or norm member holds per channel."""
    if member.kind == "param":
        owner, _, leaf = member.name.rpartition(".")
        t = getattr(model.get_submodule(owner) if owner else model, leaf)
        return [(member.name, t, member.axis)]
    if member.kind not in ("out", "norm"):
        return []
    m = model.get_submodule(member.name)
    prefix, dim = member.name, 0
    if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):  # every layer's and direction's gate rows and biases
        return [(f"{prefix}.{k}", getattr(m, k), 0) for k in m._flat_weights_names if not k.startswith("weight_hr")]
    if isinstance(m, MultiHeadSelfAttention):
        m, prefix = m.proj, f"{member.name}.proj"
    if isinstance(m, nn.Embedding):
        dim = 1
    found = [(f"{prefix}.{k}", getattr(m, k, None), dim) for k in ("weight", "bias")]
    return [(n, t, d) for n, t, d in found if isinstance(t, torch.Tensor)]
