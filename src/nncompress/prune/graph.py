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

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import fx, nn

from nncompress.models.vit import MultiHeadSelfAttention
from nncompress.prune.surgery import BATCHNORMS, CONVS


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
    """

    groups: list[ChannelGroup]
    followers: dict[str, str] = field(default_factory=dict)


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

    def __init__(self, opaque: set[str]) -> None:
        super().__init__()
        self.opaque = opaque
        self.path: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, MultiHeadSelfAttention) or qualname in self.opaque:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        self.path.append(self.path_of_module(m))
        result = super().call_module(m, forward, args, kwargs)
        self.path.pop()
        return result


def trace_channels(
    model: nn.Module, example_inputs: Any, *, opaque: Sequence[str] = ()
) -> ChannelGraph:
    """Trace ``model`` and return its unblocked channel groups.

    ``opaque``: names of submodules to treat as black boxes (not traced into; their inputs and
    outputs are never pruned), e.g. ones that torch.fx cannot trace.

    Example:
        >>> graph = trace_channels(model, torch.randn(2, 1, 28, 28))  # doctest: +SKIP
        >>> [g.names() for g in graph.groups]  # doctest: +SKIP
    """
    tracer = _Tracer(set(opaque))
    try:
        graph = tracer.trace(model)
    except Exception as e:
        where = f" inside submodule {tracer.path[-1]!r}" if tracer.path else ""
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__}{where} ({type(e).__name__}: {e}); "
            "name the submodule that fails in `exclude` so it is kept whole and not traced"
        ) from e
    walker = _Walker(fx.GraphModule(model, graph), model, set(opaque))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _run(walker, graph, example_inputs)
    finally:
        model.train(was_training)
    return ChannelGraph(walker.spaces.groups(), walker.followers)


def _run(walker: fx.Interpreter, graph: fx.Graph, inputs: Any) -> None:
    """Run the interpreter on inputs given as the model takes them (tensor, tuple or dict)."""
    if isinstance(inputs, dict):
        names = [str(n.target) for n in graph.nodes if n.op == "placeholder"]
        walker.run(*[inputs.get(n) for n in names])
    elif isinstance(inputs, (tuple, list)):
        walker.run(*inputs)
    else:
        walker.run(inputs)


UNARY = {
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "leaky_relu", "elu", "mish", "softplus", "dropout", "contiguous", "clone", "float", "neg",
    "abs", "exp", "sqrt", "square", "to", "type_as",
}
BINARY = {
    "add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "itruediv", "add_", "sub_",
    "mul_", "div_", "maximum", "minimum",
}
RESHAPE = {"flatten", "view", "reshape", "unflatten"}
TRANSPOSE = {"transpose", "permute", "swapaxes"}
CAT = {"cat", "concat", "concatenate"}
REDUCE = {"mean", "sum", "amax", "amin"}
SHAPE_ONLY = {"size", "dim", "getattr", "numel"}
POOLS = {
    f"{kind}_pool{d}d" for kind in ("avg", "max", "adaptive_avg", "adaptive_max") for d in (1, 2, 3)
}
ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d,
)
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)


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
        if not isinstance(value, torch.Tensor):
            return {} if name in SHAPE_ONLY else self.opaque(n)
        return self.visit_function(n, name, value)

    def visit_function(self, n: fx.Node, name: str, value: torch.Tensor) -> Layout:
        src = n.args[0] if n.args else None
        if name == "getitem" and self.is_tensor(src):
            return self.index(n)
        if name not in CAT and not self.is_tensor(src):
            return self.opaque(n)
        if name in UNARY:
            return self.layout_of(src)
        if name in BINARY:
            operands = [a for a in (*n.args, *n.kwargs.values()) if self.is_tensor(a)]
            return self.broadcast(operands, value.shape)
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
        if name in self.opaque_names or not self.is_tensor(x) or not isinstance(value, torch.Tensor):
            return self.opaque(n)
        if isinstance(m, CONVS):
            return self.conv(name, m, x)
        if isinstance(m, nn.Linear):
            return self.linear(name, x, m.out_features, value, mixes_tokens=False)
        if isinstance(m, MultiHeadSelfAttention):
            return self.linear(name, x, m.proj.out_features, value, mixes_tokens=True)
        if isinstance(m, BATCHNORMS):
            return self.norm(name, m, x, 1)
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            return self.norm(name, m, x, -1)
        if isinstance(m, nn.Embedding):
            self.opaque(n)
            return {len(value.shape) - 1: self.once(name, None, self.fresh(name, m.embedding_dim))}
        if isinstance(m, ACTIVATIONS):
            return self.layout_of(x)
        if isinstance(m, POOL_MODULES):
            return self.pool(x)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self.reshape(x, value.shape)
        return self.opaque(n)

    # --- layers --------------------------------------------------------------------------
    def conv(self, name: str, m: nn.Module, x: fx.Node) -> Layout:
        layout = self.layout_of(x)
        for d, segs in layout.items():
            if d != 1:
                self.block(segs)  # convolution mixes spatial positions
        segs, g = layout.get(1), m.groups
        if g > 1 and m.in_channels == g:  # depthwise: each input channel owns its outputs
            mult = m.out_channels // g
            self.add_members("in", name, segs)
            outs = None if segs is None else tuple(
                Segment(s.space, s.offset * mult, s.length, s.inner * mult) for s in segs)
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
        if segs and len(segs) == 1 and segs[0].space >= 0 and segs[0].offset == 0 \
                and segs[0].inner == 1:
            self.spaces.require_blocks(segs[0].space, g)
            return segs
        self.block(segs)
        return None

    def linear(
        self, name: str, x: fx.Node, out_size: int, value: torch.Tensor, *, mixes_tokens: bool
    ) -> Layout:
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
            items[at:at + 1] = [slice(None)] * (len(shape) - used)
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
