"""A compressed Hugging Face model written back as ``save_pretrained`` files that transformers loads alone.

``save_pretrained(model, folder)`` writes ``config.json`` and ``model.safetensors`` (through the
model's own ``save_pretrained``), so ``AutoModel*.from_pretrained(folder)`` runs it without
nncompress. Which compressed forms the format can hold:

- float weights, unstructured and N:M pruning (zeros stored in dense tensors: the file is not
  smaller), fp16 weights: written as they are;
- head pruning: written with the config's updated head counts (``head-prune`` updates them), and
  any structural cut whose shapes the config describes; a cut it does not describe (channel
  pruning that leaves layers of different widths) is refused, naming the first tensor;
- packed low-bit layers (rtn, gptq, awq, hqq, weight-quantize, k-means, binary): written as their
  decoded float weights, named in the returned notes (the format has no place for our codes: the
  ``.ncz`` artifact is the small file);
- factorized layers (svd, tucker), convolutions left unfolded, int8 graphs on ONNX Runtime and
  input-scaled Linears: refused, naming the layer (the architecture has no place for them).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn


def _decoded(module: nn.Module) -> nn.Module | None:
    """A plain float layer holding a packed layer's decoded weight (None for modules that are not packed)."""
    if not (callable(getattr(module, "dequantized_weight", None)) and callable(getattr(module, "describe", None))):
        return None
    weight = module.dequantized_weight().detach().float()
    bias = getattr(module, "bias", None)
    if weight.dim() != 2:
        return None  # convs: a Hugging Face decoder has none; refused below by name
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias.detach().float())
    return out


def _foreign(model: nn.Module) -> list[str]:
    """Modules of nncompress's own classes left in the model (the architecture cannot hold them)."""
    return [
        f"{name} ({type(m).__name__})"
        for name, m in model.named_modules()
        if name and type(m).__module__.startswith("nncompress.")
    ]


def save_pretrained(model: nn.Module, folder: str | os.PathLike) -> list[str]:
    """Write ``model`` (a compressed ``transformers.PreTrainedModel``) as ``save_pretrained`` files; returns notes.

    Raises ValueError, before writing anything, when a layer or a shape has no place in the
    model's architecture and config (see the module docstring for which forms can be written).

    Example:
        >>> notes = save_pretrained(result.model, "out/hf")  # doctest: +SKIP
        >>> LlamaForCausalLM.from_pretrained("out/hf")  # doctest: +SKIP
    """
    if not (callable(getattr(model, "save_pretrained", None)) and hasattr(model, "config")):
        raise ValueError(f"save_pretrained needs a transformers PreTrainedModel, got {type(model).__name__}")
    work = copy.deepcopy(model).eval()
    notes = []
    for name, module in list(work.named_modules()):
        plain = _decoded(module) if name else None
        if plain is not None:
            parent, _, child = name.rpartition(".")
            setattr(work.get_submodule(parent) if parent else work, child, plain)
            notes.append(f"{name}: {module.describe()['format']} weights written decoded to float32")
    left = _foreign(work)
    if left:
        raise ValueError(
            f"save_pretrained: {left[0]}"
            + (f" and {len(left) - 1} more" if len(left) > 1 else "")
            + " cannot be written as a Hugging Face checkpoint (its architecture has no such layer); "
            "accepted: float, pruned, fp16 and packed low-bit layers; keep the .ncz artifact for the rest"
        )
    with torch.device("meta"):
        fresh = type(work)(work.config)
    expected = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    for key, value in work.state_dict().items():
        if key in expected and expected[key] != tuple(value.shape):
            raise ValueError(
                f"save_pretrained: {key} is {tuple(value.shape)} but the config describes {expected[key]}: "
                "a structural cut the config cannot state (e.g. layers of different widths); keep the .ncz artifact"
            )
    Path(folder).mkdir(parents=True, exist_ok=True)
    work.save_pretrained(folder, safe_serialization=True)
    return notes
