"""The one way nncompress opens an ONNX Runtime CPU session (runtime modules, export checks, timing).

ONNX Runtime's ``QDQPropagationTransformer`` moves a QuantizeLinear up across MaxPool (and other
order-preserving ops), so the quantize runs on the pool's input, four times the elements, and the
pool in uint8 outside the NCHWc layout. On LeNet-5's int8 graph at batch 64 (1 thread) that took
2.08 ms against 1.38 ms with the transformer off; ResNet's int8 graph ran no slower without it
(0.090 vs 0.099 ms at batch 1, 4.45 vs 4.46 ms at batch 64). So it is off in every session here.
"""

from __future__ import annotations

from typing import Any

DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


def ort_session(model_bytes: bytes, *, threads: int = 1, spinning: bool = False) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads; ``spinning=False`` keeps idle
    threads from busy-waiting (fair when timing beside PyTorch on the same cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(
        model_bytes, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS)
    )
