"""Channel dependency tracing: which layers' channels must be pruned together.

The model is traced with ``torch.fx`` and run once on example inputs. Every tensor carries, per
axis, which *channel spaces* lie along it: a channel space is a set of channels created by one
producer (a Conv/Linear output, a free parameter such as ``cls_token``). Operations move the
spaces between axes (transpose, flatten, indexing), lay them side by side (``torch.cat``), or
join them (``a + b`` means channel ``i`` of ``a`` meets channel ``i`` of ``b``: the spaces merge,
union-find style). Layers that read a space (Conv/Linear inputs), normalise it (BatchNorm,
LayerNorm) or write it are recorded as its *members*, with the offset and stride at which the
space lies in their tensors (flatten -> Linear makes each channel ``H*W`` columns wide).

Anything the rules do not understand *blocks* the spaces it touches, as do the model's outputs:
a blocked group is never pruned. So an unknown operation costs prunability, never correctness.

The idea follows DepGraph (Fang et al. 2023, "Towards Any Structural Pruning").
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from nncompress.models.vit import MultiHeadSelfAttention
from nncompress.prune.surgery import BATCHNORMS, CONVS, RECURRENT, rnn_gates


class Segment(NamedTuple):
    """Channels ``0..length-1`` of ``space`` lying along an axis: channel ``c`` occupies positions
    ``offset + c * inner ... + inner - 1``. ``space`` -1 means fixed channels (never pruned)."""

    space: int
    offset: int
    length: int
    inner: int


Layout = dict[int, tuple[Segment, ...]]  # axis -> segments; untracked axes are absent


@dataclass(frozen=True)
class Member:
    """A tensor that must be cut when a group loses channels.

    ``kind``: "out" (a layer's output rows), "in" (a layer's input columns), "norm" (a norm
    layer's per-channel parameters and statistics), or "param" (a free parameter or buffer,
    cut along ``axis``). Channel ``c`` of the group is at ``offset + c * inner + (0..inner-1)``.
    """

    kind: str
    name: str
    offset: int = 0
    inner: int = 1
    axis: int = 0


@dataclass
class ChannelGroup:
    """Channels that can only be removed together, and every tensor that removing them cuts.

    ``blocks``: the channels form that many equal contiguous blocks (grouped convolutions)
    and each block must keep the same number of channels.
    """

    size: int
    members: tuple[Member, ...]
    blocks: int = 1

    def positions(self, member: Member) -> torch.Tensor:
        """(size, inner) indices, along the member's cut axis, of each channel of the group."""
        start = member.offset + torch.arange(self.size)[:, None] * member.inner
        return start + torch.arange(member.inner)[None, :]

    def names(self, kinds: Iterable[str] = ("out", "param")) -> list[str]:
        """Names of the members of the given kinds (default: the producers)."""
        kinds = tuple(kinds)
        return sorted({m.name for m in self.members if m.kind in kinds})


@dataclass
class ChannelGraph:
    """The prunable groups of a model, plus BatchNorms that directly follow a producer.

    ``followers[layer] = bn`` lets importance fold the BN scale into the layer's rows.
    ``kept_whole``: submodules kept as black boxes because torch.fx could not trace them (their
    inputs and outputs keep every channel; traceable parts inside them were traced on their own).
    """

    groups: list[ChannelGroup]
    followers: dict[str, str] = field(default_factory=dict)
    kept_whole: list[str] = field(default_factory=list)  # submodules torch.fx could not trace
    errors: dict[str, str] = field(default_factory=dict)  # kept-whole module -> why fx failed


