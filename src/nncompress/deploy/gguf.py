"""``--to gguf``: a Llama-architecture causal LM as a GGUF file that llama.cpp runs, our codes kept.

Our packed uniform codes in groups of 32·k along the input (``rtn``, ``gptq``, ``weight-quantize``;
per-channel scales count when the width is a multiple of 32) are written as the llama.cpp block whose
decoding equals ours, one block per 32 codes of a row, the codes unchanged:

- symmetric 2-4 bits (signed codes ``c`` in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, ``w = s c``): Q4_0,
  ``w = d (q - 8)`` with ``d = s`` and ``q = c + 8``;
- asymmetric 2-4 bits with integer zero points (``w = s (q - z)``): Q4_1, ``w = d q + m`` with
  ``d = s`` and ``m = -s z``;
- symmetric 5-8 bits, and asymmetric 5-7 bits with integer zero points: Q8_0, ``w = d q`` with
  ``d = s`` and ``q = c`` (``q - z``, inside int8's range, for asymmetric codes).

Blocks store ``d`` (and ``m``) as fp16, so they decode to exactly our weights when the scales are fp16
values (as ``rtn``/``gptq``/``weight-quantize`` store them) and, for Q4_1, so is ``s z``; otherwise
that rounding (at most 2^-11 relative) is the only change and a note names the layers. Other packed
codes (8-bit asymmetric, fractional zero points, codebooks, groups not a multiple of 32) have no GGUF
block equal to them: they are written as F16 of the decoded weight, named in a note. A packed LM head
tied to the embedding (``head_bits``'s ``PackedEmbedding``) is written once, as ``token_embd``
(llama.cpp's tied output). Float weights that Q8_0 holds exactly (SmolLM2's embedding, read from a
Q8_0 GGUF) are written as Q8_0, others as F16; norms stay F32.

llama.cpp needs the tokenizer and hyper-parameters as GGUF metadata, so the export copies them from a
template GGUF: the file the model was read from (``tasks/smollm2.py``'s packaged SmolLM2-135M by
default). Q and K projections are permuted back to llama.cpp's rotary row order
(the inverse of ``tasks.smollm2.unpermute``).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from nncompress.deploy.targets import Exported, Target, register_target
from nncompress.tasks.smollm2 import GGUF_BLOCK_NAMES, GGUF_TOP_NAMES

QK = 32  # llama.cpp's Q4_0 / Q4_1 / Q8_0 block size
# Hugging Face name inside a decoder layer -> GGUF name inside ``blk.N`` (tasks/smollm2.py reads the reverse)
BLOCK_NAMES = {hf: gguf for gguf, hf in GGUF_BLOCK_NAMES.items()}  # Hugging Face -> llama.cpp, per block
TOP_NAMES = {hf: gguf for gguf, hf in GGUF_TOP_NAMES.items()}


class Blocks(NamedTuple):
    """A packed layer as GGUF blocks: bytes ``(rows, row bytes)``, block type name, label, and what the
    blocks round (None: they decode to exactly our weights)."""

    data: np.ndarray
    kind: str
    label: str
    rounded: str | None = None


def gguf_name(hf_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight`` (ValueError for others)."""
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in BLOCK_NAMES:
        return f"blk.{parts[2]}.{BLOCK_NAMES[parts[3]]}"
    raise ValueError(f"tensor {hf_name!r} has no GGUF name; accepted: a Hugging Face Llama model's weights")


