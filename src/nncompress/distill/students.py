"""Student builders: derive a smaller model from a trained teacher, initialized from its weights.

- ``shallower``: keep some of the teacher's blocks (a transformer's ``blocks``, a ResNet's
  ``stages``), copied with their weights; DistilBERT (Sanh et al. 2019) keeps every other layer.
- ``narrower``: multiply every hidden width by a factor. The narrower shape comes from structured
  pruning (``ChannelPrune``, L1 importance, the same fraction of every channel group, plus
  ``HeadPrune`` for attention heads), so ``init="teacher"`` starts from the teacher's most
  important channels; ``init="random"`` keeps the shape and re-initializes the weights.
- ``student_for``: the student within a parameter budget (a fraction of the teacher's) that keeps
  the most compute: uniform narrowing, or narrowing only the later layers, whichever keeps more MACs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nncompress.core.step import StepContext
from nncompress.measure.size import count_params
from nncompress.models.vit import MultiHeadSelfAttention
from nncompress.prune.structured import ChannelPrune, HeadPrune
from nncompress.tasks.task import Task

INITS = ("teacher", "random")
RESEED = 7919  # offset of the seed of fresh weights (see reinitialize)


# --- shallower --------------------------------------------------------------------------
def _block_containers(model: nn.Module) -> list[tuple[str, nn.Sequential | nn.ModuleList]]:
    """(name, container) of each run of blocks: ``model.blocks``, or each stage of ``model.stages``."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        return [("blocks", blocks)]
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential) and len(stages) and all(isinstance(s, nn.Sequential) for s in stages):
        return [(f"stages.{i}", s) for i, s in enumerate(stages)]
    raise ValueError(
        f"shallower needs a model whose blocks are an nn.Sequential or nn.ModuleList named `blocks` "
        f"(a transformer) or an nn.Sequential of nn.Sequential stages named `stages` (a ResNet); "
        f"{type(model).__name__} has neither"
    )


def _kept_indices(containers: list[tuple[str, Any]], keep: str | Sequence[int]) -> set[int]:
    """Flat indices (over all blocks in order) of the blocks to keep."""
    depth = sum(len(c) for _, c in containers)
    if isinstance(keep, str):
        if keep != "every_other":
            raise ValueError(f"keep must be 'every_other' or a list of block indices, got {keep!r}")
        kept, start = set(), 0
        for _, c in containers:  # every other block of each stage, starting with its first
            kept |= {start + i for i in range(0, len(c), 2)}
            start += len(c)
        return kept
    if not isinstance(keep, Sequence) or not keep:
        raise ValueError(f"keep must be 'every_other' or a non-empty list of block indices, got {keep!r}")
    bad = [k for k in keep if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < depth]
    if bad:
        raise ValueError(f"keep: block indices must be integers in [0, {depth}), got {bad}")
    if len(set(keep)) != len(keep):
        raise ValueError(f"keep lists a block twice: {list(keep)}")
    return set(keep)


def shallower(model: nn.Module, keep: str | Sequence[int] = "every_other") -> nn.Module:
    """A copy of ``model`` with only the kept blocks, all weights copied from ``model``.

    Args:
        model: a transformer with an ``nn.Sequential``/``nn.ModuleList`` named ``blocks`` (e.g.
            ``VisionTransformer``), or a ResNet with an ``nn.Sequential`` of stages named
            ``stages``. Other models raise ValueError.
        keep: ``"every_other"`` (blocks 0, 2, 4, ... as in DistilBERT; in each ResNet stage
            separately, so the stage's first, shape-changing block stays) or a list of block
            indices, counted over all blocks in order (stage after stage for a ResNet).

    A ResNet block can be dropped only when its shortcut is an ``nn.Identity`` (it keeps the
    shape); dropping another one raises ValueError. ``model`` is not modified.

    Example:
        >>> from nncompress.models import VisionTransformer
        >>> len(shallower(VisionTransformer(depth=4)).blocks)
        2
    """
    containers = _block_containers(model)
    kept = _kept_indices(containers, keep)
    start = 0
    for name, c in containers:
        for i, block in enumerate(c):
            if start + i in kept or name == "blocks":
                continue
            if not isinstance(getattr(block, "shortcut", None), nn.Identity):
                raise ValueError(
                    f"shallower cannot drop block {name}.{i} (index {start + i}): it changes the shape "
                    "(its shortcut is not an nn.Identity); keep it"
                )
        start += len(c)
    student = copy.deepcopy(model)
    start = 0
    for name, c in _block_containers(student):
        chosen = [b for i, b in enumerate(c) if start + i in kept]
        start += len(c)
        new = type(c)(*chosen) if isinstance(c, nn.Sequential) else nn.ModuleList(chosen)
        owner_name, _, leaf = name.rpartition(".")
        setattr(student.get_submodule(owner_name) if owner_name else student, leaf, new)
    return student


