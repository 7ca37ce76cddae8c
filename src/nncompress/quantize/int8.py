"""Real int8 inference: post-training static quantization (``int8-static``) and dynamic int8 Linears.

``int8-static`` calibrates activation ranges on a few train batches and converts the model to
int8 kernels. Two backends:

- ``onnxruntime`` (preferred by ``backend="auto"`` when ``onnx``/``onnxruntime`` import): export
  to ONNX, ``onnxruntime.quantization.quantize_static`` in QDQ form (int8 weights per channel,
  uint8 activations), run by :class:`~nncompress.quantize.runtime.OnnxRuntimeModule`. On this
  project's CPUs (AVX2/AVX-512, no VNNI) it was 2-7x faster than torch.ao's int8 kernels at
  batch 1 and faster at batch 64 (see the step's docstring for the figures).
- ``torch``: torch.ao FX graph mode (``prepare_fx``/``convert_fx``, x86 backend) with
  conv-bn(-relu) and linear-relu fused; models FX cannot trace fall back to dynamic int8 Linears.

Either way the result takes the same inputs, returns float outputs, and saves as int8. Models
called by keyword (a dict batch, as Hugging Face models take) are traced by name with dynamic
batch and sequence axes (``io.onnx_export.trace_onnx``); their ONNX Runtime module is called by
keyword too and returns the model's output fields (``out.logits``).
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.base.checks import NothingToDo, check_choice, check_count
from nncompress.base.data import as_args, calibration_inputs
from nncompress.base.selection import check_patterns, matched_modules
from nncompress.base.settings import CalibrationSettings, Exclusions, default
from nncompress.core.step import Step, StepContext, register_step
from nncompress.measure.flops import mark_reference_macs
from nncompress.quantize.onnx_layers import consumers_of

OBSERVERS = ("minmax", "histogram")
BACKENDS = ("auto", "onnxruntime", "torch")


def _check_exclude(model: nn.Module, exclude: tuple[str, ...]) -> tuple[str, ...]:
    """The module names ``exclude`` selects (``base.selection``); ValueError for a pattern naming none."""
    check_patterns(model, exclude, "exclude")
    return matched_modules(model, exclude)


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    return any(name == e or name.startswith(f"{e}.") for e in exclude)


def _has_weight_matrix(module: nn.Module) -> bool:
    """The module itself (not a child) holds a parameter of 2+ dimensions."""
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


# --- torch.ao backend -------------------------------------------------------------------------


DYNAMIC_KINDS = (nn.Linear, nn.LSTM, nn.GRU)  # what torch.ao runs with dynamic int8 kernels
RNN_KINDS = (nn.LSTM, nn.GRU)


def dynamic_targets(model: nn.Module, exclude: tuple[str, ...] = ()) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the Linear (subclasses too), LSTM and GRU layers outside ``exclude``:
    what dynamic int8 quantizes."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) or type(m) in RNN_KINDS) and not _excluded(name, exclude)
    ]


def torch_dynamic_int8(model: nn.Module, *, per_channel: bool = True, exclude: tuple[str, ...] = ()) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear``, ``nn.LSTM`` and ``nn.GRU`` layers (except
    ``exclude``) run dynamic int8: int8 weights (the LSTM/GRU gate matrices included), activations
    quantized per batch, torch.ao's int8 GEMM and recurrent kernels."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    spec = {name: qconfig for name, _ in dynamic_targets(model, exclude)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        return quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)


def dynamic_int8_linear(layer: nn.Linear, *, per_channel: bool = True) -> nn.Module:
    """``layer`` as a torch.ao dynamic int8 Linear (int8 weights; activations quantized per tensor
    at run time, real int8 GEMM on fbgemm/x86)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    source = copy.deepcopy(layer).eval()
    source.qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        return DynamicLinear.from_float(source)


def torch_static_int8(
    model: nn.Module,
    calibration: list[tuple[Any, ...]],
    *,
    observer: str = "minmax",
    per_channel: bool = True,
    exclude: tuple[str, ...] = (),
) -> nn.Module:
    """torch.ao FX static int8 (x86 backend): fuse, observe ``calibration``, convert."""
    from torch.ao.quantization import (
        HistogramObserver,
        MinMaxObserver,
        PerChannelMinMaxObserver,
        QConfig,
        get_default_qconfig_mapping,
    )
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    # reduce_range: 7-bit activations avoid int16 overflow in AVX2 u8s8 kernels without VNNI.
    act_cls = HistogramObserver if observer == "histogram" else MinMaxObserver
    activation = act_cls.with_args(dtype=torch.quint8, reduce_range=True)
    if per_channel:
        weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    else:
        weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    mapping = get_default_qconfig_mapping("x86").set_global(QConfig(activation=activation, weight=weight))
    for name in exclude:
        mapping.set_module_name(name, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, calibration[0])
        with torch.inference_mode():
            for args in calibration:
                prepared(*args)
        converted = convert_fx(prepared)
    # Annotations written under `from __future__ import annotations` reach the graph as strings,
    # which GraphModule cannot pickle; types are not needed to run, so drop them.
    for node in converted.graph.nodes:
        node.type = None
    converted.recompile()
    return converted