class _Spaces:
    """Union-find over channel spaces, with the members, block counts and blocked flags."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.blocks: list[int] = []
        self.blocked: list[bool] = []
        self.members: list[set[Member]] = []

    def new(self, size: int, blocks: int = 1) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.blocks.append(blocks)
        self.blocked.append(False)
        self.members.append(set())
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        self.blocks[a] = math.lcm(self.blocks[a], self.blocks[b])
        self.blocked[a] = self.blocked[a] or self.blocked[b]
        self.members[a] |= self.members[b]

    def add(self, s: int, member: Member) -> None:
        self.members[self.find(s)].add(member)

    def block(self, s: int) -> None:
        self.blocked[self.find(s)] = True

    def require_blocks(self, s: int, blocks: int) -> None:
        root = self.find(s)
        self.blocks[root] = math.lcm(self.blocks[root], blocks)

    def groups(self) -> list[ChannelGroup]:
        roots = sorted({self.find(s) for s in range(len(self.parent))})
        out = []
        for r in roots:
            if self.blocked[r] or self.size[r] % self.blocks[r]:
                continue
            members = tuple(sorted(self.members[r], key=lambda m: (m.name, m.kind, m.offset)))
            out.append(ChannelGroup(self.size[r], members, self.blocks[r]))
        return out


class _Tracer(fx.Tracer):
    """fx tracer that keeps our attention and the given opaque modules as single calls."""

    def __init__(self, opaque: set[str], root: str = "") -> None:
        super().__init__()
        self.opaque, self.root = opaque, root
        self.path: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname == self.root:
            return False  # the module being traced (wrapped as ``m``): always traced into
        if isinstance(m, MultiHeadSelfAttention) or qualname in self.opaque or norm_axis(m) is not None:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        self.path.append(self.path_of_module(m))
        result = super().call_module(m, forward, args, kwargs)
        self.path.pop()
        return result


class _Untraceable(Exception):
    """torch.fx failed on a module's own code (not inside one of its submodules)."""


MAX_RETRIES = 200  # submodules that may be kept whole, one per failed trace, before giving up


def trace_channels(model: nn.Module, example_inputs: Any, *, opaque: Sequence[str] = ()) -> ChannelGraph:
    """Trace ``model`` and return its unblocked channel groups.

    ``opaque``: names of submodules to treat as black boxes (not traced into; their inputs and
    outputs are never pruned), e.g. ones that torch.fx cannot trace.

    What torch.fx cannot trace is kept whole rather than refused: a submodule whose code fails
    becomes a black box and the trace is retried; when the model's own ``forward`` fails (Hugging
    Face models: keyword inputs, ``ModelOutput``, cache objects), each submodule is traced on its
    own, on the inputs it received in one run of the model (its inputs and outputs keep every
    channel; inside, e.g. a transformer MLP's hidden width, channels can go). The black boxes
    are listed in ``ChannelGraph.kept_whole``.

    Example:
        >>> graph = trace_channels(model, torch.randn(2, 1, 28, 28))  # doctest: +SKIP
        >>> [g.names() for g in graph.groups]  # doctest: +SKIP
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            result = _trace_tree(model, *_as_call(model, example_inputs), set(opaque))
    finally:
        model.train(was_training)
    from nncompress.prune.heads import attention_head_groups  # heads.py builds on this module's groups

    result.groups += attention_head_groups(model, result.groups)
    if result.kept_whole == [""] and not result.groups:
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__} ({result.errors['']}) nor any of its "
            "submodules; name the submodule that fails in `exclude` so it is kept whole and not traced"
        )
    return result


def _as_call(model: nn.Module, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Example inputs as the model takes them (tensor, tuple or dict) -> (args, kwargs).

    A model that can build a key/value cache (``use_cache``) runs without one: the cache object
    is no tensor torch.fx can pass between layers, and pruning concerns the weights, not it.
    """
    if isinstance(inputs, dict):
        kwargs = dict(inputs)
        with contextlib.suppress(TypeError, ValueError):
            if "use_cache" in inspect.signature(model.forward).parameters:
                kwargs.setdefault("use_cache", False)
        return (), kwargs
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


class _CallBase(nn.Module):
    """Calls the wrapped module ``m`` as it was called once, its tensors replaced by this module's
    inputs. fx traces into ``m.forward`` with every other argument a plain Python value (None,
    flags, an empty ``**kwargs``, a cache object), so code that branches on them traces."""

    def __init__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.m = module
        leaves, self.spec = pytree.tree_flatten((args, kwargs))
        self.slots = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)]
        self.example = [leaves[i] for i in self.slots]
        self.leaves = [None if i in self.slots else v for i, v in enumerate(leaves)]

    def call(self, tensors: list[Any]) -> Any:
        leaves = list(self.leaves)
        for i, t in zip(self.slots, tensors, strict=True):
            leaves[i] = t
        args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return self.m(*args, **kwargs)


