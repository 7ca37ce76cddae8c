"""Export any model nncompress produces to an ONNX file that ONNX Runtime runs, and check it.

- Plain, structurally pruned (physically smaller) and low-rank factorized models (plain layers,
  factorized ones as ``nn.Sequential`` of smaller layers) become plain ONNX graphs.
- Unstructured-sparse models are written dense: ONNX Runtime has no sparse kernels for them; the
  result's ``notes`` say how many weights are zero.
- ``int8-static`` and ``int8-dynamic`` models (an :class:`~nncompress.quantize.runtime.OnnxRuntimeModule`
  holding a QDQ or dynamic-int8 graph, the default ``onnxruntime`` backend) are written as that graph.
- Packed weight layers (weight-only quantization: ``weight-quantize``, ``rtn``, ``gptq``, ``awq``,
  ``hqq``, ``w8a8``/``smoothquant``, ``kmeans-quantize``, ``binarize``, ``fp16``) keep their codes:
  2/4/8-bit Linears as ``com.microsoft::MatMulNBits``, other uniform codes and binary signs as
  ``DequantizeLinear`` of int8/uint8 initializers, codebooks as ``Gather``, fp16 as ``Cast``
  (``io/onnx_packed.py``).

The exporter is PyTorch's TorchScript one (``dynamo=False``, as ``int8-static`` uses): it is fast
(well under a second for the reference models, against seconds for ``torch.export``) and its
``autograd.Function.symbolic`` hook writes the packed layers' nodes directly. Where it fails, or
ONNX Runtime refuses its graph (Hugging Face decoders: ``aten::diff`` in their mask code), a
model without packed layers is exported again with the dynamo exporter (``torch.export``), and
``notes`` say so.

Inputs may be keyword arguments (a dict, as Hugging Face models take them): the graph's inputs
are named after the keys. Outputs may be a tensor, a tuple, a dict or a ``ModelOutput``: every
tensor in it becomes a graph output (caches and other non-tensors are left out); a model whose
``forward`` takes ``use_cache`` is exported with ``use_cache=False`` unless the inputs set it.

Example:
    >>> result = export_onnx(model, "model.onnx", torch.randn(8, 1, 28, 28))  # doctest: +SKIP
    >>> result.max_abs_error < 1e-4, result.layers["fc1"]  # doctest: +SKIP
    (True, 'MatMulNBits 4-bit, block 128')
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.io.atomic import atomic_write_bytes
from nncompress.io.ort_session import ort_session

DEFAULT_OPSET = 17  # DequantizeLinear per axis needs >= 13; int8-static graphs use 17
SUPPORTED = (
    "plain PyTorch layers (pruned and factorized models included), nncompress packed layers "
    "(QuantizedLinear/Conv2d, CodebookLinear/Conv2d, BinaryLinear/Conv2d, HalfLinear/Conv2d) and "
    "OnnxRuntimeModule (int8-static / int8-dynamic with backend='onnxruntime') as the whole model"
)
TORCH_QUANTIZED = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Embedding)


@dataclass
class OnnxExportResult:
    """What ``export_onnx`` wrote and how close ONNX Runtime's outputs are to PyTorch's.

    Attributes:
        path: the ONNX file.
        bytes: its size.
        opset: the default-domain opset (``com.microsoft`` 1 is added for MatMulNBits).
        max_abs_error: max |ONNX Runtime - PyTorch| over every output on the example inputs.
        max_abs_output: max |PyTorch output|, the scale that error is to be read against.
        layers: module name -> the form its weight took (``fp32``, ``MatMulNBits 4-bit, block 128``...).
        notes: what a reader should know (dense storage of sparse weights, fallbacks).
        input_names, output_names: the graph's inputs and outputs (axis 0 is ``batch``).
    """

    path: str
    bytes: int
    opset: int
    max_abs_error: float
    max_abs_output: float
    layers: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Inputs:
    """Example inputs split into graph inputs (tensors, named) and fixed keyword settings."""

    names: list[str]
    tensors: tuple[torch.Tensor, ...]
    keywords: bool  # the tensors are passed by name (a dict was given)
    fixed: dict[str, Any] = field(default_factory=dict)
    sequence: bool = False  # axis 1 of token inputs (integer ids, masks) is dynamic too

    def input_axes(self, name: str, tensor: torch.Tensor) -> dict[int, str]:
        """The dynamic axes of one input: the batch, and the sequence of 2-D+ token tensors when asked."""
        axes = {0: "batch"}
        if self.sequence and tensor.dim() >= 2 and not tensor.is_floating_point():
            axes[1] = "sequence"
        return axes

    def has_sequence(self) -> bool:
        """Whether any input's sequence axis is dynamic."""
        return any(1 in self.input_axes(n, t) for n, t in zip(self.names, self.tensors))


