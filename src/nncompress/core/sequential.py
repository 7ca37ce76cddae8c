"""Sequential layer-by-layer calibration engine for one-shot compression (GPTQ, SparseGPT, Wanda,
AWQ, SmoothQuant).

One-shot methods compress each ``nn.Linear`` from statistics of its inputs on a small calibration
set. Hooking the whole model once would feed later layers inputs computed by the *uncompressed*
model and hold every layer's statistics at once; instead, as in Frantar et al. (2023), the engine
walks the model's list of transformer blocks:

1. find the blocks: the longest ``nn.ModuleList`` / ``nn.Sequential`` whose >= 2 children share a
   class (a GPT's ``blocks``, BERT's ``encoder.layer``); a model without one (an MLP, a CNN) is a
   single block, the whole model;
2. capture every block's positional and keyword arguments for every calibration batch with forward
   pre-hooks, as the model passes them (layers may differ: sliding-window and global attention
   take different masks and rotary embeddings), stopping each forward after the last block; only
   the first block's hidden input is kept, and the run checks that each block feeds the next;
3. per block: group its Linears by the tensor they read (q, k and v read one norm's output), collect
   each group's input statistics with forward hooks, hand the groups to the method, then rerun the
   now compressed block to produce the next block's inputs.

Only one block's activations are held at a time. Selected Linears outside the block list (rare: a
pooler) are handled last, with the whole model as their block.

Example:
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> batches = [(torch.randn(4, 8), None)]
    >>> run_sequential(model, batches, lambda run, groups: None, select=["0", "2"], needs=("hessian",))
    ['0', '2']
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

STATS = ("hessian", "sq_sum", "absmax", "abs_sum", "samples", "float_gap")
MAX_SAMPLE_ROWS = 2048  # rows of a layer's inputs kept for searches that need X itself (AWQ)
FOLD_RTOL = 1e-5  # a fold is exact when block outputs move less than this (relative; exact: <1e-6)

Call = tuple[tuple[Any, ...], dict[str, Any]]  # (positional args, keyword args) of one module call


class _StopForward(Exception):
    """Raised by the capture hook to end a forward once the last block's call is recorded."""


# --- statistics -------------------------------------------------------------------------------------


@dataclass
class LayerStats:
    """Statistics of one Linear's inputs X (rows: tokens of all calibration batches; columns: inputs).

    Only those named in the engine's ``needs`` are gathered; the others stay None.
    """

    count: int = 0
    xtx: torch.Tensor | None = None  # (in, in) X^T X
    sq_sum: torch.Tensor | None = None  # (in,) sum over rows of x_j^2
    absmax: torch.Tensor | None = None  # (in,) max |x_j|
    abs_sum: torch.Tensor | None = None  # (in,) sum |x_j|
    samples: torch.Tensor | None = None  # (<= max rows, in) evenly strided rows of X
    gap_x: torch.Tensor | None = None  # (in, in) (X_float - X)^T X: X_float the float model's inputs

    def add(
        self, x: torch.Tensor, needs: Collection[str], sample_rows: int, x_float: torch.Tensor | None = None
    ) -> None:
        """Accumulate one call's input ``x`` (..., in); ``x_float``: the same layer's input in the
        float model on the same tokens (needed for ``"float_gap"``)."""
        x = x.detach().reshape(-1, x.shape[-1]).float()  # (rows, in)
        if "hessian" in needs:
            self.xtx = _plus(self.xtx, x.T @ x)
        if "float_gap" in needs and x_float is not None:
            if x_float.numel() != x.numel():
                raise ValueError(f"the float model's input has {x_float.numel()} values, the layer's {x.numel()}")
            self.gap_x = _plus(self.gap_x, (x_float.detach().reshape(x.shape).float() - x).T @ x)
        if "sq_sum" in needs:
            self.sq_sum = _plus(self.sq_sum, x.square().sum(0))
        if "abs_sum" in needs:
            self.abs_sum = _plus(self.abs_sum, x.abs().sum(0))
        if "absmax" in needs:
            m = x.abs().amax(0)
            self.absmax = m if self.absmax is None else torch.maximum(self.absmax, m)
        if "samples" in needs and sample_rows > 0:
            idx = torch.linspace(0, x.shape[0] - 1, min(sample_rows, x.shape[0]), device=x.device).long()
            self.samples = _cat(self.samples, x[idx])
        self.count += x.shape[0]

    def hessian(self) -> torch.Tensor:
        """GPTQ's H = 2 X^T X / rows (the Hessian of the layer's squared output error)."""
        if self.xtx is None:
            raise ValueError("the Hessian was not collected (add 'hessian' to needs)")
        return self.xtx * (2.0 / max(1, self.count))

    def float_gap(self) -> torch.Tensor | None:
        """2 (X_float - X)^T X / rows, scaled as :meth:`hessian`: how far the inputs the compressed
        model gives this layer are from the float model's (GPTAQ's asymmetric calibration); None
        where the float model's inputs were not recorded (a layer outside the blocks)."""
        return None if self.gap_x is None else self.gap_x * (2.0 / max(1, self.count))

    def norms(self) -> torch.Tensor:
        """||X_j||_2 per input feature (Wanda)."""
        if self.sq_sum is None:
            raise ValueError("input norms were not collected (add 'sq_sum' to needs)")
        return self.sq_sum.sqrt()

    def absmean(self) -> torch.Tensor:
        """mean |x_j| per input feature (AWQ)."""
        if self.abs_sum is None:
            raise ValueError("input means were not collected (add 'abs_sum' to needs)")
        return self.abs_sum / max(1, self.count)