def _call_module(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _CallBase:
    """A _CallBase whose ``forward`` takes one named argument per tensor (fx needs real parameters)."""
    n = sum(isinstance(v, torch.Tensor) for v in pytree.tree_leaves((args, kwargs)))
    names = ", ".join(f"t{i}" for i in range(n))
    namespace: dict[str, Any] = {}
    exec(f"def forward(self{', ' if n else ''}{names}):\n    return self.call([{names}])\n", namespace)  # noqa: S102
    cls = type("_Call", (_CallBase,), {"forward": namespace["forward"]})
    return cls(module, args, kwargs)


def _trace_part(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], opaque: set[str]) -> ChannelGraph:
    """Trace one module as it was called (submodules failing torch.fx are kept whole) and run
    its walker once. Raises _Untraceable when the module's own code fails."""
    wrapper = _call_module(module, args, kwargs)
    inner = {f"m.{o}" for o in opaque}
    kept: list[str] = []
    graph = None
    for _ in range(MAX_RETRIES):
        tracer = _Tracer(inner | set(kept), root="m")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = tracer.trace(wrapper)
            break
        except Exception as e:
            if len(tracer.path) < 2 or tracer.path[-1] in kept:
                raise _Untraceable(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
            kept.append(tracer.path[-1])  # trace again with this submodule as a black box
    if graph is None:
        raise _Untraceable(f"more than {MAX_RETRIES} submodules failed to trace")
    walker = _Walker(fx.GraphModule(wrapper, graph), wrapper, inner | set(kept))
    walker.run(*wrapper.example)
    traced = ChannelGraph([], {}, [k.removeprefix("m.") for k in kept])
    _add_part(traced, ChannelGraph(walker.spaces.groups(), walker.followers), "", strip="m.")
    return traced


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def _first_calls(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The (args, kwargs) each submodule received the first time it ran, in one model call."""
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def hook(name: str) -> Any:
        def record(_m: nn.Module, a: tuple[Any, ...], k: dict[str, Any]) -> None:
            calls.setdefault(name, (a, k))

        return record

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in model.named_modules() if n]
    try:
        model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return calls


def _trace_tree(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], opaque: set[str]) -> ChannelGraph:
    """Trace the model; trace what fx could not as parts of their own (recursing); merge."""
    result = ChannelGraph([], {}, [])
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def children(name: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            part(f"{name}.{child_name}" if name else child_name, child)

    def part(name: str, module: nn.Module) -> None:
        if name in opaque or (name and not any(True for _ in module.children())):
            return  # excluded, or a lone layer: it couples nothing inside itself
        if name and not calls:
            calls.update(_first_calls(model, args, kwargs))
        if name and name not in calls:  # a container never called itself (ModuleList): look inside
            children(name, module)
            return
        call = calls[name] if name else (args, kwargs)
        inner = {o[len(name) + 1 :] for o in opaque if o.startswith(name + ".")} if name else opaque
        try:
            traced = _trace_part(module, *call, inner)
        except _Untraceable as e:
            if name not in result.kept_whole:
                result.kept_whole.append(name)
            result.errors[name] = str(e)
            children(name, module)
            return
        _add_part(result, traced, name)
        for kept in traced.kept_whole:
            full = f"{name}.{kept}" if name else kept
            result.kept_whole.append(full)
            part(full, module.get_submodule(kept))

    part("", model)
    return result


def _add_part(result: ChannelGraph, part: ChannelGraph, prefix: str, strip: str = "") -> None:
    """Add a submodule's groups to ``result``, member names made relative to the model."""

    def full(name: str) -> str:
        name = name.removeprefix(strip)
        return f"{prefix}.{name}" if name and prefix else name or prefix

    for g in part.groups:
        members = tuple(Member(m.kind, full(m.name), m.offset, m.inner, m.axis) for m in g.members)
        result.groups.append(ChannelGroup(g.size, members, g.blocks))
    result.followers.update({full(k): full(v) for k, v in part.followers.items()})


UNARY = {
    "relu",
    "relu_",
    "relu6",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "leaky_relu",
    "elu",
    "mish",
    "softplus",
    "dropout",
    "contiguous",
    "clone",
    "float",
    "neg",
    "abs",
    "exp",
    "sqrt",
    "square",
    "to",
    "type_as",
    "rsqrt",
    "tanh_",
    "sigmoid_",
    "erf",
    "log",
    "sin",
    "cos",
    "reciprocal",
    "silu_",
    "gelu_",
    "hardswish_",
    "hardsigmoid_",
    "relu6_",
    "detach",
}
BINARY = {
    "add",
    "sub",
    "mul",
    "truediv",
    "div",
    "iadd",
    "isub",
    "imul",
    "itruediv",
    "add_",
    "sub_",
    "mul_",
    "div_",
    "maximum",
    "minimum",
    "pow",
    "floordiv",
}
RESHAPE = {"flatten", "view", "reshape", "unflatten"}
TRANSPOSE = {"transpose", "permute", "swapaxes"}
CAT = {"cat", "concat", "concatenate"}
REDUCE = {"mean", "sum", "amax", "amin"}
SHAPE_ONLY = {"size", "dim", "getattr", "numel"}
POOLS = {f"{kind}_pool{d}d" for kind in ("avg", "max", "adaptive_avg", "adaptive_max") for d in (1, 2, 3)}
ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


ELEMENTWISE_NAMES = {  # activation classes of timm and transformers that act value by value
    "Swish",
    "SiLU",
    "HardSwish",
    "HardSigmoid",
    "HardMish",
    "Mish",
    "GELU",
    "GELUTanh",
    "QuickGELU",
    "Sigmoid",
    "Tanh",
    "ReLU",
    "ReLU6",
    "Identity",
    "NewGELUActivation",
    "GELUActivation",
    "FastGELUActivation",
    "QuickGELUActivation",
    "SiLUActivation",
    "PytorchGELUTanh",
    "GELUTanhActivation",
    "LeakyReLU",
    "ELU",
    "Softplus",
    "Dropout",
    "DropPath",
}


def elementwise(m: nn.Module) -> bool:
    """Whether ``m`` maps each value on its own (an activation or dropout): channels pass through."""
    return isinstance(m, ACTIVATIONS) or (
        type(m).__name__ in ELEMENTWISE_NAMES and not any(p.numel() > 1 for p in m.parameters(recurse=True))
    )


def norm_axis(m: nn.Module) -> int | None:
    """The channel axis of a fused norm (+ activation) module traced as one layer, else None.

    timm's ``BatchNormAct2d`` (a BatchNorm subclass with ``.act`` and ``.drop``), ``LayerNormAct``
    and ``LayerNorm2d``/``LayerNormAct2d`` (a LayerNorm over axis 1 of NCHW) normalise then act
    value by value, so their channels are a BatchNorm's or LayerNorm's: cut with its parameters.
    A fused module whose activation is unknown is traced into instead (and so blocked).
    """
    base = BATCHNORMS + (nn.LayerNorm,)
    if not isinstance(m, base) or type(m) in base:
        return None
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
        return None
    extras = [getattr(m, k) for k in ("act", "drop") if isinstance(getattr(m, k, None), nn.Module)]
    if not all(elementwise(e) for e in extras) or any(n not in ("act", "drop") for n, _ in m.named_children()):
        return None
    if isinstance(m, BATCHNORMS) or type(m).__name__.endswith("2d"):
        return 1
    return -1 if extras else None


def _same_structure(a: tuple[Segment, ...], b: tuple[Segment, ...]) -> bool:
    return [(s.offset, s.length, s.inner) for s in a] == [(s.offset, s.length, s.inner) for s in b]


def _full_slice(item: slice, size: int) -> bool:
    start_ok = item.start is None or item.start == 0 or item.start <= -size
    stop_ok = item.stop is None or item.stop >= size
    return start_ok and stop_ok and item.step in (None, 1)


def _reshaped_axis(in_shape: Sequence[int], out_shape: Sequence[int], d: int) -> tuple[int, int] | None:
    """Where axis ``d`` lands after a reshape, and by how much it merged with the axes after it.

    ``(j, p)``: output axis ``j`` holds axis ``d`` with ``p`` trailing positions per channel
    (flatten of (B, C, H, W) to (B, C*H*W) gives (1, H*W)). None when ``d`` is split or merged
    with earlier axes.
    """
    prefix = math.prod(in_shape[:d])
    for j in range(len(out_shape)):
        if math.prod(out_shape[:j]) != prefix:
            continue
        p = 1
        for k in range(d + 1, len(in_shape) + 1):
            if out_shape[j] == in_shape[d] * p:
                return j, p
            if k < len(in_shape):
                p *= in_shape[k]
    return None


class _Walker(fx.Interpreter):
    """Runs the traced model once, giving every tensor node its layout of channel spaces."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module, opaque: set[str]) -> None:
        super().__init__(gm)
        self.model, self.opaque_names = model, opaque
        self.spaces = _Spaces()
        self.layouts: dict[fx.Node, Layout] = {}
        self.shapes: dict[fx.Node, torch.Size] = {}
        self.consts: dict[fx.Node, Any] = {}
        self.calls: dict[str, tuple[Any, Any]] = {}
        self.items: dict[fx.Node, list[Layout | None]] = {}  # tuple outputs (an RNN's): each item's layout
        self.followers: dict[str, str] = {}
        self.tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if isinstance(value, torch.Tensor):
            self.shapes[n] = value.shape
        else:
            self.consts[n] = value
        self.layouts[n] = self.visit(n, value)
        return value

    # --- helpers -------------------------------------------------------------------------
    def is_tensor(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and arg in self.shapes

    def layout_of(self, arg: Any) -> Layout:
        return self.layouts.get(arg, {}) if isinstance(arg, fx.Node) else {}

    def resolve(self, arg: Any) -> Any:
        """Replace nodes holding plain values (ints, sizes) by those values."""
        return fx.node.map_arg(arg, lambda a: self.consts.get(a, a))

    def block(self, segs: tuple[Segment, ...] | None) -> None:
        for s in segs or ():
            if s.space >= 0:
                self.spaces.block(s.space)

    def opaque(self, n: fx.Node) -> Layout:
        """An operation we do not understand: nothing it reads may be pruned."""
        for arg in n.all_input_nodes:
            for segs in self.layout_of(arg).values():
                self.block(segs)
            for item in self.items.get(arg, ()):
                for segs in (item or {}).values():
                    self.block(segs)
        return {}

    def add_members(self, kind: str, name: str, segs: tuple[Segment, ...] | None) -> None:
        for s in segs or ():
            if s.space >= 0:
                self.spaces.add(s.space, Member(kind, name, s.offset, s.inner))

    def fresh(self, name: str, size: int, blocks: int = 1) -> tuple[Segment, ...]:
        """A new space produced by layer ``name`` (its output rows)."""
        s = self.spaces.new(size, blocks)
        self.spaces.add(s, Member("out", name))
        return (Segment(s, 0, size, 1),)

    def merge(self, entries: list[tuple[Segment, ...] | None]) -> tuple[Segment, ...] | None:
        """Join layouts that meet channel by channel; block them when they cannot be matched."""
        tracked = [e for e in entries if e is not None]
        if not tracked:
            return None
        first = tracked[0]
        if len(tracked) < len(entries) or any(not _same_structure(first, e) for e in tracked):
            for e in tracked:
                self.block(e)
            return None
        for e in tracked[1:]:
            for a, b in zip(first, e, strict=True):
                if a.space >= 0 and b.space >= 0:
                    self.spaces.union(a.space, b.space)
                else:
                    self.block((a, b))
        return first

    def once(self, name: str, ins: Any, outs: Any) -> Any:
        """A layer called again must cut the same channels: merge with its first call."""
        if name not in self.calls:
            self.calls[name] = (ins, outs)
            return outs
        first_in, first_out = self.calls[name]
        self.merge([first_in, ins])
        self.merge([first_out, outs])
        return first_out

    # --- dispatch ------------------------------------------------------------------------
    def visit(self, n: fx.Node, value: Any) -> Layout:
        if n.op == "placeholder":
            return {}
        if n.op == "get_attr":
            return self.attribute(n, value)
        if n.op == "output":
            return self.opaque(n)  # the model's outputs keep every channel
        if n.op == "call_module":
            return self.visit_module(n, self.model.get_submodule(str(n.target)), value)
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
        if name == "getitem" and n.args and n.args[0] in self.items:
            return self.item(n)
        if not isinstance(value, torch.Tensor):
            return {} if name in SHAPE_ONLY else self.opaque(n)
        return self.visit_function(n, name, value)

    def visit_function(self, n: fx.Node, name: str, value: torch.Tensor) -> Layout:
        src = n.args[0] if n.args else None
        if name == "getitem" and self.is_tensor(src):
            return self.index(n)

        if name in BINARY:  # the tensor may be either operand (0.5 * x)
            operands = [a for a in (*n.args, *n.kwargs.values()) if self.is_tensor(a)]
            return self.broadcast(operands, value.shape) if operands else self.opaque(n)
        if name not in CAT and not self.is_tensor(src):
            return self.opaque(n)
        if name in UNARY:
            return self.layout_of(src)
        table = {
            **dict.fromkeys(RESHAPE, lambda: self.reshape(src, value.shape)),
            **dict.fromkeys(TRANSPOSE, lambda: self.transpose(n, name)),
            **dict.fromkeys(CAT, lambda: self.cat(n)),
            **dict.fromkeys(("expand", "expand_as"), lambda: self.expand(src, value.shape)),
            **dict.fromkeys(REDUCE, lambda: self.reduce(n)),
            **dict.fromkeys(("softmax", "log_softmax"), lambda: self.softmax(n)),
            **dict.fromkeys(POOLS, lambda: self.pool(src)),
        }
        return table[name]() if name in table else self.opaque(n)

    def visit_module(self, n: fx.Node, m: nn.Module, value: Any) -> Layout:
        name, x = str(n.target), (n.args[0] if n.args else None)
        if isinstance(m, RECURRENT) and name not in self.opaque_names and self.is_tensor(x) and len(n.args) == 1:
            return self.recurrent(n, name, m, x, value)
        if name in self.opaque_names or not self.is_tensor(x) or not isinstance(value, torch.Tensor):
            return self.opaque(n)
        if isinstance(m, CONVS):
            return self.conv(name, m, x)
        if isinstance(m, nn.Linear):
            return self.linear(name, x, m.out_features, value, mixes_tokens=False)
        if isinstance(m, MultiHeadSelfAttention):
            return self.linear(name, x, m.proj.out_features, value, mixes_tokens=True)
        if norm_axis(m) is not None:
            return self.norm(name, m, x, norm_axis(m))
        if isinstance(m, BATCHNORMS):
            return self.norm(name, m, x, 1)
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            return self.norm(name, m, x, -1)
        if isinstance(m, nn.Embedding):
            self.opaque(n)
            return {len(value.shape) - 1: self.once(name, None, self.fresh(name, m.embedding_dim))}
        if elementwise(m):
            return self.layout_of(x)
        if isinstance(m, POOL_MODULES):
            return self.pool(x)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self.reshape(x, value.shape)
        return self.opaque(n)

    # --- layers --------------------------------------------------------------------------
    def recurrent(self, n: fx.Node, name: str, m: nn.Module, x: fx.Node, value: Any) -> Layout:
        """An LSTM/GRU/RNN called on a sequence alone: it reads the input's features (last axis,
        columns of ``weight_ih_l0``) and writes hidden units, one space shared by every layer and
        direction (``hidden_size`` is one number), onto its output's last axis (both directions
        side by side). The final states (item 1) carry the units per layer: using them blocks it."""
        if getattr(m, "proj_size", 0) or not isinstance(value, tuple) or not isinstance(value[0], torch.Tensor):
            return self.opaque(n)
        layout = self.layout_of(x)
        last = len(self.shapes[x]) - 1
        for d, segs in layout.items():
            if d != last:
                self.block(segs)  # the recurrence mixes time steps (and the batch axis is not a channel)
        ins = layout.get(last)
        self.add_members("in", name, ins)
        hidden = m.hidden_size
        if name in self.calls:
            out = self.once(name, ins, None)
        else:
            space = self.spaces.new(hidden)
            for g in range(rnn_gates(m)):  # a unit's rows in each gate block
                self.spaces.add(space, Member("out", name, g * hidden))
            out = tuple(Segment(space, i * hidden, hidden, 1) for i in range(2 if m.bidirectional else 1))
            self.once(name, ins, out)
        self.items[n] = [{len(value[0].shape) - 1: out}, None]
        return {}

    def item(self, n: fx.Node) -> Layout:
        """An item of a tuple output whose items' layouts are known; an untracked item that is used
        (an RNN's final states) blocks the whole output."""
        items, idx = self.items[n.args[0]], n.args[1]
        item = items[idx] if isinstance(idx, int) and -len(items) <= idx < len(items) else None
        if item is not None:
            return item
        return self.opaque(n) if n.users else {}

    def conv(self, name: str, m: nn.Module, x: fx.Node) -> Layout:
        layout = self.layout_of(x)
        for d, segs in layout.items():
            if d != 1:
                self.block(segs)  # convolution mixes spatial positions
        segs, g = layout.get(1), m.groups
        if g > 1 and m.in_channels == g:  # depthwise: each input channel owns its outputs
            mult = m.out_channels // g
            self.add_members("in", name, segs)
            outs = (
                None
                if segs is None
                else tuple(Segment(s.space, s.offset * mult, s.length, s.inner * mult) for s in segs)
            )
            self.add_members("out", name, outs)
        else:
            if g > 1:
                segs = self.grouped_input(segs, g)
            self.add_members("in", name, segs)
            outs = self.fresh(name, m.out_channels, blocks=g)
        outs = self.once(name, segs, outs)
        return {1: outs} if outs else {}

    def grouped_input(self, segs: tuple[Segment, ...] | None, g: int) -> tuple[Segment, ...] | None:
        """A grouped conv may lose inputs only evenly from each group, from one whole space."""
        if segs and len(segs) == 1 and segs[0].space >= 0 and segs[0].offset == 0 and segs[0].inner == 1:
            self.spaces.require_blocks(segs[0].space, g)
            return segs
        self.block(segs)
        return None

    def linear(self, name: str, x: fx.Node, out_size: int, value: torch.Tensor, *, mixes_tokens: bool) -> Layout:
        layout, last = self.layout_of(x), len(self.shapes[x]) - 1
        out: Layout = {}
        for d, segs in layout.items():
            if d != last and mixes_tokens:
                self.block(segs)
            elif d != last:
                out[d] = segs  # a Linear acts on each position alone
        segs = layout.get(last)
        self.add_members("in", name, segs)
        out[len(value.shape) - 1] = self.once(name, segs, self.fresh(name, out_size))
        return out

    def norm(self, name: str, m: nn.Module, x: fx.Node, axis: int) -> Layout:
        layout = self.layout_of(x)
        axis %= len(self.shapes[x])
        segs = layout.get(axis)
        self.add_members("norm", name, segs)
        self.once(name, segs, None)
        if isinstance(m, BATCHNORMS) and x.op == "call_module":
            prev = self.model.get_submodule(str(x.target))
            out_axis = 1 if isinstance(prev, CONVS) else len(self.shapes[x]) - 1
            if isinstance(prev, (*CONVS, nn.Linear)) and out_axis == axis:
                self.followers[str(x.target)] = name
        return layout

    def attribute(self, n: fx.Node, value: Any) -> Layout:
        """A free parameter (``cls_token``): each axis longer than 1 is a space of its own."""
        name = str(n.target)
        if name not in self.tensors or not isinstance(value, torch.Tensor):
            return {}
        owner = name.rpartition(".")[0]
        if owner and isinstance(
            self.model.get_submodule(owner),
            (*CONVS, *BATCHNORMS, nn.Linear, nn.LayerNorm, nn.Embedding, MultiHeadSelfAttention),
        ):
            return {}  # a layer's own weight read directly (T5 reads wo.weight.dtype): its cuts are the layer's
        out: Layout = {}
        for axis, size in enumerate(value.shape):
            if size > 1:
                s = self.spaces.new(size)
                self.spaces.add(s, Member("param", name, axis=axis))
                out[axis] = (Segment(s, 0, size, 1),)
        return out

    # --- tensor operations ---------------------------------------------------------------
    def broadcast(self, operands: list[fx.Node], out_shape: torch.Size) -> Layout:
        """Elementwise ops: along each axis, the operands' channels meet one to one."""
        out: Layout = {}
        nd = len(out_shape)
        for axis in range(nd):
            entries = []
            for op in operands:
                a = axis - (nd - len(self.shapes[op]))
                if a < 0:
                    continue
                if self.shapes[op][a] == 1 and out_shape[axis] != 1:
                    self.block(self.layout_of(op).get(a))  # broadcast: one value meets all
                    continue
                entries.append(self.layout_of(op).get(a))
            merged = self.merge(entries)
            if merged:
                out[axis] = merged
        return out

    def index(self, n: fx.Node) -> Layout:
        src, idx = n.args[0], self.resolve(n.args[1])
        layout, shape = self.layout_of(src), self.shapes[src]
        items = list(idx) if isinstance(idx, tuple) else [idx]
        if any(type(i) not in (int, slice, type(None), type(Ellipsis)) for i in items):
            return self.opaque(n)
        if Ellipsis in items:
            at = items.index(Ellipsis)
            used = sum(1 for i in items if isinstance(i, (int, slice)))
            items[at : at + 1] = [slice(None)] * (len(shape) - used)
        out: Layout = {}
        a_in = a_out = 0
        for item in items:
            if item is None:
                a_out += 1
                continue
            segs = layout.get(a_in)
            if isinstance(item, slice) and _full_slice(item, shape[a_in]):
                if segs:
                    out[a_out] = segs
            else:
                self.block(segs)  # a partial slice or one index of a channel axis
            a_out += isinstance(item, slice)
            a_in += 1
        for d, segs in layout.items():
            if d >= a_in:
                out[a_out + d - a_in] = segs
        return out

    def reshape(self, src: fx.Node, out_shape: torch.Size) -> Layout:
        out: Layout = {}
        for d, segs in self.layout_of(src).items():
            target = _reshaped_axis(self.shapes[src], out_shape, d)
            if target is None:
                self.block(segs)
                continue
            j, p = target
            out[j] = tuple(Segment(s.space, s.offset * p, s.length, s.inner * p) for s in segs)
        return out

    def transpose(self, n: fx.Node, name: str) -> Layout:
        src, args = n.args[0], self.resolve(n.args[1:])
        nd = len(self.shapes[src])
        if name == "permute":
            perm = list(args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args)
        else:
            if len(args) != 2 or not all(isinstance(a, int) for a in args):
                return self.opaque(n)
            perm = list(range(nd))
            d0, d1 = args[0] % nd, args[1] % nd
            perm[d0], perm[d1] = perm[d1], perm[d0]
        if sorted(p % nd for p in perm) != list(range(nd)):
            return self.opaque(n)
        layout = self.layout_of(src)
        return {i: layout[p % nd] for i, p in enumerate(perm) if p % nd in layout}

    def cat(self, n: fx.Node) -> Layout:
        tensors = n.args[0]
        dim = self.resolve(n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0))
        if not isinstance(tensors, (list, tuple)) or not all(self.is_tensor(t) for t in tensors):
            return self.opaque(n)
        nd = len(self.shapes[tensors[0]])
        dim %= nd
        out: Layout = {}
        for axis in range(nd):
            if axis != dim:
                merged = self.merge([self.layout_of(t).get(axis) for t in tensors])
            else:
                merged = self.side_by_side(tensors, axis)
            if merged:
                out[axis] = merged
        return out

    def side_by_side(self, tensors: Sequence[fx.Node], axis: int) -> tuple[Segment, ...] | None:
        """Concatenation along a channel axis: each part's channels move up by an offset."""
        segs: list[Segment] = []
        offset = 0
        for t in tensors:
            size = self.shapes[t][axis]
            part = self.layout_of(t).get(axis) or (Segment(-1, 0, size, 1),)
            segs += [Segment(s.space, s.offset + offset, s.length, s.inner) for s in part]
            offset += size
        return tuple(segs) if any(s.space >= 0 for s in segs) else None

    def expand(self, src: fx.Node, out_shape: torch.Size) -> Layout:
        shape, out = self.shapes[src], {}
        shift = len(out_shape) - len(shape)
        for d, segs in self.layout_of(src).items():
            if out_shape[d + shift] == shape[d]:
                out[d + shift] = segs
            else:
                self.block(segs)
        return out

    def reduce(self, n: fx.Node) -> Layout:
        src, nd = n.args[0], len(self.shapes[n.args[0]])
        dim = self.resolve(n.args[1] if len(n.args) > 1 else n.kwargs.get("dim"))
        keep = self.resolve(n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False))
        if dim is None:
            return self.opaque(n)
        dims = {d % nd for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        out: Layout = {}
        for d, segs in self.layout_of(src).items():
            if d in dims:
                self.block(segs)  # a reduction over channels mixes them
            else:
                out[d if keep else d - sum(r < d for r in dims)] = segs
        return out

    def softmax(self, n: fx.Node) -> Layout:
        src = n.args[0]
        dim = self.resolve(n.args[1] if len(n.args) > 1 else n.kwargs.get("dim"))
        if not isinstance(dim, int):
            return self.opaque(n)
        layout = dict(self.layout_of(src))
        self.block(layout.pop(dim % len(self.shapes[src]), None))
        return layout

    def pool(self, src: Any) -> Layout:
        """Pooling keeps batch and channel axes and mixes the spatial ones."""
        out: Layout = {}
        for d, segs in self.layout_of(src).items():
            if d <= 1:
                out[d] = segs
            else:
                self.block(segs)
        return out