# --- narrower ---------------------------------------------------------------------------
def _shape_task(example_inputs: Any) -> Task:
    """A data-less task that only carries example inputs (what ChannelPrune traces with)."""
    return Task("student-shape", train=(), val=(), test=(), baseline=lambda: None, example_inputs=example_inputs)


def reinitialize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh weights in place: ``reset_parameters()`` of every module that has one (BatchNorm also
    resets its running statistics), drawn after ``torch.manual_seed(RESEED + seed)``: the offset keeps
    seed 0 from replaying ``torch.manual_seed(0)``, which is how many teachers were initialized (at
    the teacher's shape, that would give back the teacher's own initial weights).

    Parameters that no ``reset_parameters`` covers (a ViT's ``cls_token`` and ``pos_embed``) keep
    their values: there is no generic way to know how their model initializes them.
    """
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(RESEED + seed)
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return model


def narrower(
    model: nn.Module,
    width: float,
    init: str = "teacher",
    *,
    example_inputs: Any,
    seed: int = 0,
    keep_whole: Sequence[str] = (),
) -> nn.Module:
    """A copy of ``model`` with every hidden width multiplied by ``width`` (rounded up).

    Hidden widths are what structured pruning can cut: MLP hidden units, conv channels, a ResNet's
    stage widths (residual stream included), a ViT's embedding dim and MLP hidden size, and the
    number of attention heads (``MultiHeadSelfAttention``). Inputs and outputs keep their size.

    Args:
        width: the factor, in (0, 1]; 1 returns a plain copy (re-initialized for ``"random"``).
        init: ``"teacher"``: the kept channels are the teacher's with the largest L1 norm (BatchNorm
            folded in), their weights copied (``ChannelPrune(criterion="l1", scope="layer")``).
            ``"random"``: the same shape with fresh weights (see ``reinitialize``).
        example_inputs: a batch of inputs (batch size >= 2) to trace the model with.
        seed: the seed of the fresh weights when ``init="random"``.
        keep_whole: modules whose outputs keep their full width (``ChannelPrune``'s ``exclude``).

    ValueError when the model cannot be traced or has no hidden width to narrow.

    Example:
        >>> from nncompress.models import LeNet300100
        >>> narrower(LeNet300100(), 0.5, example_inputs=torch.randn(2, 1, 28, 28)).fc1
        Linear(in_features=784, out_features=150, bias=True)
    """
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise ValueError(f"width must be a number in (0, 1], got {width!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}; got {init!r}")
    student = copy.deepcopy(model)
    if width < 1:
        ctx = StepContext(task=_shape_task(example_inputs), seed=seed)
        before = count_params(student)
        try:
            with torch.no_grad():
                student = ChannelPrune(
                    sparsity=1.0 - width, criterion="l1", scope="layer", exclude=tuple(keep_whole)
                ).apply(student, ctx)
                if any(isinstance(m, MultiHeadSelfAttention) for m in student.modules()):
                    student = HeadPrune(sparsity=1.0 - width, criterion="l1").apply(student, ctx)
        except ValueError as e:
            raise ValueError(f"narrower cannot narrow {type(model).__name__}: {e}") from e
        if count_params(student) == before and any("no prunable" in line for line in ctx.log):
            raise ValueError(
                f"narrower found no hidden width to narrow in {type(model).__name__} (structured pruning "
                "found no prunable channel group)"
            )
    if init == "random":
        reinitialize(student, seed)
    return student.eval()


# --- automatic choice -------------------------------------------------------------------
def _depth_or_none(model: nn.Module) -> int | None:
    blocks = getattr(model, "blocks", None)
    return len(blocks) if isinstance(blocks, (nn.Sequential, nn.ModuleList)) else None


SHAPES = ("most-macs", "uniform")


def _fitting_width(
    base: nn.Module,
    widths: list[float],
    budget: float,
    keep_whole: Sequence[str],
    init: str,
    example_inputs: Any,
    seed: int,
) -> tuple[nn.Module, float] | None:
    """The student of the largest width in ``widths`` (descending) within ``budget`` parameters, by
    bisection (the parameter count falls as the width does); None when even the smallest is over."""

    def build(w: float) -> nn.Module:
        return narrower(base, w, init, example_inputs=example_inputs, seed=seed, keep_whole=keep_whole)

    smallest = build(widths[-1])
    if count_params(smallest) > budget:
        return None
    lo, hi, best = 0, len(widths) - 1, (smallest, widths[-1])  # widths[hi] fits
    while lo < hi:
        mid = (lo + hi) // 2
        student = build(widths[mid])
        if count_params(student) <= budget:
            hi, best = mid, (student, widths[mid])
        else:
            lo = mid + 1
    return best


def _leading_producers(model: nn.Module, example_inputs: Any) -> list[tuple[str, ...]]:
    """Producers of each prunable channel group, the groups in the order their first producer
    appears in the model: keeping a prefix of them whole is one candidate student shape."""
    from nncompress.prune.graph import trace_channels

    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    groups = [tuple(g.names()) for g in trace_channels(model, example_inputs).groups]
    groups = [g for g in groups if g]

    def position(name: str) -> int:  # a parameter's name ("cls_token") counts at its owner module
        return order.get(name, order.get(name.rpartition(".")[0], len(order)))

    return sorted(groups, key=lambda names: min(map(position, names)))


def student_for(
    teacher: nn.Module,
    max_param_ratio: float = 0.25,
    *,
    example_inputs: Any,
    init: str = "teacher",
    grid: float = 0.05,
    seed: int = 0,
    shape: str = "most-macs",
) -> tuple[nn.Module, str]:
    """A student with at most ``max_param_ratio`` of the teacher's parameters.

    A transformer (a model with two or more ``blocks``) first loses every other block
    (``shallower``); if that is still too large, or for any other model (CNN, MLP), the student
    is ``narrower`` with the largest width on the grid ``1 - grid, 1 - 2 * grid, ...`` that fits.

    ``shape="uniform"`` narrows every hidden width by that factor. ``"most-macs"`` (the default)
    also tries keeping the first 1, 2, ... channel groups whole and narrowing only the later ones,
    and returns the candidate that keeps the most multiply-accumulates: a LeNet-5 keeps its cheap,
    compute-heavy convolutions and loses width in the fully connected layers that hold most of its
    parameters (uniform narrowing would leave conv1 with 2 channels).

    Returns:
        ``(student, description)``, e.g. ``"width 0.25: 61,035 params (22.9% of 266,610)"`` or
        ``"width 0.24, conv1 and conv2 whole: 15,051 params (24.4% of 61,706)"``.

    Example:
        >>> from nncompress.models import LeNet300100
        >>> student_for(LeNet300100(), 0.25, example_inputs=torch.randn(2, 1, 28, 28))[1]
        'width 0.25: 61,035 params (22.9% of 266,610)'
    """
    from nncompress.measure.flops import count_macs

    r = max_param_ratio
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
        raise ValueError(f"max_param_ratio must be a fraction in (0, 1), got {max_param_ratio!r}")
    if isinstance(grid, bool) or not isinstance(grid, (int, float)) or not 0 < grid < 1:
        raise ValueError(f"grid must be a width step in (0, 1), got {grid!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}; got {init!r}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(map(repr, SHAPES))}; got {shape!r}")
    total = count_params(teacher)
    budget = r * total
    base, parts = teacher, []
    depth = _depth_or_none(teacher)
    if depth is not None and depth >= 2:
        base = shallower(teacher, "every_other")
        parts.append(f"every other block ({depth} -> {_depth_or_none(base)})")
    widths = [1.0] if base is not teacher else []
    widths += [w for w in (round(1.0 - k * grid, 10) for k in range(1, int(1 / grid) + 1)) if w > 0]
    candidates: list[tuple[int, int, nn.Module, float, tuple[str, ...]]] = []  # (macs, params, ...)
    kept: tuple[str, ...] = ()
    prefixes = [()] if shape == "uniform" else [(), *_leading_producers(base, example_inputs)[:-1]]
    for group in prefixes:
        kept += group
        found = _fitting_width(base, widths, budget, kept, init, example_inputs, seed)
        if found is None:
            break  # keeping more whole only leaves fewer parameters to the rest
        student, w = found
        candidates.append((count_macs(student, example_inputs), count_params(student), student, w, kept))
    if not candidates:
        smallest = count_params(narrower(base, widths[-1], init, example_inputs=example_inputs, seed=seed))
        raise ValueError(
            f"no student of {type(teacher).__name__} on the width grid (step {grid}) has at most "
            f"{r:.1%} of its {total:,} parameters; the smallest has {smallest:,} ({smallest / total:.1%})"
        )
    _, n, student, w, kept = max(candidates, key=lambda c: (c[0], c[1], -len(c[4])))
    if w < 1.0:
        parts.append(f"width {w:.2f}")
    if kept:
        parts.append(f"{_join(kept)} whole")
    return student, ", ".join(parts) + f": {n:,} params ({n / total:.1%} of {total:,})"


def _join(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