def _as_inputs(example_inputs: Any) -> _Inputs:
    """A tensor, a tuple of tensors, or a dict of keyword arguments -> named graph inputs."""
    if isinstance(example_inputs, dict):
        tensors = {k: v for k, v in example_inputs.items() if isinstance(v, torch.Tensor)}
        fixed = {k: v for k, v in example_inputs.items() if not isinstance(v, torch.Tensor)}
        if not tensors:
            raise ValueError("example_inputs is a dict with no tensor values; give at least one tensor input")
        inputs = tuple(tensors.values())
        result = _Inputs([str(k) for k in tensors], tuple(t.detach().cpu() for t in inputs), True, fixed)
    else:
        inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
            kinds = ", ".join(type(t).__name__ for t in inputs) or "nothing"
            raise ValueError(
                f"example_inputs must be a tensor, a tuple of tensors or a dict of keyword tensors, got {kinds}"
            )
        names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
        result = _Inputs(names, tuple(t.detach().cpu() for t in inputs), False)
    if any(t.dim() == 0 for t in result.tensors):
        raise ValueError("example_inputs need a batch axis (axis 0); got a 0-d tensor")
    return result


def output_keys(out: Any) -> list[str] | None:
    """The field behind each tensor of a dict / ``ModelOutput`` return, in :func:`_flat_tensors`'s
    order (``logits``, ``hidden_states.0`` ...); None for a tensor or a tuple."""
    if not isinstance(out, dict):
        return None
    keys = []
    for key, value in out.items():
        inner = _flat_tensors(value)
        if isinstance(value, torch.Tensor):
            keys.append(str(key))
        else:
            keys += [f"{key}.{i}" for i in range(len(inner))]
    return keys


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (tensor, tuple, dict, ``ModelOutput``), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):  # ModelOutput is an OrderedDict of its non-None fields
        return [t for v in out.values() for t in _flat_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flat_tensors(v)]
    return []  # caches and other objects have no place in a graph


class _Exported(nn.Module):
    """Calls the model as the example inputs say (positional or by keyword) and returns every
    output tensor as a flat tuple, so both exporters see a tensors-in, tensors-out function."""

    def __init__(self, model: nn.Module, inputs: _Inputs) -> None:
        super().__init__()
        self.model, self.names, self.keywords, self.fixed = model, inputs.names, inputs.keywords, inputs.fixed
        self.output_keys: list[str] | None = None  # the fields of the last call's dict / ModelOutput return

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.keywords:
            out = self.model(**self.fixed, **dict(zip(self.names, tensors, strict=True)))
        else:
            out = self.model(*tensors)
        self.output_keys = output_keys(out)
        flat = _flat_tensors(out)
        if not flat:
            raise ValueError(f"the model returned no tensor (got {type(out).__name__})")
        return tuple(flat)


