"""OnnxRuntimeModule: an ``nn.Module`` that runs an (int8) ONNX graph with ONNX Runtime.

The graph's large initializers (int8 weights, int32 biases, per-channel scales) are registered
buffers, so ``nncompress.save`` stores them in their own dtypes; the rest of the graph is a
zlib-compressed ``uint8`` buffer. The session is built lazily on the first call after creation,
loading or ``load_state_dict``. Needs ``onnx`` and ``onnxruntime`` at run time.

Threads: batches up to ``SMALL_BATCH`` run on a one-thread session (hand-offs cost more than
they save there); larger batches on a session with ``threads`` intra-op threads that spin while
waiting for work. Measured on fmnist-lenet5 int8 at batch 64 (2 cores, four interleaved runs):
1.34-1.43 ms with spinning, 1.95-2.38 ms without, 1.26-2.85 ms splitting the batch across two
single-thread sessions; torch.ao int8 1.39-1.51 ms, fp32 1.69-2.22 ms.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

SMALL_BATCH = 8  # batches up to this size run on a one-thread session: thread hand-offs cost more


def derived_bias_scales(graph: Any, arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, str]]:
    """Bias scales of a QDQ graph that equal input scale x weight scale bit for bit.

    onnxruntime's quantizer stores each int32 bias with such a scale; saving both factors and
    recomputing the product on load drops one float per output channel from the artifact.
    Returns ``{bias scale: (input scale, weight scale)}`` for the exact matches only.
    """
    producer = {out: node for node in graph.node for out in node.output}
    scale_of = {}  # tensor -> the scale initializer of the DequantizeLinear that made it
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) > 1 and node.input[1] in arrays:
            scale_of[node.output[0]] = node.input[1]
    derived = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "ConvTranspose") or len(node.input) < 3:
            continue
        bias_dq = producer.get(node.input[2])
        if bias_dq is None or bias_dq.op_type != "DequantizeLinear" or len(bias_dq.input) < 2:
            continue
        bias_scale, input_scale, weight_scale = (
            bias_dq.input[1],
            scale_of.get(node.input[0]),
            scale_of.get(node.input[1]),
        )
        if bias_scale not in arrays or input_scale is None or weight_scale is None:
            continue
        product = arrays[input_scale] * arrays[weight_scale]
        target = arrays[bias_scale]
        if product.dtype == target.dtype and product.shape == target.shape and np.array_equal(product, target):
            derived[bias_scale] = (input_scale, weight_scale)
    return derived


class NamedOutputs(dict):
    """Outputs of a graph traced from a model that returned a dict / ``ModelOutput``: a dict of the
    same fields, also read as attributes (``out.logits``) and by position (``out[0]``), as
    ``ModelOutput`` is; built at call time, never stored, so artifacts name no foreign class."""

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the outputs have no field {name!r}; fields: {list(self)}") from None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return tuple(self.values())[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        """The fields' tensors in order, as ``ModelOutput.to_tuple``."""
        return tuple(self.values())


def _numpy(x: torch.Tensor) -> Any:
    """``x`` as a NumPy array, sharing memory where it can (a plain CPU tensor: no copy, no detach)."""
    if x.requires_grad or not x.is_cpu or not x.is_contiguous():
        x = x.detach().cpu().contiguous()
    return x.numpy()