def _plus(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total + value


def _cat(rows: torch.Tensor | None, more: torch.Tensor) -> torch.Tensor:
    return more if rows is None else torch.cat([rows, more])


# --- layer selection ----------------------------------------------------------------------------------


def plain_linears(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    """``(name, layer)`` of every plain ``nn.Linear`` (not already replaced), in definition order."""
    return [(n, m) for n, m in module.named_modules() if type(m) is nn.Linear]


def select_linears(
    model: nn.Module, *, layers: tuple[str, ...], exclude: tuple[str, ...], keep_classifier: bool
) -> dict[str, nn.Linear]:
    """The plain Linears a one-shot step compresses, by name, in definition order.

    ``layers`` (names or full-match regexes; a match on a parent selects its children; empty: all)
    picks them, ``exclude`` (same form) drops some, and ``keep_classifier`` drops the last Linear
    (the LM head or classifier, which is small next to the blocks and sensitive).
    """
    from nncompress.base.selection import check_patterns, is_excluded

    check_patterns(model, layers, "layers", list_layers=plain_linears)
    check_patterns(model, exclude, "exclude", list_layers=plain_linears)
    found = plain_linears(model)
    last = found[-1][0] if found and keep_classifier else None
    return {
        n: m for n, m in found if n != last and (not layers or is_excluded(n, layers)) and not is_excluded(n, exclude)
    }


def replace_linear(model: nn.Module, name: str, new: nn.Module, old: nn.Linear) -> nn.Module:
    """Put ``new`` at ``name`` of ``model``, on ``old``'s device (packing builds CPU buffers); returns ``new``."""
    from nncompress.base.modules import replace_module

    new = new.to(old.weight.device)
    replace_module(model, name, new)
    return new


def check_blocks_setting(blocks: object) -> None:
    """Raise ValueError unless ``blocks`` is None (auto) or a string (a module name; "" = whole model)."""
    if blocks is not None and not isinstance(blocks, str):
        raise ValueError(
            f"blocks must be None (find the block list), a module name such as 'encoder.layer', "
            f"or '' (the whole model is one block); got {blocks!r}"
        )


# --- blocks -------------------------------------------------------------------------------------------


def find_blocks(model: nn.Module, blocks: str | None = None) -> tuple[str, list[tuple[str, nn.Module]]]:
    """The model's block list as ``(list name, [(block name, block), ...])``; ``("", [])`` when none.

    None finds the longest ``nn.ModuleList`` / ``nn.Sequential`` of >= 2 children that share one
    class and hold Linears (the first such in definition order on ties); a name picks that
    container; ``""`` means no block list (the whole model is one block).

    Example:
        >>> find_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
        ('', [])
    """
    if blocks == "":
        return "", []
    if blocks is not None:
        try:
            container = model.get_submodule(blocks)
        except AttributeError as e:
            raise ValueError(f"blocks={blocks!r} names no module of {type(model).__name__}") from e
        if not isinstance(container, (nn.ModuleList, nn.Sequential)) or len(container) < 1:
            raise ValueError(
                f"blocks={blocks!r} is a {type(container).__name__}; it must name a non-empty "
                "nn.ModuleList or nn.Sequential (or pass '' for the whole model)"
            )
        return blocks, [(f"{blocks}.{i}", b) for i, b in container.named_children()]
    best: tuple[str, nn.Module] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) < 2:
            continue
        same_class = len({type(c) for c in m.children()}) == 1
        has_linear = any(isinstance(x, nn.Linear) for x in m.modules())
        if same_class and has_linear and (best is None or len(m) > len(best[1])):
            best = (name, m)
    if best is None:
        return "", []
    prefix = f"{best[0]}." if best[0] else ""
    return best[0], [(f"{prefix}{i}", b) for i, b in best[1].named_children()]


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value)