def permute(rows: np.ndarray | torch.Tensor, heads: int) -> Any:
    """llama.cpp's per-head rotary row order of a Q/K projection (inverse of ``tasks.smollm2.unpermute``);
    works on any per-row data (weights, or rows of packed blocks)."""
    n = rows.shape[0]
    if n % (2 * heads):
        raise ValueError(f"a Q/K projection with {n} rows cannot hold {heads} heads of even size")
    shaped = rows.reshape(heads, 2, n // heads // 2, *rows.shape[1:])
    swapped = shaped.swapaxes(1, 2) if isinstance(shaped, np.ndarray) else shaped.transpose(1, 2)
    return swapped.reshape(rows.shape)


def _fp16_bytes(t: torch.Tensor, rows: int, cols: int) -> np.ndarray:
    """One fp16 value per block as bytes ``(rows, blocks, 2)``."""
    return t.float().reshape(rows, cols // QK, 1).to(torch.float16).numpy().view(np.uint8)


def _nibbles(codes: torch.Tensor) -> np.ndarray:
    """Unsigned 4-bit ``codes`` (rows, in) as ``(rows, blocks, 16)`` bytes: byte j of a block holds
    weights j (low nibble) and j + 16 (high nibble)."""
    rows, cols = codes.shape
    q = codes.to(torch.uint8).reshape(rows, cols // QK, QK)
    return (q[..., :16] | (q[..., 16:] << 4)).numpy()


def q4_0_blocks(codes: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """Q4_0 bytes ``(rows, in / 32 * 18)`` of unsigned 4-bit ``codes`` (rows, in) with one scale per
    block of 32: ``w = d (q - 8)``, ``d = scale``."""
    rows, cols = codes.shape
    return np.concatenate([_fp16_bytes(scale, rows, cols), _nibbles(codes)], axis=-1).reshape(rows, -1)


def q4_1_blocks(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> np.ndarray:
    """Q4_1 bytes ``(rows, in / 32 * 20)`` of unsigned 4-bit ``codes`` (rows, in) with one scale and
    integer zero per block of 32: ``d = scale``, ``m = -scale * zero``."""
    rows, cols = codes.shape
    d, m = _fp16_bytes(scale, rows, cols), _fp16_bytes(-scale.float() * zero.float(), rows, cols)
    return np.concatenate([d, m, _nibbles(codes)], axis=-1).reshape(rows, -1)


def q8_0_blocks(codes: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """Q8_0 bytes ``(rows, in / 32 * 34)`` of signed 8-bit ``codes`` with one scale per block of 32."""
    rows, cols = codes.shape
    q = codes.to(torch.int8).reshape(rows, cols // QK, QK).numpy().view(np.uint8)
    return np.concatenate([_fp16_bytes(scale, rows, cols), q], axis=-1).reshape(rows, -1)


def exact_q8_0(weight: torch.Tensor) -> np.ndarray | None:
    """Q8_0 bytes of a float weight when Q8_0 holds it exactly (every block ``d q`` with fp16 ``d``), else None."""
    rows, cols = weight.shape
    if cols % QK:
        return None
    blocks = weight.float().reshape(rows, cols // QK, QK)
    d = (blocks.abs().amax(-1, keepdim=True) / 127).to(torch.float16).float()
    q = torch.where(d > 0, torch.round(blocks / d.clamp_min(1e-30)), torch.zeros_like(blocks)).clamp(-127, 127)
    if not torch.equal(q * d, blocks):
        return None
    return q8_0_blocks(q.reshape(rows, cols), d.reshape(rows, -1))


def _per_block(t: torch.Tensor, rows: int, cols: int, group: int) -> torch.Tensor:
    """Per-group qparams ``(rows, cols / group)`` repeated to one per block of 32."""
    return t.reshape(rows, cols // group).repeat_interleave(group // QK, dim=1)


def _not_fp16(t: torch.Tensor) -> bool:
    """True when some value of ``t`` changes when stored as fp16."""
    return not torch.equal(t.float().to(torch.float16).float(), t.float())


def packed_blocks(module: nn.Module) -> Blocks | None:
    """GGUF blocks holding a packed layer's codes unchanged, or None when no block type can."""
    spec = getattr(module, "spec", None)
    if getattr(module, "code_format", "") != "uniform" or spec is None or module.op != "linear":
        return None
    rows, cols = module.weight_shape
    group = cols if spec.granularity == "channel" else (spec.group_size if spec.granularity == "group" else None)
    zero = module.zero_points()
    if group is None or group % QK or cols % group or zero.is_floating_point():
        return None
    codes, scale = module.codes().cpu().to(torch.int32), module.scale.float().cpu()
    d, z = _per_block(scale, rows, cols, group), _per_block(zero.float(), rows, cols, group)
    bits = f"{spec.bits}-bit " if spec.bits not in (4, 8) else ""
    rounded = "d = s rounded to fp16 (the scales are not fp16 values)" if _not_fp16(scale) else None
    if spec.bits <= 4 and spec.symmetric:  # signed c -> unsigned c + 8
        return Blocks(q4_0_blocks(codes + 8, d), "Q4_0", f"Q4_0 (our {bits}codes)", rounded)
    if spec.bits <= 4:
        if rounded is None and _not_fp16(d * z):
            rounded = "m = -s z rounded to fp16 (s z is not an fp16 value)"
        return Blocks(q4_1_blocks(codes, d, z), "Q4_1", f"Q4_1 (our {bits}codes)", rounded)
    if spec.symmetric or spec.bits <= 7:  # asymmetric: q - z lies in [-127, 127] below 8 bits
        q = codes if spec.symmetric else codes - z.repeat_interleave(QK, dim=1).to(torch.int32)
        return Blocks(q8_0_blocks(q, d), "Q8_0", f"Q8_0 (our {bits}codes)", rounded)
    return None


def packed_weights(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], tuple[str, ...]]:
    """Every packed layer once, with the Hugging Face weight name it is written as, and the module
    prefixes whose state-dict entries it covers. A table shared by a ``PackedEmbedding`` and a tied
    LM head is the embedding (llama.cpp's tied ``token_embd``; no ``output.weight``)."""
    from nncompress.quantize.gptq import PackedEmbedding
    from nncompress.quantize.layers import PackedWeightLayer

    modules = dict(model.named_modules(remove_duplicate=False))
    names: dict[int, list[str]] = {}
    for name, module in modules.items():
        if isinstance(module, PackedWeightLayer):
            names.setdefault(id(module), []).append(name)
    out, prefixes = [], []
    for ids in names.values():
        tables = [n for n in ids if isinstance(modules.get(n.rpartition(".")[0]), PackedEmbedding)]
        written = [t.rpartition(".")[0] for t in tables] or ids
        out += [(f"{n}.weight", modules[ids[0]]) for n in written]
        prefixes += [f"{n}." for n in ids]
    return out, tuple(prefixes)


def _listed(names: list[str]) -> str:
    """Up to three names, then a count."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def model_tensors(model: nn.Module, heads: int, kv_heads: int) -> tuple[list[tuple[str, np.ndarray, Any]], dict, list]:
    """Every GGUF tensor of a Llama model: (name, data, type), the form of each, and notes."""
    from gguf import GGMLQuantizationType

    tensors, layers = [], {}
    fallback: list[str] = []
    rounded: dict[str, list[str]] = {}

    def add(hf: str, data: np.ndarray, kind: Any, label: str) -> None:
        name = gguf_name(hf)
        if name.endswith("attn_q.weight"):
            data = permute(data, heads)
        elif name.endswith("attn_k.weight"):
            data = permute(data, kv_heads)
        tensors.append((name, np.ascontiguousarray(data), kind))
        layers[hf.removesuffix(".weight")] = label

    packed, prefixes = packed_weights(model)
    for hf, module in packed:
        blocks = packed_blocks(module)
        if blocks is None:
            fallback.append(hf.removesuffix(".weight"))
            w = module.dequantized_weight().detach().float().cpu()
            add(hf, w.to(torch.float16).numpy(), GGMLQuantizationType.F16, "F16 (dequantized)")
            continue
        add(hf, blocks.data, GGMLQuantizationType[blocks.kind], blocks.label)
        if blocks.rounded:
            rounded.setdefault(f"{blocks.kind} with {blocks.rounded}", []).append(hf.removesuffix(".weight"))
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    for hf, p in model.state_dict().items():
        if hf.startswith(prefixes) or "rotary" in hf or (tied and hf == "lm_head.weight"):
            continue
        if hf.endswith(".bias"):
            raise ValueError(f"{hf}: llama GGUF has no bias tensors; accepted: bias-free Llama models")
        w = p.detach().float().cpu()
        if w.dim() == 1:
            add(hf, w.numpy(), GGMLQuantizationType.F32, "F32")
            continue
        q8 = exact_q8_0(w)
        if q8 is not None:
            add(hf, q8, GGMLQuantizationType.Q8_0, "Q8_0 (exact)")
        else:
            add(hf, w.to(torch.float16).numpy(), GGMLQuantizationType.F16, "F16")
    notes = [
        f"{_listed(names)}: written as {form}, each within 2^-11 (relative), the nearest GGUF form of their codes"
        for form, names in rounded.items()
    ]
    if fallback:
        notes.append(
            f"{_listed(fallback)}: no GGUF block type equals their codes; written as F16 of the decoded weights"
        )
    return tensors, layers, notes


def write_gguf(
    model: nn.Module, path: str | os.PathLike, template: str | os.PathLike, *, f32: bool = False
) -> tuple[dict, list]:
    """Write ``model`` (a Hugging Face Llama) to ``path`` with ``template``'s metadata (tokenizer, sizes).

    ``f32``: every float tensor as F32 (the input of llama.cpp's own quantizer), packed layers decoded.
    """
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(template)
    meta = {f.name: f.contents() for f in reader.fields.values() if f.name.startswith("llama.attention.head_count")}
    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    _check_shape(model, reader)
    if f32:
        tensors, layers, notes = _f32_tensors(model, heads, kv_heads)
    else:
        tensors, layers, notes = model_tensors(model, heads, kv_heads)
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    writer = GGUFWriter(partial, arch="llama")
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    for name, data, kind in tensors:
        if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, target)
    return layers, notes


def _f32_tensors(model: nn.Module, heads: int, kv_heads: int) -> tuple[list, dict, list]:
    from gguf import GGMLQuantizationType

    packed, prefixes = packed_weights(model)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    weights.update({hf: module.dequantized_weight() for hf, module in packed})
    tensors, layers = [], {}
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    for hf, w in weights.items():
        if "rotary" in hf or (tied and hf == "lm_head.weight"):
            continue
        data = w.detach().float().cpu().numpy()
        name = gguf_name(hf)
        if name.endswith("attn_q.weight"):
            data = permute(data, heads)
        elif name.endswith("attn_k.weight"):
            data = permute(data, kv_heads)
        tensors.append((name, np.ascontiguousarray(data), GGMLQuantizationType.F32))
        layers[hf.removesuffix(".weight")] = "F32"
    return tensors, layers, []


def _check_shape(model: nn.Module, reader: Any) -> None:
    """ValueError unless ``model`` is a Llama with the template's layer count and width."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama":
        raise ValueError(
            f"--to gguf takes a Hugging Face Llama causal LM, got {type(model).__name__}; accepted: "
            "LlamaForCausalLM (e.g. the smollm2-135m task's model) with a template GGUF for its tokenizer"
        )
    fields = {f.name: f.contents() for f in reader.fields.values() if f.name.startswith("llama.")}
    want = (fields.get("llama.block_count"), fields.get("llama.embedding_length"))
    got = (config.num_hidden_layers, config.hidden_size)
    if want != got:
        raise ValueError(
            f"the template GGUF describes {want} (layers, width), the model {got}; give the model's own GGUF"
        )


class LlamaCppModule(nn.Module):
    """Runs a GGUF in llama.cpp (``llama-cpp-python``): token ids ``(B, T)`` in, logits ``(B, T, V)`` out."""

    def __init__(self, path: str | os.PathLike, *, context: int = 2048, threads: int = 0) -> None:
        super().__init__()
        from llama_cpp import Llama

        self.path = str(path)
        self.llm = Llama(
            model_path=self.path,
            n_ctx=context,
            n_batch=context,
            logits_all=True,
            n_threads=threads or None,
            verbose=False,
        )

    def forward(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = []
        for row in input_ids.tolist():
            self.llm.reset()
            self.llm.eval(row)
            out.append(torch.from_numpy(np.array(self.llm.scores[: len(row)], dtype=np.float32)))
        return torch.stack(out)

    def decode_tokens_per_second(self, prompt: list[int], tokens: int = 64) -> float:
        """Greedy decode speed after a prompt: ``tokens`` new tokens, one at a time, timed."""
        self.llm.reset()
        self.llm.eval(prompt)
        t0 = time.perf_counter()
        for _ in range(tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            self.llm.eval([token])
        return tokens / (time.perf_counter() - t0)


def llama_quantize(source: str | os.PathLike, out: str | os.PathLike, kind: str) -> None:
    """llama.cpp's own quantizer (``llama_model_quantize``): ``kind`` is ``Q4_0``, ``Q8_0``, ``Q4_1``..."""
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if code != 0:
        raise RuntimeError(f"llama_model_quantize to {kind} failed with code {code}")


def perplexity(runner: nn.Module, batches: Any) -> float:
    """exp(mean next-token negative log-likelihood) of ``runner``'s logits over ``(input_ids, targets)`` batches."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for inputs, targets in batches:
            logits = runner(inputs)
            logits = getattr(logits, "logits", logits)
            nll = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), reduction="sum"
            )
            total, count = total + float(nll), count + targets.numel()
    return math.exp(total / count)


@register_target
class GgufTarget(Target):
    """GGUF for llama.cpp (Llama-architecture causal LMs); ``template``: the GGUF whose tokenizer and
    metadata to copy (default: SmolLM2-135M's packaged file)."""

    name: ClassVar[str] = "gguf"
    extra: ClassVar[str] = "gguf"
    modules: ClassVar[tuple[str, ...]] = ("gguf", "llama_cpp")
    suffix: ClassVar[str] = ".gguf"
    description: ClassVar[str] = (
        "llama.cpp: groups of 32k as blocks, codes kept: symmetric 4-bit Q4_0, integer-zero 4-bit Q4_1, 8-bit Q8_0"
    )

    def __init__(self, template: str | os.PathLike | None = None, *, f32: bool = False) -> None:
        self.template = template
        self.f32 = f32

    def export(
        self, model: nn.Module, path: str | os.PathLike, example_inputs: Any, *, max_batch: int = 1024
    ) -> Exported:
        template = self.template
        if template is None:
            from nncompress.tasks.smollm2 import gguf_path

            template = gguf_path()
        layers, notes = write_gguf(model, path, template, f32=self.f32)
        context = int(example_inputs.shape[-1]) if isinstance(example_inputs, torch.Tensor) else 2048
        runner = LlamaCppModule(path, context=max(context, 64))
        return Exported(str(path), os.path.getsize(path), runner, layers, notes)