def _no_cache(model: nn.Module, inputs: _Inputs) -> list[str]:
    """Export without a key/value cache when the model can make one and the inputs do not say."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return []
    if inputs.keywords and "use_cache" in params and "use_cache" not in inputs.fixed:
        inputs.fixed["use_cache"] = False
        return ["exported with use_cache=False: the graph returns outputs, not a key/value cache"]
    return []


def _check_supported(model: nn.Module) -> None:
    """ValueError naming the first module that cannot be exported (torch.ao quantized modules,
    an OnnxRuntimeModule inside a larger model)."""
    from nncompress.quantize.runtime import OnnxRuntimeModule

    for name, module in model.named_modules():
        kind = type(module)
        if isinstance(module, OnnxRuntimeModule) and module is not model:
            raise ValueError(f"module {name!r} is an OnnxRuntimeModule inside a larger model; accepted: {SUPPORTED}")
        if kind.__module__.startswith(TORCH_QUANTIZED):
            raise ValueError(
                f"module {name or '(root)'!r} is a torch.ao {kind.__name__} (int8-dynamic or int8-static with "
                f"backend='torch'), which ONNX export does not support; accepted: {SUPPORTED}"
            )


def _export_copy(model: nn.Module) -> tuple[nn.Module, dict[str, str], list[str]]:
    """A copy of ``model`` whose packed layers are ``ExportedLayer`` stand-ins; plus each weighted
    layer's form and notes (sparse weights written dense, dense fallbacks)."""
    from nncompress.base.modules import replace_module
    from nncompress.quantize.layers import PackedWeightLayer
    from nncompress.quantize.onnx_packed import ExportedLayer, plan_packed_layer

    work = copy.deepcopy(model).eval()
    layers: dict[str, str] = {}
    notes: list[str] = []
    sparse = []
    for name, module in list(work.named_modules()):
        if isinstance(module, PackedWeightLayer):
            plan = plan_packed_layer(module)
            layers[name] = plan.label
            work = replace_module(work, name, ExportedLayer(module, plan))
        elif isinstance(module, WEIGHTED):
            weight = module.weight.detach()
            zeros = 1.0 - int(weight.count_nonzero()) / max(1, weight.numel())
            layers[name] = "fp32" if zeros < 0.5 else f"fp32 dense ({zeros:.0%} zeros)"
            if zeros >= 0.5:
                sparse.append(name)
    if sparse:
        shown = ", ".join(sparse[:4]) + ("..." if len(sparse) > 4 else "")
        notes.append(
            f"{len(sparse)} layer(s) are unstructured-sparse ({shown}): written dense, as ONNX Runtime "
            "has no sparse kernels for them"
        )
    dense = [n for n, label in layers.items() if label.startswith("dense")]
    if dense:
        notes.append(f"{len(dense)} packed layer(s) written as dense fp32 (no ONNX Runtime kernel for their codes)")
    return work, layers, notes


def _torch_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = model(*inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise ValueError(f"the model must return a tensor or a tuple of tensors, got {type(out).__name__}")
    return [o.detach().float() for o in outs]


def _output_names(n_outputs: int) -> list[str]:
    return ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1: on failure the TorchScript exporter prints its whole IR graph from
    C++ (its ONNX log is switched on by mistake in torch 2.x), which Python's redirect cannot catch."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _torchscript_export(
    work: nn.Module, inputs: _Inputs, opset: int, reference: list[torch.Tensor], *, fold: bool, contrib: bool
) -> bytes:
    """Serialized ONNX from the TorchScript exporter, every input and output dynamic in axis 0 (and
    token inputs in axis 1 when ``inputs.sequence``: then every output axis but the last is symbolic)."""
    output_names = _output_names(len(reference))
    axes = {n: inputs.input_axes(n, t) for n, t in zip(inputs.names, inputs.tensors)}
    for name, out in zip(output_names, reference):
        last = out.dim() - 1 if inputs.has_sequence() else 1
        axes[name] = {0: "batch", **{i: f"{name}_{i}" for i in range(1, last)}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_stdout():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            work,
            inputs.tensors,
            buffer,
            input_names=inputs.names,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=fold,
            custom_opsets={"com.microsoft": 1} if contrib else None,
            dynamo=False,
        )
    return buffer.getvalue()