def _hidden_in(call: Call) -> torch.Tensor:
    """The hidden state a block is called with: its first positional arg, or ``hidden_states=``."""
    args, kwargs = call
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            "a block must take its hidden state as first positional argument or as hidden_states=; "
            f"got args of types {[type(a).__name__ for a in args]} and keywords {sorted(kwargs)}"
        )
    return x


def _hidden_out(out: Any) -> torch.Tensor:
    """The hidden state a block returns: the output, or its first element (HF layers return tuples)."""
    x = out if isinstance(out, torch.Tensor) else out[0]
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"a block must return a tensor or a tuple starting with one, got {type(out).__name__}")
    return x


def _with_hidden(call: Call, hidden: torch.Tensor) -> Call:
    """A block's recorded call with ``hidden`` as its hidden state (first positional arg or ``hidden_states=``)."""
    args, kwargs = call
    if args:
        return (hidden, *args[1:]), kwargs
    return (), {**kwargs, "hidden_states": hidden}


def _without_hidden(call: Call) -> Call:
    """A block's call with its hidden state dropped (refilled later from the previous block's output)."""
    args, kwargs = call
    if args:
        return (None, *args[1:]), kwargs
    return (), {k: v for k, v in kwargs.items() if k != "hidden_states"}


def _is_kv_cache(value: Any) -> bool:
    """A Hugging Face KV cache (``transformers.Cache`` or a subclass), recognised without importing transformers."""
    return any(c.__name__ == "Cache" for c in type(value).__mro__)


def _without_cache(call: Call) -> Call:
    """A block's call without a KV cache: a block rerun many times on one batch must not append
    to one (its keys would repeat), so cache objects become None and ``use_cache`` False."""
    args, kwargs = call
    kwargs = {k: None if _is_kv_cache(v) else False if k == "use_cache" else v for k, v in kwargs.items()}
    return tuple(None if _is_kv_cache(a) else a for a in args), kwargs