# --- ONNX Runtime backend ---------------------------------------------------------------------


def _onnx_module_name(model: nn.Module, node_name: str, wrapped: bool = False) -> str | None:
    """The module a node came from: ``/stages/stages.0/stages.0.0/conv1/Conv`` -> ``stages.0.0.conv1``.

    The exporter names each scope after its module, prefixing a container's children with the
    container's scope (``stages.0`` is child ``0`` of ``stages``). ``wrapped``: the graph was traced
    through ``io.onnx_export``'s wrapper, whose scope ``/model`` comes first.
    """
    module, path, prev = model, [], None
    parts = node_name.strip("/").split("/")[:-1]
    if wrapped:
        if not parts or parts[0] != "model":
            return None
        parts = parts[1:]
    for part in parts:
        child = part[len(prev) + 1 :] if prev is not None and part.startswith(f"{prev}.") else part
        if child not in module._modules:
            return ".".join(path) or None
        module, prev = module._modules[child], part
        path.append(child)
    return ".".join(path) or None


_FOLLOWERS = ("Relu", "Clip", "LeakyRelu", "MaxPool", "AveragePool")  # stay fp32 behind a fp32 conv


def narrow_input_convs(graph: Any, min_in_channels: int) -> list[str]:
    """Names of Conv nodes with fewer than ``min_in_channels`` input channels per group, each with
    the chain of activations/pools that alone consumes its output (they stay fp32 with it)."""
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    consumers = consumers_of(graph)
    names = []
    for node in graph.node:
        weight = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or len(weight) < 2 or weight[1] >= min_in_channels:
            continue
        names.append(node.name)
        while len(consumers.get(node.output[0], [])) == 1 and consumers[node.output[0]][0].op_type in _FOLLOWERS:
            node = consumers[node.output[0]][0]
            names.append(node.name)
    return names


def onnxruntime_static_int8(
    model: nn.Module,
    calibration: list[tuple[Any, ...]],
    *,
    observer: str = "minmax",
    per_channel: bool = True,
    exclude: tuple[str, ...] = (),
    threads: int = 0,
    min_int8_in_channels: int = 1,
) -> tuple[nn.Module, str]:
    """Export to ONNX, quantize statically (QDQ, s8 weights, u8 activations); returns (module, summary)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    args = calibration[0]
    call = _graph_call(args)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self._it, None)
            return None if batch is None else call.feeds(batch)

    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp, "int8.onnx")
        pre, graph = _prepared_fp32_onnx(model, args, Path(tmp), call)
        weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
        skip = [n.name for n in graph.node if _excluded(_onnx_module_name(model, n.name, call.keywords) or "", exclude)]
        narrow = [n for n in narrow_input_convs(graph, min_int8_in_channels) if n not in skip]
        skip += narrow
        quantize_static(
            str(pre),
            str(q),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Entropy if observer == "histogram" else CalibrationMethod.MinMax,
            nodes_to_exclude=skip,
        )
        module = call.runtime_module(q.read_bytes(), threads)
    n_q = sum(1 for n in weighted if n.name not in skip)
    summary = f"onnxruntime QDQ int8, {n_q} of {len(weighted)} Conv/Gemm/MatMul quantized"
    if narrow:
        summary += f" (fp32: {', '.join(narrow)}: under {min_int8_in_channels} input channels)"
    return module, summary


# --- ONNX Runtime dynamic int8 ----------------------------------------------------------------

DYNAMIC_BACKENDS = ("onnxruntime", "torch")


def _export_fp32_onnx(model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: list[str]) -> None:
    """``model`` as an fp32 ONNX graph (TorchScript exporter, opset 17, batch axis dynamic)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            copy.deepcopy(model).eval(),
            tuple(a[:1] for a in args),
            str(path),
            input_names=names,
            output_names=["output"],
            dynamic_axes={n: {0: "batch"} for n in [*names, "output"]},
            opset_version=17,
            dynamo=False,
        )