DYNAMO_MIN_OPSET = 18  # the dynamo exporter writes opset 18 and up


def _dynamo_export(work: nn.Module, inputs: _Inputs, opset: int, n_outputs: int) -> tuple[bytes, list[str]]:
    """Serialized ONNX from the dynamo exporter (``torch.export``), batch (and sequence) axes dynamic
    where they can be: each that cannot is fixed at the example's size, and the notes say so."""
    from torch.export import Dim

    notes = []
    kwargs: dict[str, Any] = {
        "input_names": inputs.names,
        "output_names": _output_names(n_outputs),
        "opset_version": max(opset, DYNAMO_MIN_OPSET),
        "dynamo": True,
        "verbose": False,
    }
    if opset < DYNAMO_MIN_OPSET:
        notes.append(f"opset {DYNAMO_MIN_OPSET} (the dynamo exporter's lowest) instead of {opset}")
    dims = {"batch": Dim("batch"), "sequence": Dim("sequence")}
    tries = [True, False] if inputs.has_sequence() else [False]
    program = None
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for sequence in tries:
            axes = [inputs.input_axes(n, t) if sequence else {0: "batch"} for n, t in zip(inputs.names, inputs.tensors)]
            shapes = (tuple({i: dims[d] for i, d in a.items()} for a in axes),)  # one entry: forward(*tensors)
            try:
                program = torch.onnx.export(work, inputs.tensors, dynamic_shapes=shapes, **kwargs)
                break
            except Exception:  # noqa: BLE001 - an axis could not stay symbolic: try fewer
                continue
        if program is None:  # fix every axis at the example's size
            program = torch.onnx.export(work, inputs.tensors, **kwargs)
            notes.append(f"batch axis fixed at {inputs.tensors[0].shape[0]} (torch.export could not keep it dynamic)")
        elif inputs.has_sequence() and not sequence:
            notes.append("sequence axis fixed at the example's length (torch.export could not keep it dynamic)")
    return program.model_proto.SerializeToString(), notes


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _ort_max_error(
    model_bytes: bytes, input_names: list[str], inputs: tuple[torch.Tensor, ...], reference: list[torch.Tensor]
) -> float:
    """Max |ONNX Runtime - PyTorch| over every output (ValueError when ONNX Runtime refuses the graph)."""
    try:
        session = ort_session(model_bytes)
        graph_inputs = {i.name for i in session.get_inputs()}
        feed = {n: t.contiguous().numpy() for n, t in zip(input_names, inputs) if n in graph_inputs}
        outs = session.run(None, feed)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValueError(f"ONNX Runtime could not run the exported graph: {str(e).splitlines()[0]}") from e
    if len(outs) != len(reference):
        raise ValueError(f"the ONNX graph has {len(outs)} outputs, the model {len(reference)}")
    errors = [float((torch.from_numpy(o).float() - r).abs().max()) for o, r in zip(outs, reference) if r.numel()]
    return max(errors, default=0.0)


def _runtime_module_proto(model: nn.Module) -> tuple[bytes, list[str], list[str], dict[str, str]]:
    """The QDQ graph of an OnnxRuntimeModule, its input/output names and per-layer formats."""
    from nncompress.quantize.onnx_layers import onnx_layer_rows

    proto = model.model_proto()
    layers = {}
    for row in onnx_layer_rows(proto):
        quantized = row["format"] in ("int8", "uint8")
        fmt = row["format"].replace("float32", "fp32")
        layers[row["name"]] = f"{fmt} {row['type']}, per {row['granularity']}" if quantized else fmt
    outputs = [o.name for o in proto.graph.output]
    return proto.SerializeToString(), list(model.input_names), outputs, layers


def _opset_of(model_bytes: bytes) -> int:
    import onnx

    proto = onnx.load_from_string(model_bytes)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