def _batch_call(inputs: Any) -> Call:
    """A batch's inputs as a model call: a dict is keywords, a tuple/list positional args."""
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def capture_block_calls(
    model: nn.Module, list_name: str, blocks: Sequence[tuple[str, nn.Module]], calls: Sequence[Call]
) -> list[list[Call]]:
    """Per block, its call (positional and keyword arguments) on every calibration batch, exactly as
    the model makes it: blocks that differ (sliding-window and global attention, per-layer rotary
    embeddings or masks) each keep their own arguments.

    Every batch runs the model up to the end of the last block (then stops, ``_StopForward``),
    checking that the blocks run in order, once each, and that each block's hidden input is the
    previous block's output. Only the first block keeps its hidden input; the others' are dropped
    (the engine refills them from the previous, compressed, block) and so is any KV cache.
    """
    per_block: list[list[Call]] = [[] for _ in blocks]
    order: list[int] = []
    last_out: list[Any] = [None]
    chained: list[bool] = []

    def pre(i: int) -> Callable:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            order.append(i)
            call = _without_cache((args, kwargs))
            if i > 0:
                chained.append(_hidden_in(call) is last_out[0])
                call = _without_hidden(call)
            per_block[i].append(call)

        return hook

    def post(i: int) -> Callable:
        def hook(_m: nn.Module, _args: tuple, out: Any) -> None:
            last_out[0] = _hidden_out(out)
            if i == len(blocks) - 1:
                raise _StopForward

        return hook

    handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, (_, b) in enumerate(blocks)]
    handles += [b.register_forward_hook(post(i)) for i, (_, b) in enumerate(blocks)]
    try:
        for k, (args, kwargs) in enumerate(calls):
            del order[:]
            with contextlib.suppress(_StopForward):
                model(*args, **kwargs)
            if order != list(range(len(blocks))) or not all(chained):
                raise ValueError(
                    f"the blocks of {list_name!r} do not form a chain (each run once, in order, on the previous "
                    f"one's output; call order seen on batch {k}: {order}); pass blocks='name' of the right list, "
                    "or blocks='' to treat the whole model as one block"
                )
    finally:
        last_out[0] = None
        for h in handles:
            h.remove()
    return per_block


# --- one block ------------------------------------------------------------------------------------------


