"""``nncompress generate ARTIFACT --prompt TEXT``: greedy text from a saved causal LM, with a KV cache,
and its decode speed (tokens/s).

The model must be a Hugging Face causal LM (it takes ``past_key_values`` / ``use_cache`` and
returns ``logits`` and ``past_key_values``), e.g. an artifact of the ``smollm2-135m`` task; such
artifacts load with ``--trust transformers``. The prompt is read once (prefill), then each new
token is one forward of that token against the cache (decode); both are timed apart, so tokens/s
is the decode rate alone.
"""

from __future__ import annotations

import argparse
import inspect
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.base.compat import prepare_import

TOKENIZERS = ("smollm2",)  # named tokenizers; anything else is a local Hugging Face tokenizer folder


@dataclass
class Generation:
    """What one greedy generation produced and how fast."""

    text: str
    new_tokens: int
    prompt_tokens: int
    prefill_ms: float
    decode_ms: float
    decode_tokens_per_s: float | None
    stopped_at_eos: bool


def _check_causal_lm(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "prepare_inputs_for_generation"):
        raise ValueError(
            f"generate needs a Hugging Face causal LM (one with a KV cache, e.g. a smollm2-135m artifact); "
            f"got a {type(model).__name__}"
        )


@torch.inference_mode()
def greedy_generate(
    model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Greedy decoding with the model's KV cache: ``(1, prompt + new)`` ids and timings.

    Example:
        >>> ids, stats = greedy_generate(model, tokenizer("Hi", return_tensors="pt").input_ids, 8)  # doctest: +SKIP
    """
    _check_causal_lm(model)
    model.eval()
    params = inspect.signature(model.forward).parameters
    key = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.2x renamed it
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # the last position's logits only
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True, **extra)
    prefill = time.perf_counter() - t0
    tokens = [int(out.logits[0, -1].argmax())]
    t0 = time.perf_counter()
    while len(tokens) < max_new_tokens and tokens[-1] != eos_token_id:
        cache = out.get(key)
        out = model(input_ids=torch.tensor([[tokens[-1]]]), use_cache=True, **{key: cache}, **extra)
        tokens.append(int(out.logits[0, -1].argmax()))
    decode = time.perf_counter() - t0
    ids = torch.cat([input_ids, torch.tensor([tokens])], dim=1)
    steps = len(tokens) - 1  # the first new token comes from the prefill
    return ids, {
        "prefill_s": prefill,
        "decode_s": decode,
        "decode_steps": steps,
        "stopped_at_eos": tokens[-1] == eos_token_id,
    }


def load_tokenizer(spec: str):  # -> transformers tokenizer (typed loosely: transformers is optional)
    """A named tokenizer (``smollm2``) or a local Hugging Face tokenizer folder (no hub access)."""
    if spec == "smollm2":
        from nncompress.tasks.smollm2 import load_tokenizer as smollm2_tokenizer

        return smollm2_tokenizer()
    if not Path(spec).is_dir():
        raise ValueError(f"--tokenizer {spec!r}: accepted are {', '.join(TOKENIZERS)} or a local tokenizer folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    prepare_import("transformers")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec, local_files_only=True)


def generate_text(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, chat: bool = False) -> Generation:
    """Greedy completion of ``prompt`` (with the tokenizer's chat template when ``chat``)."""
    if chat:
        messages = [{"role": "user", "content": prompt}]
        input_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        input_ids = input_ids if isinstance(input_ids, torch.Tensor) else input_ids["input_ids"]
    else:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    eos = getattr(tokenizer, "eos_token_id", None)
    ids, stats = greedy_generate(model, input_ids, max_new_tokens, eos_token_id=eos)
    steps = stats["decode_steps"]
    return Generation(
        text=tokenizer.decode(ids[0, input_ids.shape[1] :], skip_special_tokens=True),
        new_tokens=ids.shape[1] - input_ids.shape[1],
        prompt_tokens=input_ids.shape[1],
        prefill_ms=round(stats["prefill_s"] * 1e3, 2),
        decode_ms=round(stats["decode_s"] * 1e3, 2),
        decode_tokens_per_s=round(steps / stats["decode_s"], 2) if steps and stats["decode_s"] > 0 else None,
        stopped_at_eos=stats["stopped_at_eos"],
    )


def command(args: argparse.Namespace) -> Any:
    """The ``generate`` command: load the artifact, complete the prompt, report decode tokens/s."""
    from nncompress.io.artifact import load
    from nncompress.io.trust import normalize_trust

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    tokenizer = load_tokenizer(args.tokenizer)
    model = load(args.artifact, trust=normalize_trust(args.trust or ()))
    _check_causal_lm(model)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = generate_text(model, tokenizer, args.prompt, args.max_new_tokens, chat=args.chat)
    if args.json:
        return asdict(gen)
    speed = f"{gen.decode_tokens_per_s} tokens/s" if gen.decode_tokens_per_s is not None else "n/a (one token)"
    return (
        f"{args.prompt}{gen.text}\n---\n{gen.new_tokens} new tokens; prompt {gen.prompt_tokens} tokens, "
        f"prefill {gen.prefill_ms} ms; decode {speed} (KV cache, batch 1, {torch.get_num_threads()} threads)"
    )


def register(sub: Any) -> None:
    """Add the ``generate`` subcommand to the CLI's subparsers."""
    help_ = "Greedy text from a saved causal LM artifact (KV cache); prints decode tokens/s."
    p = sub.add_parser("generate", help=help_, description=help_)
    p.set_defaults(func=command)
    p.add_argument("artifact", help="a .ncz file of a Hugging Face causal LM (e.g. from the smollm2-135m task)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate at most (default 32)")
    p.add_argument("--tokenizer", default="smollm2", help="smollm2 (default) or a local tokenizer folder")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="MODULE",
        help="modules whose classes may load from the artifact (transformers for HF models)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