@dataclass
class _GraphCall:
    """How the exported graph is called: its input names, and for a model taking keyword inputs the
    keywords it ignores, its settings and the fields of its dict / ``ModelOutput`` return."""

    names: list[str]
    keywords: bool = False
    output_keys: list[str] | None = None
    unused: list[str] | None = None
    fixed: dict[str, Any] | None = None

    def feeds(self, args: tuple[Any, ...]) -> dict[str, Any]:
        """One batch's graph inputs as NumPy arrays, by name."""
        given = args[0] if self.keywords else dict(zip(self.names, args))
        return {n: given[n].detach().cpu().numpy() for n in self.names}

    def runtime_module(self, model_bytes: bytes, threads: int) -> nn.Module:
        """The int8 graph as a module called as the float model was (by position or by keyword)."""
        from nncompress.quantize.runtime import OnnxRuntimeModule

        if not self.keywords:
            return OnnxRuntimeModule(model_bytes, self.names, threads=threads)
        return OnnxRuntimeModule(
            model_bytes,
            self.names,
            threads=threads,
            output_keys=self.output_keys,
            keyword_names=self.unused,
            fixed=self.fixed,
        )


def _graph_call(args: tuple[Any, ...]) -> _GraphCall:
    """Positional tensors, or one dict of keyword inputs (Hugging Face batches); TypeError otherwise."""
    if len(args) == 1 and isinstance(args[0], Mapping):
        return _GraphCall([str(k) for k, v in args[0].items() if isinstance(v, torch.Tensor)], keywords=True)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        kinds = ", ".join(type(a).__name__ for a in args) or "nothing"
        raise TypeError(f"the onnxruntime backend takes tensors or one dict of keyword tensors, got {kinds}")
    return _GraphCall([f"input_{i}" for i in range(len(args))])


def _prepared_fp32_onnx(model: nn.Module, args: tuple[Any, ...], tmp: Path, call: _GraphCall) -> tuple[Path, Any]:
    """``model`` exported to ``tmp`` and pre-processed for onnxruntime's quantizers (shape inference
    and graph optimisation, as onnxruntime recommends; the raw export when that fails): its path and graph.

    Keyword inputs go through ``io.onnx_export.trace_onnx`` (named inputs, batch and sequence axes
    dynamic, every output tensor, the dynamo exporter where TorchScript's fails); ``call`` learns the
    graph's inputs and output fields from it."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, pre = tmp / "fp32.onnx", tmp / "pre.onnx"
    if call.keywords:
        from nncompress.io.onnx_export import trace_onnx

        traced = trace_onnx(model, dict(args[0]))
        fp32.write_bytes(traced.model_bytes)
        call.unused = [n for n in call.names if n not in traced.input_names]
        call.names, call.output_keys, call.fixed = traced.input_names, traced.output_keys, traced.fixed
    else:
        _export_fp32_onnx(model, args, fp32, call.names)
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - optional: quantizing the raw export also works
        pre = fp32
    return pre, onnx.load(str(pre)).graph


def onnxruntime_dynamic_int8(
    model: nn.Module,
    example: tuple[Any, ...],
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    exclude: tuple[str, ...] = (),
    threads: int = 0,
) -> tuple[nn.Module, str]:
    """Export to ONNX and ``quantize_dynamic`` its MatMul/Gemm nodes with constant weights (s8
    weights, u8 activations quantized per batch at run time); returns (module, summary).

    Only weight x activation products are quantized (``MatMulConstBOnly``), as torch.ao's dynamic
    Linear does; attention's activation x activation MatMuls and convolutions stay fp32. ONNX
    Runtime fuses each ``DynamicQuantizeLinear`` + ``MatMulInteger`` + rescale into one
    ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat`` kernel when it builds the session.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    call = _graph_call(example)
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp, "int8.onnx")
        pre, graph = _prepared_fp32_onnx(model, example, Path(tmp), call)
        weights = {i.name for i in graph.initializer}
        linear = [n for n in graph.node if n.op_type in ("Gemm", "MatMul") and n.input[1] in weights]
        skip = [n.name for n in graph.node if _excluded(_onnx_module_name(model, n.name, call.keywords) or "", exclude)]
        # the quantizer rewrites each Gemm as MatMul "<name>_MatMul" + Add before it reads the list
        excluded = skip + [f"{n.name}_MatMul" for n in graph.node if n.op_type == "Gemm" and n.name in skip]
        quantize_dynamic(
            str(pre),
            str(q),
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            extra_options={"MatMulConstBOnly": True},
        )
        module = call.runtime_module(q.read_bytes(), threads)
    n_q = sum(1 for n in linear if n.name not in skip)
    granularity = "per channel" if per_channel else "per tensor"
    return module, f"onnxruntime dynamic int8 ({granularity}), {n_q} of {len(linear)} weight MatMul/Gemm quantized"