@dataclass
class _Traced:
    """A traced graph, its max error against PyTorch, the reference outputs, layer forms, notes and
    the output fields (dict / ``ModelOutput`` returns)."""

    data: bytes
    error: float
    reference: list[torch.Tensor]
    layers: dict[str, str]
    notes: list[str]
    output_keys: list[str] | None


def _export_traced(model: nn.Module, inputs: _Inputs, opset: int) -> _Traced:
    """Export with the TorchScript exporter, else (no packed layers) the dynamo one; check in ONNX Runtime."""
    notes = _no_cache(model, inputs)
    work, layers, copy_notes = _export_copy(model)
    notes += copy_notes
    wrapped = _Exported(work, inputs).eval()
    reference = _torch_outputs(wrapped, inputs.tensors)
    packed = any(not label.startswith("fp32") for label in layers.values())
    contrib = any(label.startswith("MatMulNBits") for label in layers.values())
    try:  # with packed layers, folding would turn their Cast/Gather back into fp32 initializers
        data = _torchscript_export(wrapped, inputs, opset, reference, fold=not packed, contrib=contrib)
        error = _ort_max_error(data, inputs.names, inputs.tensors, reference)
        return _Traced(data, error, reference, layers, notes, wrapped.output_keys)
    except Exception as e:  # the exporter raises many types; name the model and what is supported
        first = e
    name = type(model).__name__
    if packed:  # the dynamo exporter would not write the packed layers' own nodes
        raise ValueError(f"torch.onnx.export failed on {name}: {_first_line(first)}; accepted: {SUPPORTED}") from first
    try:
        data, dynamo_notes = _dynamo_export(wrapped, inputs, opset, len(reference))
        error = _ort_max_error(data, inputs.names, inputs.tensors, reference)
    except Exception as e:
        raise ValueError(
            f"torch.onnx.export failed on {name}: TorchScript exporter: {_first_line(first)}; dynamo exporter: "
            f"{_first_line(e.__cause__ or e)}; accepted: {SUPPORTED}"
        ) from e
    notes.append(f"written by the dynamo exporter (torch.export): the TorchScript one failed ({_first_line(first)})")
    return _Traced(data, error, reference, layers, notes + dynamo_notes, wrapped.output_keys)


@dataclass
class TracedGraph:
    """An fp32 ONNX graph traced from a model, checked in ONNX Runtime, and how to call it.

    Attributes:
        model_bytes: the serialized graph.
        input_names: its inputs, in the example's order (the exporter drops inputs the model ignores).
        output_keys: the field of each output when the model returns a dict / ``ModelOutput``, else None.
        fixed: non-tensor keyword settings baked into the graph (``use_cache=False``).
        max_abs_error: max |ONNX Runtime - PyTorch| on the example.
        notes: fallbacks and settings a reader should know.
    """

    model_bytes: bytes
    input_names: list[str]
    output_keys: list[str] | None
    fixed: dict[str, Any]
    max_abs_error: float
    notes: list[str] = field(default_factory=list)