class OnnxRuntimeModule(nn.Module):
    """Run an ONNX model held in buffers; takes and returns torch tensors (CPU).

    Args:
        model_bytes: a serialized ``onnx.ModelProto``.
        input_names: the graph inputs, in the order the module's positional arguments come; a
            graph traced from keyword inputs is also called by keyword (``model(**batch)``).
        output_keys: the field of each graph output when the traced model returned a dict /
            ``ModelOutput``: calls then return a :class:`NamedOutputs` of them (else a tensor or tuple).
        keyword_names: keyword inputs the traced model took and the graph dropped as unused:
            accepted and ignored in calls.
        fixed: non-tensor keyword settings the graph was traced with (``use_cache=False``): a call
            may repeat them; a different value is refused.
        threads: intra-op threads for batches above ``SMALL_BATCH`` (0: ``torch.get_num_threads()``
            at call time).
        min_buffer_bytes: initializers at least this large become buffers; smaller ones stay in the
            zlib-compressed graph (one safetensors entry costs ~70 bytes of header).

    Example:
        >>> m = OnnxRuntimeModule(proto.SerializeToString(), ["input_0"])  # doctest: +SKIP
        >>> logits = m(torch.randn(1, 1, 28, 28))  # doctest: +SKIP
    """

    def __init__(
        self,
        model_bytes: bytes,
        input_names: list[str],
        *,
        threads: int = 0,
        min_buffer_bytes: int = 1024,
        output_keys: list[str] | None = None,
        keyword_names: list[str] | None = None,
        fixed: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        proto = onnx.ModelProto()
        proto.ParseFromString(model_bytes)
        arrays = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
        self.derived_scales = derived_bias_scales(proto.graph, arrays)
        kept, self.initializer_names = [], []
        for init in proto.graph.initializer:
            array = arrays[init.name]
            if init.name in self.derived_scales:
                continue
            if array.nbytes >= min_buffer_bytes and array.dtype.kind in "iuf":
                self.register_buffer(f"init_{len(self.initializer_names)}", torch.from_numpy(array.copy()))
                self.initializer_names.append(init.name)
            else:
                kept.append(init)
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept)
        graph = np.frombuffer(zlib.compress(proto.SerializeToString(), 9), dtype=np.uint8)
        self.register_buffer("graph", torch.from_numpy(graph.copy()))
        self.input_names = list(input_names)
        self.output_keys = list(output_keys) if output_keys is not None else None
        self.keyword_names = list(keyword_names or ())
        self.fixed = {k: v for k, v in (fixed or {}).items() if isinstance(v, (bool, int, float, str, type(None)))}
        self.threads = threads
        self._sessions: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sessions"] = {}  # sessions are rebuilt from the buffers, never pickled
        state["_weight_counts"] = None
        return state

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._sessions = {}
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> OnnxRuntimeModule:
        self._sessions = {}
        return super()._apply(fn, recurse)

    def stored_weight_counts(self) -> tuple[int, int]:
        """(elements, non-zeros) of the graph's parameters: its float and int8/int32 initializers
        less scales and zero points (quantization metadata), in QDQ and dynamic graphs alike."""
        if getattr(self, "_weight_counts", None) is None:
            from nncompress.quantize.onnx_layers import onnx_parameter_counts

            self._weight_counts = onnx_parameter_counts(self.model_proto())
        return self._weight_counts

    def model_proto(self) -> Any:
        """The full ``onnx.ModelProto`` (graph plus every initializer)."""
        import onnx
        from onnx import numpy_helper

        proto = onnx.ModelProto()
        proto.ParseFromString(zlib.decompress(self.graph.numpy().tobytes()))
        arrays = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        for i, name in enumerate(self.initializer_names):
            arrays[name] = getattr(self, f"init_{i}").detach().cpu().numpy()
            proto.graph.initializer.append(numpy_helper.from_array(arrays[name], name))
        for name, (input_scale, weight_scale) in getattr(self, "derived_scales", {}).items():
            value = arrays[input_scale] * arrays[weight_scale]
            proto.graph.initializer.append(numpy_helper.from_array(value, name))
        return proto

    def _session(self, threads: int) -> tuple[Any, list[str]]:
        """The session with ``threads`` intra-op threads (built on first need) and its output names;
        more than one thread spins while waiting for work, which small operators need to gain from threads."""
        entry = self._sessions.get(threads)
        if entry is None:
            from nncompress.io.ort_session import ort_session

            session = ort_session(self.model_proto().SerializeToString(), threads=threads, spinning=threads > 1)
            entry = self._sessions[threads] = (session, [o.name for o in session.get_outputs()])
        return entry

    def _keyword_feeds(self, named: dict[str, Any]) -> list[torch.Tensor]:
        """The graph inputs among keyword arguments, in order; ValueError for a missing or unknown one."""
        missing = [n for n in self.input_names if n not in named]
        known = {*self.input_names, *getattr(self, "keyword_names", ())}
        fixed = getattr(self, "fixed", {}) or {}
        unknown = [
            k
            for k, v in named.items()
            if k not in known
            and v is not None
            and not (k in fixed and not isinstance(v, torch.Tensor) and v == fixed[k])
        ]
        if missing or unknown:
            raise ValueError(
                f"this int8 graph takes keyword inputs {self.input_names} (settings {fixed or 'none'}); "
                f"missing {missing}, unexpected {unknown}"
            )
        return [named[n] for n in self.input_names]

    def forward(self, *inputs: torch.Tensor, **named: Any) -> Any:
        # the hot path at batch 1, where each microsecond shows: ~21 -> ~18 us a call for the MLP
        if named:
            if inputs:
                raise ValueError("give this model's inputs all by position or all by keyword, not both")
            inputs = tuple(self._keyword_feeds(named))
        if len(inputs) != len(self.input_names):
            raise ValueError(f"this model takes {len(self.input_names)} input(s), got {len(inputs)}")
        first = inputs[0]
        batch = first.shape[0] if first.dim() else 1
        threads = 1 if batch <= SMALL_BATCH else max(1, self.threads or torch.get_num_threads())
        session, output_names = self._sessions.get(threads) or self._session(threads)
        if len(inputs) == 1:
            feeds = {self.input_names[0]: _numpy(first)}
        else:
            feeds = {name: _numpy(x) for name, x in zip(self.input_names, inputs)}
        arrays = session.run(output_names, feeds)  # names given: ORT's run would rebuild them each call
        keys = getattr(self, "output_keys", None)  # artifacts saved before keyword graphs lack it
        if keys is not None and len(keys) == len(arrays):
            return NamedOutputs(zip(keys, (torch.from_numpy(a) for a in arrays)))
        if len(arrays) == 1:
            return torch.from_numpy(arrays[0])
        return tuple(torch.from_numpy(a) for a in arrays)

    def layer_rows(self) -> list[dict[str, Any]]:
        """Per-layer rows (name, type, shape, params, non-zeros, sparsity, format, bits) of the graph's
        weighted nodes, for the per-layer table of reports (read by ``measure.size.layer_stats``)."""
        from nncompress.quantize.onnx_layers import onnx_layer_rows

        return onnx_layer_rows(self.model_proto())