# --- the steps --------------------------------------------------------------------------------


@register_step("int8-static", family="quantize", produces="int8-runtime")
@dataclass(frozen=True)
class StaticInt8Quantize(Exclusions, CalibrationSettings, Step):
    """Post-training static int8: calibrate on train batches, convert to real int8 kernels.

    Settings:
        calibration_batches: train batches used to observe activation ranges (>= 1).
        observer: ``"minmax"`` (range seen) or ``"histogram"`` (clipped range from a histogram:
            torch.ao ``HistogramObserver`` / onnxruntime entropy calibration).
        per_channel: one weight scale per output channel (else one per tensor).
        backend: ``"auto"`` (onnxruntime when installed, else torch), ``"onnxruntime"``, ``"torch"``.
        exclude: module names or regexes (full match) kept in fp32, with their children.
        threads: onnxruntime intra-op threads for batches above 8 (0: ``torch.get_num_threads()``);
            smaller batches use one.
        min_int8_in_channels: onnxruntime backend only: convolutions with fewer input channels
            per group (a first conv on grayscale or RGB input), and the activation/pool chain right
            after them, stay fp32. MLAS's int8 conv is slow there: lenet5's conv1 (1 channel in)
            took 2.8 ms int8 against 0.6 ms fp32 at batch 64. 1 quantizes every conv.

    Measured on fmnist-lenet5 / fmnist-resnet (2 shared cores, AVX-512 without VNNI): the
    onnxruntime backend ran batch 1 in 0.06 / 0.09 ms against torch.ao FX int8's 0.24+ ms.

    Example:
        >>> step = StaticInt8Quantize(calibration_batches=4, exclude=("fc3",))
        >>> step.kind, step.exclude, step.backend
        ('int8-static', ('fc3',), 'auto')
    """

    calibration_batches: int = default(8)
    observer: str = "minmax"
    per_channel: bool = True
    backend: str = "auto"
    threads: int = 0
    min_int8_in_channels: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("min_int8_in_channels", self.min_int8_in_channels)
        check_choice("observer", self.observer, OBSERVERS)
        check_choice("backend", self.backend, BACKENDS)
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"per_channel={self.per_channel!r} must be True or False")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads={self.threads!r} must be an integer >= 0 (0: torch's thread count)")

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        exclude = _check_exclude(model, self.exclude)
        calibration = calibration_inputs(ctx.task.train, self.calibration_batches, ctx.task.name)
        settings = {"observer": self.observer, "per_channel": self.per_channel, "exclude": exclude}
        note = f"calibrated on {len(calibration)} batch(es)"
        if self.backend in ("auto", "onnxruntime"):
            try:
                out, summary = onnxruntime_static_int8(
                    model, calibration, threads=self.threads, min_int8_in_channels=self.min_int8_in_channels, **settings
                )
            except ImportError as e:
                if self.backend == "onnxruntime":
                    raise RuntimeError(
                        "backend='onnxruntime' needs onnx and onnxruntime (pip install onnx onnxruntime)"
                    ) from e
                ctx.log.append(f"int8-static: onnxruntime not installed ({e}); using torch.ao")
            except Exception as e:  # noqa: BLE001 - export/quantize failures fall back to torch
                if self.backend == "onnxruntime":
                    raise
                ctx.log.append(f"int8-static: onnxruntime path failed ({type(e).__name__}: {e}); using torch.ao")
            else:
                ctx.log.append(f"int8-static: {summary}, {note}")
                return mark_reference_macs(out, model, ctx.task.single_example())
        try:
            out = torch_static_int8(model, calibration, **settings)
        except Exception as e:  # noqa: BLE001 - FX cannot trace data-dependent Python control flow
            ctx.log.append(
                f"int8-static: torch.ao FX tracing failed ({type(e).__name__}: {e}); "
                "fell back to dynamic int8 Linear layers"
            )
            out = torch_dynamic_int8(model, per_channel=self.per_channel, exclude=exclude)
            return mark_reference_macs(out, model, ctx.task.single_example())
        ctx.log.append(f"int8-static: torch.ao FX x86 int8 (conv-bn-relu fused), {note}")
        return mark_reference_macs(out, model, ctx.task.single_example())


@register_step("int8-dynamic", family="quantize", produces="int8-runtime")
@dataclass(frozen=True)
class DynamicInt8Quantize(Exclusions, Step):
    """Dynamic int8 for Linear, LSTM and GRU layers (weights int8, activations quantized per batch at run time).

    Needs no calibration data; helps Linear-heavy models (MLPs, transformers) and recurrent nets
    most. ``nn.LSTM`` / ``nn.GRU`` run torch.ao's int8 recurrent kernels (a model holding one takes
    the torch backend: ONNX Runtime's quantizer leaves GRUs float) and the artifact stores their
    gate matrices in int8. Other weight layers (convolutions, embeddings) are left float and named
    in the step's notes; a model with no layer to quantize is an error.

    Settings:
        per_channel: one weight scale per output channel (else one per tensor).
        backend: ``"onnxruntime"`` (export to ONNX, ``quantize_dynamic`` on weight MatMul/Gemm,
            run by :class:`~nncompress.quantize.runtime.OnnxRuntimeModule`) or ``"torch"``
            (torch.ao dynamic ``nn.Linear``). Models ONNX export cannot handle fall back to torch,
            with a log line saying why.
        reduce_range: onnxruntime backend only: 7-bit weights (for u8s8 kernels without VNNI that
            could saturate int16 sums); off because it cost accuracy and no speed here.
        exclude: module names or regexes (full match) kept in fp32, with their children.
        threads: onnxruntime intra-op threads for batches above 8 (0: ``torch.get_num_threads()``).

    Example:
        >>> DynamicInt8Quantize(exclude=("head",)).backend
        'onnxruntime'
    """

    per_channel: bool = True
    backend: str = "onnxruntime"
    reduce_range: bool = False
    threads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("backend", self.backend, DYNAMIC_BACKENDS)
        for name in ("per_channel", "reduce_range"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads={self.threads!r} must be an integer >= 0 (0: torch's thread count)")

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        exclude = _check_exclude(model, self.exclude)
        example = ctx.task.single_example()
        targets = dynamic_targets(model, exclude)
        left = [
            (n, type(m).__name__)
            for n, m in model.named_modules()
            if _has_weight_matrix(m) and not isinstance(m, DYNAMIC_KINDS) and not _excluded(n, exclude)
        ]
        if not targets:
            shown = ", ".join(f"{n} ({t})" for n, t in left[:6]) or "none"
            raise NothingToDo(
                f"int8-dynamic: no Linear, LSTM or GRU layer to quantize outside exclude; weight layers found: {shown} "
                "(int8-static quantizes convolutions)"
            )
        if left:
            shown = ", ".join(f"{n} ({t})" for n, t in left[:6]) + (", ..." if len(left) > 6 else "")
            ctx.log.append(f"int8-dynamic: {len(left)} weight layer(s) left float (not Linear/LSTM/GRU): {shown}")
        rnns = [f"{n} ({type(m).__name__})" for n, m in targets if type(m) in RNN_KINDS]
        backend = self.backend
        if backend == "onnxruntime" and rnns:
            ctx.log.append(f"int8-dynamic: {', '.join(rnns)}: int8 recurrent kernels in torch.ao only; using torch.ao")
            backend = "torch"
        if backend == "onnxruntime":
            try:
                out, summary = onnxruntime_dynamic_int8(
                    model,
                    as_args(example),
                    per_channel=self.per_channel,
                    reduce_range=self.reduce_range,
                    exclude=exclude,
                    threads=self.threads,
                )
            except Exception as e:  # noqa: BLE001 - export/quantize failures fall back to torch
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                ctx.log.append(f"int8-dynamic: onnxruntime path failed ({type(e).__name__}: {first}); using torch.ao")
            else:
                ctx.log.append(f"int8-dynamic: {summary}")
                return mark_reference_macs(out, model, example)
        out = torch_dynamic_int8(model, per_channel=self.per_channel, exclude=exclude)
        dynamic = "torch.ao.nn.quantized.dynamic"
        done = [type(m).__name__ for m in out.modules() if type(m).__module__.startswith(dynamic)]
        n_rnn, n_linear = sum(t in ("LSTM", "GRU") for t in done), sum(t == "Linear" for t in done)
        ctx.log.append(
            f"int8-dynamic: torch.ao, {n_linear} Linear and {n_rnn} LSTM/GRU layer(s) now "
            "dynamic int8" + (f": {', '.join(rnns)}" if rnns else "")
        )
        return mark_reference_macs(out, model, example)