def _is_scalable_norm(module: nn.Module, channels: int) -> bool:
    """A leaf whose output scales per channel with its ``weight`` (and ``bias``): LayerNorm, RMSNorm."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    return (
        not list(module.children())
        and isinstance(weight, torch.Tensor)
        and weight.shape == (channels,)
        and (bias is None or (isinstance(bias, torch.Tensor) and bias.shape == (channels,)))
    )


@dataclass
class LayerGroup:
    """The Linears of one block that read the same input tensor (q, k and v read one norm's output).

    ``names`` / ``modules`` hold every plain Linear reading it (model-level names), ``selected``
    those the step compresses (only they get ``stats``: one object, shared, as the input is).
    ``producers`` may absorb a per-input-channel scale: the module that produced the input (a norm
    or Linear), then earlier Linears of the block with as many outputs as the group has inputs (v
    before an attention output projection), nearest first; whether absorbing one is exact is
    checked on data (``BlockRun.try_fold``).
    """

    names: list[str]
    modules: list[nn.Linear]
    selected: list[str]
    producers: list[str]
    stats: dict[str, LayerStats] = field(default_factory=dict)

    @property
    def in_features(self) -> int:
        """Input features shared by the group's layers."""
        return self.modules[0].in_features

    def module(self, name: str) -> nn.Linear:
        """The group's layer called ``name``."""
        return self.modules[self.names.index(name)]


class BlockRun:
    """One block (or the whole model, ``prefix`` "") with its calibration calls.

    Names given and returned are model-level (``blocks.3.attn.q``); ``model`` is the root, so a
    step can replace modules by name.
    """

    def __init__(
        self,
        model: nn.Module,
        prefix: str,
        module: nn.Module,
        calls: list[Call],
        float_inputs: dict[str, list[torch.Tensor]] | None = None,
    ) -> None:
        self.model, self.prefix, self.module, self.calls = model, prefix, module, calls
        self.float_inputs = float_inputs  # model-level Linear name -> its inputs in the float model, per call

    def full_name(self, local: str) -> str:
        """``q`` in block ``blocks.0`` -> ``blocks.0.q``."""
        return _full_name(self.prefix, local)

    def forward(self, limit: int | None = None) -> list[Any]:
        """The block's outputs for the first ``limit`` calls (all by default)."""
        with torch.no_grad():
            return [self.module(*args, **kwargs) for args, kwargs in self.calls[:limit]]

    def discover(self, selected: Collection[str]) -> list[LayerGroup]:
        """The block's Linears grouped by the tensor they read, in the order they first run
        (from the first calibration call); only groups holding a ``selected`` layer."""
        outputs: list[tuple[str, Any]] = []  # every module's output; kept alive so `is` is meaningful
        reads: list[tuple[str, torch.Tensor]] = []  # (linear name, input) in call order

        def on_output(name: str) -> Callable:
            def hook(m: nn.Module, args: tuple, out: Any) -> None:
                outputs.append((name, out))
                if type(m) is nn.Linear and args and isinstance(args[0], torch.Tensor):
                    reads.append((name, args[0]))

            return hook

        handles = [m.register_forward_hook(on_output(self.full_name(n))) for n, m in self.module.named_modules()]
        try:
            self.forward(limit=1)
        finally:
            for h in handles:
                h.remove()
        modules = dict(self.model.named_modules())
        groups: list[LayerGroup] = []
        seen: set[str] = set()
        for name, x in reads:
            if name in seen:
                continue
            members = [n for n, y in reads if y is x and n not in seen]
            seen.update(members)
            if not any(n in selected for n in members):
                continue
            groups.append(
                LayerGroup(
                    names=members,
                    modules=[modules[n] for n in members],
                    selected=[n for n in members if n in selected],
                    producers=self._producers(x, members, outputs, reads, modules),
                )
            )
        return groups

    def _producers(
        self,
        x: torch.Tensor,
        members: list[str],
        outputs: list[tuple[str, Any]],
        reads: list[tuple[str, torch.Tensor]],
        modules: dict[str, nn.Module],
    ) -> list[str]:
        channels = x.shape[-1]
        direct = [
            n
            for n, out in outputs
            if out is x
            and (
                (type(modules[n]) is nn.Linear and modules[n].out_features == channels)
                or _is_scalable_norm(modules[n], channels)
            )
        ]
        first_read = next(i for i, (n, _) in enumerate(reads) if n == members[0])
        earlier = [
            n for n, _ in reversed(reads[:first_read]) if modules[n].out_features == channels and n not in members
        ]
        return list(dict.fromkeys(direct[-1:] + earlier))

    def collect(self, groups: Sequence[LayerGroup], needs: Collection[str], max_rows: int = MAX_SAMPLE_ROWS) -> None:
        """Fill ``group.stats`` of the selected layers of ``groups`` over all calibration calls."""
        unknown = set(needs) - set(STATS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; known: {', '.join(STATS)}")
        per_call = max(1, max_rows // max(1, len(self.calls)))
        handles = []
        for group in groups:  # its layers read one tensor: one set of statistics, shared
            stats = LayerStats()
            group.stats.update({name: stats for name in group.selected})

            first = group.selected[0]
            float_inputs = iter((self.float_inputs or {}).get(first, []) if "float_gap" in needs else [])

            def hook(_m: nn.Module, args: tuple, _out: Any, stats: LayerStats = stats, ref: Any = float_inputs) -> None:
                if args:
                    stats.add(args[0], needs, per_call, next(ref, None))

            handles.append(group.module(first).register_forward_hook(hook))
        try:
            self.forward()
        finally:
            for h in handles:
                h.remove()

    def try_fold(self, group: LayerGroup, scale: torch.Tensor, reference: list[Any]) -> str | None:
        """Multiply the group's weight columns by ``scale`` and divide the output channels of the
        first producer for which that is exact by it; returns the producer's name, or None (nothing
        changed) when no fold is exact.

        Exactness is checked with a probe scale spread over [1/2, 2] rather than ``scale`` itself:
        the block's outputs on the ``reference`` calls must not move (``FOLD_RTOL``). A true fold
        holds for any positive scale; a near-miss (GELU on tiny activations, a scale close to 1)
        shows up under the probe.
        """
        probe = _probe_scale(group.in_features).to(scale)
        params = [m.weight for m in group.modules]
        for name in group.producers:
            producer = self.model.get_submodule(name)
            touched = params + _fold_params(producer)
            saved = [p.detach().clone() for p in touched]
            scale_inputs(group.modules, probe)
            scale_outputs(producer, 1.0 / probe)
            exact = _same_outputs(self.forward(limit=len(reference)), reference)
            with torch.no_grad():
                for p, old in zip(touched, saved):
                    p.copy_(old)
            if exact:
                scale_inputs(group.modules, scale)
                scale_outputs(producer, 1.0 / scale)
                return name
        return None


def _probe_scale(channels: int) -> torch.Tensor:
    """Positive per-channel factors spread over [1/2, 2] in a fixed pseudo-random order."""
    order = torch.randperm(channels, generator=torch.Generator().manual_seed(0))
    return 2.0 ** torch.linspace(-1.0, 1.0, channels)[order]


def _fold_params(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in (module.weight, getattr(module, "bias", None)) if p is not None]


def scale_inputs(layers: Iterable[nn.Linear], scale: torch.Tensor) -> None:
    """W[:, j] *= scale[j] for each layer: the layers now expect inputs divided by ``scale``."""
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(scale.to(layer.weight).reshape(1, -1))


def scale_outputs(module: nn.Module, factor: torch.Tensor) -> None:
    """Multiply a norm's or Linear's output channels by ``factor`` (its weight rows and bias)."""
    with torch.no_grad():
        w = module.weight
        w.mul_(factor.to(w).reshape(-1, *[1] * (w.dim() - 1)))
        if getattr(module, "bias", None) is not None:
            module.bias.mul_(factor.to(module.bias))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _same_outputs(outputs: list[Any], reference: list[Any]) -> bool:
    for out, ref in zip(outputs, reference):
        for a, b in zip(_tensors(out), _tensors(ref)):
            if not a.is_floating_point():
                if not torch.equal(a, b):
                    return False
            elif (a - b).abs().max() > FOLD_RTOL * b.abs().max().clamp(min=1e-12):
                return False
    return True


# --- the engine ----------------------------------------------------------------------------------------

Process = Callable[[BlockRun, list[LayerGroup]], None]


def run_sequential(
    model: nn.Module,
    batches: Iterable[Any],
    process: Process,
    *,
    select: Collection[str],
    needs: Collection[str],
    true_sequential: bool = True,
    blocks: str | None = None,
    max_rows: int = MAX_SAMPLE_ROWS,
    log: list[str] | None = None,
) -> list[str]:
    """Compress the ``select``-ed Linears of ``model`` block by block; returns their names in the
    order they were handed to ``process`` (each exactly once; never-run layers are left out).

    Args:
        model: the model, modified in place by ``process``.
        batches: ``(inputs, targets)`` calibration batches (targets unused).
        process: ``process(run, groups)`` compresses the selected layers of ``groups`` (their
            ``stats`` filled), e.g. replacing them via ``run.model``.
        select: model-level names of the Linears to compress.
        needs: statistics to gather (``STATS``).
        true_sequential: collect each group's statistics after the block's earlier groups were
            compressed (one pass per group: GPTQ, SparseGPT, Wanda); False: one pass on the float
            block for all groups, which are then handed over together (AWQ, SmoothQuant, which
            fold scales and compare against the float block's outputs).
        blocks: see :func:`find_blocks`.
        max_rows: input rows kept per layer for ``"samples"``.
        log: lines describing what ran are appended here.
    """
    selected = set(select)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    calls = [_batch_call(_to_device(b[0], device)) for b in batches]
    if not calls:
        raise ValueError("one-shot compression needs calibration batches; the task's train split gave none")
    visited: list[str] = []
    notes: list[str] = []
    modes = [(m, m.training) for m in model.modules()]  # restored one by one: submodules may differ
    model.eval()
    try:
        with torch.no_grad():
            list_name, block_list = find_blocks(model, blocks)
            todo = [[n for n in selected if n == bn or n.startswith(f"{bn}.")] for bn, _ in block_list]
            if any(todo):
                try:
                    block_calls = capture_block_calls(model, list_name, block_list, calls)
                except ValueError as e:
                    if blocks is not None:  # asked for by name: say it does not work
                        raise
                    notes.append(f"sequential: the whole model is one block ({e})")
                else:
                    visited += _run_blocks(model, block_list, todo, block_calls, process, needs, true_sequential,
                                           max_rows)  # fmt: skip
                    notes.append(f"sequential: {len(block_list)} blocks of {list_name!r}, {len(calls)} batch(es)")
            rest = selected - set(visited)
            if rest:
                if visited:
                    notes.append(f"sequential: {len(rest)} layer(s) outside the blocks handled on the whole model")
                float_inputs = None  # the float model's inputs exist only while nothing is compressed yet
                if "float_gap" in needs and not visited:
                    float_inputs = _float_pass(model, "", calls)[0]
                run = BlockRun(model, "", model, calls, float_inputs)
                visited += _process_block(run, rest, process, needs, true_sequential, max_rows)
    finally:
        for module, training in modes:
            module.training = training
    missing = selected - set(visited)
    if missing:
        notes.append(f"sequential: never ran on the calibration data, left as they were: {', '.join(sorted(missing))}")
    if log is not None:
        log += notes
    return visited


def _run_blocks(
    model: nn.Module,
    block_list: list[tuple[str, nn.Module]],
    todo: list[list[str]],
    block_calls: list[list[Call]],
    process: Process,
    needs: Collection[str],
    true_sequential: bool,
    max_rows: int,
) -> list[str]:
    """Process each block's ``todo`` layers in order, feeding each block the previous one's
    (compressed) outputs with its own recorded arguments; stops after the last block with work."""
    visited: list[str] = []
    calls = block_calls[0]
    float_calls = calls if "float_gap" in needs else None  # the float model's path, beside the compressed one
    for i, (name, block) in enumerate(block_list):
        float_inputs: dict[str, list[torch.Tensor]] | None = None
        if float_calls is not None:  # before the block is compressed: its float inputs and outputs
            float_inputs, float_out = _float_pass(block, name, float_calls)
            float_hidden = [_hidden_out(out) for out in float_out]
        run = BlockRun(model, name, block, calls, float_inputs)
        if todo[i]:
            visited += _process_block(run, set(todo[i]), process, needs, true_sequential, max_rows)
        if not any(todo[i + 1 :]):
            break
        hidden = [_hidden_out(out) for out in run.forward()]
        calls = [_with_hidden(c, h) for c, h in zip(block_calls[i + 1], hidden)]
        if float_calls is not None:
            float_calls = [_with_hidden(c, h) for c, h in zip(block_calls[i + 1], float_hidden)]
        block_calls[i] = []  # this block's arguments (block 0: its inputs) are no longer needed
    return visited


def _full_name(prefix: str, local: str) -> str:
    """A block's module name from the model's root (``blocks.0`` + ``q`` -> ``blocks.0.q``)."""
    return f"{prefix}.{local}" if prefix and local else prefix or local


def _float_pass(block: nn.Module, prefix: str, calls: list[Call]) -> tuple[dict[str, list[torch.Tensor]], list]:
    """Run the (still float) ``block`` on the float path's ``calls``: every plain Linear's input per
    call (model-level names, in call order) and the block's outputs."""
    inputs: dict[str, list[torch.Tensor]] = {}

    def record(name: str) -> Callable:
        def hook(_m: nn.Module, args: tuple, _out: Any) -> None:
            if args and isinstance(args[0], torch.Tensor):
                inputs.setdefault(name, []).append(args[0].detach())

        return hook

    handles = [
        m.register_forward_hook(record(_full_name(prefix, n))) for n, m in block.named_modules() if type(m) is nn.Linear
    ]
    try:
        with torch.no_grad():
            outputs = [block(*args, **kwargs) for args, kwargs in calls]
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs


def _process_block(
    run: BlockRun,
    selected: set[str],
    process: Process,
    needs: Collection[str],
    true_sequential: bool,
    max_rows: int,
) -> list[str]:
    groups = run.discover(selected)
    if true_sequential:
        for group in groups:
            run.collect([group], needs, max_rows)
            process(run, [group])
    elif groups:
        run.collect(groups, needs, max_rows)
        process(run, groups)
    return [n for g in groups for n in g.selected]


def calibration_batches(ctx: Any, count: int, purpose: str) -> list[Any]:
    """The first ``count`` train batches of ``ctx.task`` (ValueError when it has none)."""
    from nncompress.base.data import first_batches

    return first_batches(ctx.task.train, count, ctx.task.name, purpose=purpose)


def no_targets(targets: dict, kind: str, ctx: Any) -> bool:
    """False when a step has Linear layers to work on; else raises NothingToDo (a step that changes
    nothing is an error, not a success)."""
    if targets:
        return False
    from nncompress.base.checks import NothingToDo

    raise NothingToDo(f"{kind}: no Linear layer to quantize (only the kept last Linear, or none selected)")
