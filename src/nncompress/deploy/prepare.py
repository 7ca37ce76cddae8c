"""A model nncompress produced, as a plain torch module that ``torch.export`` traces for a runtime.

- an int8-static model (ONNX QDQ graph inside an ``OnnxRuntimeModule``) becomes a
  :class:`~nncompress.deploy.qdq_torch.QdqGraphModule`: PT2E quantize/dequantize with our scales;
- packed weight layers whose codes the target cannot hold become float layers with the decoded
  (dequantized) weight, each named in a note: the nearest faithful form;
- plain, pruned and factorized models pass as they are (their smaller dense graphs).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Embedding)
TORCH_QUANTIZED = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")


class DequantizedLayer(nn.Module):
    """A packed layer's geometry with its decoded fp32 weight: what a runtime without that format runs."""

    def __init__(self, packed: nn.Module) -> None:
        super().__init__()
        # geometry and ``_run`` of the original layer, held outside the module tree: as a submodule its
        # packed codes would be exported too, beside the decoded weight (a 4-bit MLP's .pte outgrew fp32)
        self.__dict__["packed_op"] = packed
        self.weight = nn.Parameter(packed.dequantized_weight().detach().float().clone(), requires_grad=False)
        bias = packed.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = self.packed_op
        if op.op == "linear":
            return nn.functional.linear(x, self.weight, self.bias)
        return op._run(x, self.weight, self.bias)  # noqa: SLF001 - the packed layer's own conv geometry


def packed_label(module: nn.Module) -> str:
    """``uint-affine 4-bit, group 32`` for a packed layer (from its ``describe``)."""
    info = module.describe()
    text = f"{info['format']} {info['bits']}-bit"
    if info.get("group_size"):
        text += f", group {info['group_size']}"
    elif info.get("granularity"):
        text += f", per {info['granularity']}"
    return text


def check_not_torch_quantized(model: nn.Module) -> None:
    """ValueError naming a torch.ao quantized module: no exporter reads those."""
    for name, module in model.named_modules():
        if type(module).__module__.startswith(TORCH_QUANTIZED):
            raise ValueError(
                f"module {name or '(root)'!r} is a torch.ao {type(module).__name__} (int8 with backend='torch'), which "
                "no export target reads; accepted: int8-static/int8-dynamic with the default onnxruntime backend, "
                "packed weight layers, plain layers"
            )


def dense_layers(model: nn.Module) -> dict[str, str]:
    """Weighted plain layers -> ``fp32`` (or ``fp32 dense (N% zeros)`` for unstructured-sparse ones)."""
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, WEIGHTED) and isinstance(getattr(module, "weight", None), torch.Tensor):
            w = module.weight.detach()
            zeros = 1.0 - int(w.count_nonzero()) / max(1, w.numel())
            layers[name] = "fp32" if zeros < 0.5 else f"fp32 dense ({zeros:.0%} zeros)"
    return layers


def torch_graph(
    model: nn.Module, target: str, *, fold_weights: bool = True
) -> tuple[nn.Module, dict[str, str], list[str]]:
    """``model`` as a module ``torch.export`` traces for ``target``; plus each layer's form and notes.

    Packed weight layers are decoded to fp32 (named in one note each: ``target`` has no such
    weight-only format); an int8-static QDQ graph replays as PT2E int8 with our scales, its int8
    weights as codes (``fold_weights``) or as fp32 values quantized in the graph (see ``QdqGraphModule``).
    """
    from nncompress.base.modules import replace_module
    from nncompress.deploy.qdq_torch import QdqGraphModule
    from nncompress.quantize.layers import PackedWeightLayer
    from nncompress.quantize.runtime import OnnxRuntimeModule

    check_not_torch_quantized(model)
    if isinstance(model, OnnxRuntimeModule):
        from nncompress.quantize.onnx_layers import onnx_layer_rows

        proto = model.model_proto()
        graph = QdqGraphModule(proto, fold_weights=fold_weights).eval()
        layers = {row["name"]: f"{row['format']} {row['type']}" for row in onnx_layer_rows(proto)}
        notes = [
            f"int8 QDQ graph replayed as PT2E quantize/dequantize with its own scales "
            f"({graph.int8_weights} int8 weights)"
        ]
        return graph, layers, notes
    work = copy.deepcopy(model).eval()
    layers = dense_layers(work)
    notes = []
    for name, module in list(work.named_modules()):
        if isinstance(module, OnnxRuntimeModule):
            raise ValueError(
                f"module {name!r} is an OnnxRuntimeModule inside a larger model; accepted: it as the whole model"
            )
        if isinstance(module, PackedWeightLayer):
            label = packed_label(module)
            work = replace_module(work, name, DequantizedLayer(module))
            layers[name] = "fp32 (dequantized)"
            notes.append(f"{name}: {target} has no {label} weight-only format; exported as its dequantized fp32 weight")
    return work, layers, notes