def trace_onnx(model: nn.Module, example_inputs: Any, *, opset: int = DEFAULT_OPSET) -> TracedGraph:
    """``model`` as an fp32 ONNX graph (positional or keyword inputs, every output tensor), the batch
    axis dynamic and, for keyword inputs, the sequence axis of token inputs too: what ONNX Runtime's
    int8 quantizers start from.

    Example:
        >>> traced = trace_onnx(gpt2, {"input_ids": ids, "attention_mask": mask})  # doctest: +SKIP
        >>> traced.input_names, traced.output_keys  # doctest: +SKIP
        (['input_ids', 'attention_mask'], ['logits'])
    """
    import onnx

    inputs = _as_inputs(example_inputs)
    inputs.sequence = inputs.keywords
    _check_supported(model)
    was_training = model.training
    model.eval()
    try:
        traced = _export_traced(model, inputs, opset)
    finally:
        model.train(was_training)
    graph = onnx.load_from_string(traced.data).graph
    present = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    names = [n for n in inputs.names if n in present]
    return TracedGraph(traced.data, names, traced.output_keys, dict(inputs.fixed), traced.error, traced.notes)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: Any,
    *,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> OnnxExportResult:
    """Write ``model`` to ``path`` as ONNX (batch axis dynamic), run it in ONNX Runtime on
    ``example_inputs`` and report the largest difference from PyTorch's outputs.

    Args:
        model: any model nncompress produces (see the module docstring), in eval mode or not.
        path: the ``.onnx`` file; written atomically (a temporary file renamed into place).
        example_inputs: a tensor, a tuple of tensors, or a dict of keyword arguments (tensors, and
            fixed settings such as flags), each tensor with a batch axis 0, to trace and to check.
        opset: default-domain opset for traced graphs, 13 to 20 (an ``int8-static`` graph keeps its own).
        overwrite: replace an existing file (else FileExistsError).

    Raises:
        ValueError: unsupported modules (named, with what is accepted), bad inputs, an opset out
            of range, or a graph ONNX Runtime refuses.
        FileExistsError: ``path`` exists and ``overwrite`` is False.

    Example:
        >>> result = export_onnx(nn.Linear(4, 2), "tiny.onnx", torch.randn(3, 4))  # doctest: +SKIP
        >>> result.layers  # doctest: +SKIP
        {'': 'fp32'}
    """
    from nncompress.quantize.runtime import OnnxRuntimeModule

    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 20:
        raise ValueError(f"opset must be an integer in [13, 20] (DequantizeLinear per axis needs 13), got {opset!r}")
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if target.is_dir():
        raise ValueError(f"path {str(target)!r} is a folder; give a file name such as model.onnx")
    inputs = _as_inputs(example_inputs)
    _check_supported(model)
    was_training = model.training
    model.eval()
    try:
        if isinstance(model, OnnxRuntimeModule):
            with torch.inference_mode():
                out = model(**dict(zip(inputs.names, inputs.tensors))) if inputs.keywords else model(*inputs.tensors)
            reference = [t.detach().float() for t in _flat_tensors(out)]
            data, input_names, output_names, layers = _runtime_module_proto(model)
            notes = ["the model's own ONNX Runtime int8 graph written as it is"]
            fed = inputs.names if inputs.keywords else input_names  # a keyword graph's inputs go by name
            error = _ort_max_error(data, fed, inputs.tensors, reference)
        else:
            traced = _export_traced(model, inputs, opset)
            data, error, reference, layers, notes = (
                traced.data,
                traced.error,
                traced.reference,
                traced.layers,
                traced.notes,
            )
            input_names, output_names = inputs.names, _output_names(len(reference))
    finally:
        model.train(was_training)
    atomic_write_bytes(target, data)
    return OnnxExportResult(
        path=str(target),
        bytes=len(data),
        opset=_opset_of(data),
        max_abs_error=error,
        max_abs_output=max(float(r.abs().max()) if r.numel() else 0.0 for r in reference),
        layers=layers,
        notes=notes,
        input_names=input_names,
        output_names=output_names,
    )


def export_summary(result: OnnxExportResult) -> str:
    """A few lines for the CLI: file, size, error, the count of each layer form, the notes."""
    counts: dict[str, int] = {}
    for label in result.layers.values():
        counts[label] = counts.get(label, 0) + 1
    lines = [
        f"wrote {result.path} ({result.bytes} bytes, opset {result.opset})",
        f"max |ONNX Runtime - PyTorch| = {result.max_abs_error:.3g} (outputs up to {result.max_abs_output:.3g})",
        "layers: " + "; ".join(f"{n} x {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1])),
    ]
    return "\n".join(lines + [f"note: {n}" for n in result.notes])


OnnxExport = OnnxExportResult  # the name before 0.1.0's rename (a result record, not a step); kept for callers
