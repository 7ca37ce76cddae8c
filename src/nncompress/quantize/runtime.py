"""OnnxRuntimeModule: an ``nn.Module`` that runs an (int8) ONNX graph with ONNX Runtime.

The graph's large initializers (int8 weights, int32 biases, per-channel scales) are registered
buffers, so ``nncompress.save`` stores them in their own dtypes; the rest of the graph is a
zlib-compressed ``uint8`` buffer. The session is built lazily on the first call after creation,
loading or ``load_state_dict``. Needs ``onnx`` and ``onnxruntime`` at run time.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

SMALL_BATCH = 8  # batches up to this size run on a one-thread session: thread hand-offs cost more


class OnnxRuntimeModule(nn.Module):
    """Run an ONNX model held in buffers; takes and returns torch tensors (CPU).

    Args:
        model_bytes: a serialized ``onnx.ModelProto``.
        input_names: the graph inputs, in the order the module's positional arguments come.
        threads: intra-op threads for batches above ``SMALL_BATCH`` (0: ``torch.get_num_threads()``).
        min_buffer_bytes: initializers at least this large become buffers; smaller stay in the graph.

    Example:
        >>> m = OnnxRuntimeModule(proto.SerializeToString(), ["input_0"])  # doctest: +SKIP
        >>> logits = m(torch.randn(1, 1, 28, 28))  # doctest: +SKIP
    """

    def __init__(
        self, model_bytes: bytes, input_names: list[str], *, threads: int = 0, min_buffer_bytes: int = 256
    ) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        proto = onnx.ModelProto()
        proto.ParseFromString(model_bytes)
        kept, self.initializer_names = [], []
        for init in proto.graph.initializer:
            array = numpy_helper.to_array(init)
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
        self.threads = threads
        self._sessions: dict[bool, Any] = {}

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
        """(elements, non-zeros) of the graph's weights and biases: its int8 and int32 initializers
        (scales and zero points are quantization metadata, not parameters)."""
        if getattr(self, "_weight_counts", None) is None:
            from onnx import numpy_helper

            arrays = [numpy_helper.to_array(i) for i in self.model_proto().graph.initializer]
            kept = [a for a in arrays if a.dtype in (np.int8, np.int32)]
            self._weight_counts = (sum(a.size for a in kept), sum(int(np.count_nonzero(a)) for a in kept))
        return self._weight_counts

    def model_proto(self) -> Any:
        """The full ``onnx.ModelProto`` (graph plus every initializer)."""
        import onnx
        from onnx import numpy_helper

        proto = onnx.ModelProto()
        proto.ParseFromString(zlib.decompress(self.graph.numpy().tobytes()))
        for i, name in enumerate(self.initializer_names):
            array = getattr(self, f"init_{i}").detach().cpu().numpy()
            proto.graph.initializer.append(numpy_helper.from_array(array, name))
        return proto

    def _session(self, small: bool) -> Any:
        session = self._sessions.get(small)
        if session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1 if small else (self.threads or torch.get_num_threads())
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-wait beside torch
            session = ort.InferenceSession(
                self.model_proto().SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            self._sessions[small] = session
        return session

    def forward(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"this model takes {len(self.input_names)} input(s), got {len(inputs)}")
        feeds = {name: x.detach().cpu().contiguous().numpy() for name, x in zip(self.input_names, inputs)}
        small = inputs[0].shape[0] <= SMALL_BATCH if inputs[0].dim() else True
        outputs = [torch.from_numpy(o) for o in self._session(small).run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
