"""Decode speed of SmolLM2-135M at batch 1 with a KV cache: fp32 against packed weight-only forms
on nncompress.runtime's kernels, and peer tools on the same weights.

Each model greedily decodes ``NEW_TOKENS`` tokens after a ``PROMPT_TOKENS``-token prompt from the
test split (``cli.generate.greedy_generate``, under ``torch.inference_mode``); decode tokens/s
counts the steps after the prefill. All models are loaded at once and timed in interleaved
rounds (fp32, then each form, round after round), so every ratio to fp32 compares runs taken
moments apart; a row's ratio is the median over rounds of (its tokens/s / fp32's in that round).

Our forms are made through the public API (``nc.compress`` with ``RTNQuantize``, and one
``GPTQQuantize`` 4-bit form with an 8-bit head, the issue's practical form: GPTQ leaves the same
packed layout, so the same kernels, and its row shows it), saved with ``nc.save``, loaded with
``nc.load`` and timed from the loaded file. With ``--reuse`` the GPTQ form may come from
``benchmarks/llm.py``'s artifact of the same recipe (``SHARED_ARTIFACTS``; GPTQ takes minutes).
``kernels`` in a row counts the layers per kernel (``nncompress.runtime.kernel_choice``);
``metric_reference_path`` is the same perplexity with the kernels switched off (the dequantized
float32 path), showing what the kernels change.

Perplexity (lower is better) is on the first ``EVAL_CHUNKS`` test chunks of 512 tokens only (the
full test split is ``benchmarks/llm.py``'s job; ``nc.compress`` here checks on one 128-token
piece, to keep the run short); ``latency_ms`` is milliseconds per decoded token. The fp32 row's
size is its ``torch.save`` state dict.

Peers: torchao 0.18 (on CPU, ``Int8WeightOnlyConfig`` and ``IntxWeightOnlyConfig`` int4; its
int4 packing formats need CUDA or the mslk package) and optimum-quanto 0.2.7 (qint8 / qint4
weights, frozen; run under ``torch.no_grad``, as its int4 path fails under inference mode). Peers
slower than fp32 decode ``PEER_TOKENS`` tokens (tokens/s barely depends on it at this length).
llama.cpp (llama-cpp-python, ``nncompress.deploy.gguf`` as ``benchmarks/edge.py`` uses it): the same
fp32 weights written as an F32 GGUF and quantized by llama.cpp's own ``llama_model_quantize`` to Q4_0
and Q8_0, decoded greedily at the same thread count, prompt and token counts, in the same rounds (its
ratio is to our torch fp32 of the round; its prefill computes every position's logits, ours the last).

Usage: ``python benchmarks/decode.py [--quick] [--only rtn-w4-g128,quanto-w4] [--threads N] [--reuse]
[--rounds N] [--out PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import RESULTS, contract_fields, write_results
from torch import nn

import nncompress as nc
import nncompress.runtime as rt
from nncompress.cli.generate import greedy_generate
from nncompress.io.artifact import read_manifest
from nncompress.measure.report import CONTRACT_FIELDS

FAMILY = "decode"
TASK = "smollm2-135m"
PROMPT_TOKENS = 128
NEW_TOKENS = 128
PEER_TOKENS = 32
ROUNDS = 3
EVAL_CHUNKS = 2  # of 512 tokens, from the first test batch
GROUP = 128  # 576 inputs: four groups of 128 and a ragged one of 64
TRUST = ("transformers", "kernels")
GPTQ = {"bits": 4, "group_size": GROUP, "act_order": True, "rest_bits": 16, "head_bits": 8, "calibration_batches": 4}
SHARED_ARTIFACTS = {"gptq-w4-g128-head8": "llm/smollm2-135m--gptq-w4.ncz"}  # benchmarks/llm.py's, same recipe
LLAMA_CPP = {"llama.cpp-f32": None, "llama.cpp-q4_0": "Q4_0", "llama.cpp-q8_0": "Q8_0"}  # its own quantizer's kinds
LLAMA_CPP_CONTEXT = 512  # the perplexity chunks' length (>= prompt + new tokens)


@dataclass
class Entry:
    """One model to time: ours (an artifact) or a peer's (``tool``; llama.cpp's ``model`` is a ``LlamaCppModule``)."""

    method: str
    model: nn.Module
    settings: dict[str, Any]
    tool: str | None = None
    artifact: Path | None = None
    size_bytes: int = 0
    new_tokens: int = NEW_TOKENS
    grad_context: Callable[[], contextlib.AbstractContextManager] = torch.inference_mode
    speeds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    prefill_ms: list[float] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"32 new tokens, 1 round (default {NEW_TOKENS}, {ROUNDS})")
    parser.add_argument("--only", default="", help="comma-separated method names (fp32 always runs)")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/decode.json)")
    parser.add_argument("--reuse", action="store_true", help="load existing artifacts instead of compressing again")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--rounds", type=int, default=0, help=f"timing rounds (default {ROUNDS}, 1 with --quick)")
    return parser.parse_args()


# --- our forms ---------------------------------------------------------------------------------------


def recipes() -> dict[str, list[nc.Step]]:
    """Packed forms through the public API; ``-head8`` / ``-head4`` also pack the tied LM head (groups
    of 128 unless per channel), the largest single matrix of the model (28M of 134.5M weights)."""
    forms = {
        "rtn-w4-g128": {"bits": 4, "group_size": GROUP},
        "rtn-w3-g128": {"bits": 3, "group_size": GROUP},
        "rtn-w8": {"bits": 8, "group_size": None, "symmetric": True},
        "rtn-w4-g128-head8": {"bits": 4, "group_size": GROUP, "head_bits": 8},
        "rtn-w3-g128-head8": {"bits": 3, "group_size": GROUP, "head_bits": 8},
        "rtn-w8-head8": {"bits": 8, "group_size": None, "symmetric": True, "head_bits": 8},
        "rtn-w4-g128-head4": {"bits": 4, "group_size": GROUP, "head_bits": 4},
    }
    out = {}
    for method, settings in forms.items():
        try:
            out[method] = [nc.RTNQuantize(**settings)]
        except (TypeError, ValueError) as why:  # head_bits is newer than some checkouts
            print(f"{method} skipped: {why}")
    out["gptq-w4-g128-head8"] = [nc.GPTQQuantize(**GPTQ)]
    return out


def _same_recipe(path: Path, recipe: list[nc.Step]) -> bool:
    """True when the artifact at ``path`` was made by ``recipe``: the same steps, every setting its
    manifest states equal to ours, and ours that it predates at their defaults."""
    written = read_manifest(path).get("metadata", {}).get("recipe") or []
    ours = json.loads(json.dumps([s.describe() for s in recipe]))
    if [w.get("kind") for w in written] != [o["kind"] for o in ours]:
        return False
    for step, old, new in zip(recipe, written, ours):
        defaults = json.loads(json.dumps(type(step)().settings()))
        stated = old.get("settings", {})
        if any(stated.get(key, defaults.get(key)) != value for key, value in new["settings"].items()):
            return False
    return True


def artifact_for(method: str, recipe: list[nc.Step], task: nc.Task, reuse: bool) -> tuple[Path, bool]:
    """(where the form's artifact is or goes, whether it is there to reuse): this benchmark's own, else
    (``--reuse``) another benchmark's artifact of the same recipe."""
    own = RESULTS / "artifacts" / FAMILY / f"{task.name}--{method}.ncz"
    if reuse and own.exists():
        return own, True
    shared = RESULTS / "artifacts" / SHARED_ARTIFACTS.get(method, "-")
    if reuse and shared.is_file() and _same_recipe(shared, recipe):
        return shared, True
    return own, False


def kernel_counts(model: nn.Module) -> dict[str, int]:
    """Layers per kernel (``reference`` for packed layers on the float32 path)."""
    counts: Counter[str] = Counter()
    for module in model.modules():
        if getattr(module, "code_format", "") and getattr(module, "op", "") == "linear":
            choice = rt.kernel_choice(module)
            counts[choice.name if choice else "reference"] += 1
    return dict(counts)


def our_entry(method: str, recipe: list[nc.Step], task: nc.Task, small: nc.Task, reuse: bool) -> Entry:
    """Compress (checks on one test piece), save, load back: the timed model is the loaded file."""
    artifact, found = artifact_for(method, recipe, task, reuse)
    settings: dict[str, Any] = {"recipe": [repr(s) for s in recipe]}
    if not found:
        t0 = time.perf_counter()
        result = nc.compress(task.baseline(), recipe, small, measure_config=nc.MeasureConfig(latency=False))
        settings["compress_seconds"] = round(time.perf_counter() - t0, 1)
        nc.save(result.model, artifact, metadata={"task": task.name, "method": method, "recipe": result.report.recipe})
        del result
    t0 = time.perf_counter()
    model = nc.load(artifact, trust=TRUST).eval()
    settings["load_seconds"] = round(time.perf_counter() - t0, 1)
    return Entry(method, model, settings, artifact=artifact, size_bytes=os.path.getsize(artifact))


# --- peers -------------------------------------------------------------------------------------------


def _saved_size(model: nn.Module) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.pt")
        torch.save(model.state_dict(), path)
        return os.path.getsize(path)


def torchao_entries(task: nc.Task) -> list[Entry]:
    """torchao's CPU weight-only configs (what 0.18 runs on a CPU)."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup
    except ImportError as why:
        print(f"torchao skipped: {why}")
        return []
    configs = {
        "torchao-int8wo": (Int8WeightOnlyConfig(), {"bits": 8, "granularity": "channel"}),
        "torchao-intx4wo-g64": (
            IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(64)),
            {"bits": 4, "group_size": 64, "note": "group 128 does not divide 576 inputs"},
        ),
    }
    out = []
    for method, (config, settings) in configs.items():
        model = task.baseline().eval()
        t0 = time.perf_counter()
        quantize_(model, config)
        settings = {**settings, "config": type(config).__name__, "compress_seconds": round(time.perf_counter() - t0, 1)}
        out.append(
            Entry(method, model, settings, tool="torchao", size_bytes=_saved_size(model), new_tokens=PEER_TOKENS)
        )
    return out


def quanto_entries(task: nc.Task) -> list[Entry]:
    """optimum-quanto qint8 / qint4 weights, frozen."""
    try:
        from optimum.quanto import freeze, qint4, qint8, quantize
    except ImportError as why:
        print(f"optimum-quanto skipped: {why}")
        return []
    out = []
    for method, weights, bits in (("quanto-w8", qint8, 8), ("quanto-w4", qint4, 4)):
        model = task.baseline().eval()
        t0 = time.perf_counter()
        quantize(model, weights=weights)
        freeze(model)
        settings = {"bits": bits, "weights": weights.name, "compress_seconds": round(time.perf_counter() - t0, 1)}
        out.append(
            Entry(
                method,
                model,
                settings,
                tool="optimum-quanto",
                size_bytes=_saved_size(model),
                new_tokens=PEER_TOKENS,
                grad_context=torch.no_grad,
            )
        )
    return out


def llama_cpp_entries(fp32: nn.Module, prompt: torch.Tensor, folder: Path, wanted: set[str]) -> list[Entry]:
    """llama.cpp on the same fp32 weights: an F32 GGUF and llama.cpp's own Q4_0 / Q8_0 of it."""
    try:
        import llama_cpp

        from nncompress.deploy.gguf import GgufTarget, LlamaCppModule, llama_quantize
    except ImportError as why:
        print(f"llama.cpp skipped: {why}")
        return []
    f32 = folder / "f32.gguf"
    GgufTarget(f32=True).export(fp32, f32, prompt).runner = None
    out = []
    for method, kind in LLAMA_CPP.items():
        if method not in wanted:
            continue
        path = f32 if kind is None else folder / f"{kind}.gguf"
        t0 = time.perf_counter()
        if kind is not None:
            llama_quantize(f32, path, kind)
        settings = {"quantization": kind or "F32", "tensor_types": gguf_tensor_types(path)}
        settings["compress_seconds"] = round(time.perf_counter() - t0, 1)
        threads = torch.get_num_threads()
        runner = LlamaCppModule(path, context=LLAMA_CPP_CONTEXT, threads=threads)
        llama_cpp.llama_set_n_threads(runner.llm.ctx, threads, threads)  # prompts too (its default: every core)
        tool = f"llama-cpp-python {llama_cpp.__version__}"
        out.append(Entry(method, runner, settings, tool=tool, size_bytes=os.path.getsize(path)))
    return out


def gguf_tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGUF type a file holds (``{"Q4_0": 181, "Q8_0": 1, "F32": 61}``)."""
    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(path).tensors))


def is_llama_cpp(entry: Entry) -> bool:
    return entry.method in LLAMA_CPP


# --- timing and rows --------------------------------------------------------------------------------


def llama_cpp_greedy(runner: Any, prompt: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """``greedy_generate``'s steps in llama.cpp: the prompt in one call, then one token per call."""
    import numpy as np

    llm = runner.llm
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt[0].tolist())
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return {"prefill_s": prefill, "decode_s": time.perf_counter() - t0, "decode_steps": new_tokens - 1}


def greedy(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """``cli.generate.greedy_generate``'s loop (KV cache, last position's logits only), without its
    inference mode: optimum-quanto's int4 weights fail under it."""
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
    return {"decode_s": time.perf_counter() - t0, "decode_steps": new_tokens - 1}


def decode(entry: Entry, prompt: torch.Tensor, new_tokens: int) -> dict[str, Any]:
    if is_llama_cpp(entry):
        return llama_cpp_greedy(entry.model, prompt, new_tokens)
    t0 = time.perf_counter()
    with entry.grad_context():
        if entry.tool == "optimum-quanto":
            stats = greedy(entry.model, prompt, new_tokens)
            stats["prefill_s"] = time.perf_counter() - t0 - stats["decode_s"]
        else:
            _, stats = greedy_generate(entry.model, prompt, new_tokens)
    return stats


def time_rounds(entries: list[Entry], prompt: torch.Tensor, rounds: int, new_tokens: int) -> None:
    """Interleaved rounds: every entry decodes once per round; ratios against fp32 of the same round."""
    for entry in entries:  # warm-up: kernels prepare their weights, caches fill
        t0 = time.perf_counter()
        decode(entry, prompt, 2)
        entry.settings["first_call_seconds"] = round(time.perf_counter() - t0, 2)
    for r in range(rounds):
        for entry in entries:
            stats = decode(entry, prompt, min(entry.new_tokens, new_tokens))
            entry.speeds.append(stats["decode_steps"] / stats["decode_s"])
            entry.prefill_ms.append(stats["prefill_s"] * 1e3)
        base = entries[0].speeds[-1]
        for entry in entries:
            entry.ratios.append(entry.speeds[-1] / base)
        print(f"round {r + 1}: " + ", ".join(f"{e.method} {e.speeds[-1]:.1f}" for e in entries), flush=True)


def own_perplexity(entry: Entry, small: nc.Task) -> float:
    """Perplexity on ``small``'s test chunks under the entry's own grad context (for peers that fail
    under ``nc.measure``'s inference mode)."""
    nll, count = 0.0, 0
    with entry.grad_context():
        for inputs, targets in small.test:
            logits = entry.model(input_ids=inputs).logits.float()
            nll += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
            count += targets.numel()
    return math.exp(nll / count)


def measured(entry: Entry, small: nc.Task) -> tuple[dict[str, Any], float | None]:
    """Contract fields on the eval chunks, and (ours only) the metric on the reference path."""
    config = nc.MeasureConfig(latency=False)
    if is_llama_cpp(entry):
        return llama_cpp_fields(entry, small), None
    try:
        fields = contract_fields(nc.measure(entry.model, small, config=config, size_bytes=entry.size_bytes))
    except RuntimeError as why:  # optimum-quanto int4 under inference mode
        print(f"{entry.method}: nc.measure failed ({str(why).splitlines()[0]}); perplexity measured directly")
        fields = {key: None for key in CONTRACT_FIELDS}
        fields["metric"] = {"name": "perplexity", "value": own_perplexity(entry, small), "higher_is_better": False}
        fields["params"] = sum(p.numel() for p in entry.model.parameters())
        fields["size_bytes"] = entry.size_bytes
    reference = None
    if entry.tool is None and entry.method != "fp32":
        with rt.use_kernels(False):
            reference = nc.measure(entry.model, small, config=config, size_bytes=0).metric["value"]
    return fields, reference


def llama_cpp_fields(entry: Entry, small: nc.Task) -> dict[str, Any]:
    """Perplexity from llama.cpp's logits on the same chunks, and the GGUF's size."""
    from nncompress.deploy.gguf import perplexity

    fields: dict[str, Any] = {key: None for key in CONTRACT_FIELDS}
    fields["metric"] = {"name": "perplexity", "value": perplexity(entry.model, small.test), "higher_is_better": False}
    fields["size_bytes"] = entry.size_bytes
    return fields


def fill(fields: dict[str, Any], entry: Entry) -> dict[str, Any]:
    """Contract fields plus the decode figures of one entry."""
    speed = statistics.median(entry.speeds)
    return {
        **fields,
        "latency_ms": round(1e3 / speed, 3),
        "decode_tokens_per_s": round(speed, 2),
        "decode_speedup_vs_fp32": round(statistics.median(entry.ratios), 3),
        "prefill_ms": round(statistics.median(entry.prefill_ms), 1),
    }


def rows_for(entries: list[Entry], small: nc.Task, settings: dict[str, Any]) -> list[dict[str, Any]]:
    base_fields, _ = measured(entries[0], small)
    baseline = fill(base_fields, entries[0])
    rows = []
    for entry in entries[1:]:
        fields, reference_metric = measured(entry, small)
        result = fill(fields, entry)
        if entry.artifact is not None:
            result["artifact"] = str(entry.artifact.relative_to(RESULTS.parent.parent))
        row = {
            "task": TASK,
            "method": entry.method,
            "settings": {**settings, **entry.settings, "kernels": kernel_counts(entry.model)},
            "baseline": baseline,
            "result": result,
        }
        if reference_metric is not None:
            row["settings"]["metric_reference_path"] = reference_metric
        if entry.tool:
            row["tool"] = entry.tool
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'method':<22}{'tool':<24}{'tok/s':>8}{'x fp32':>8}{'ppl':>9}{'ref ppl':>9}{'MB':>8}  kernels")
    if rows:
        b = rows[0]["baseline"]
        print(f"{'fp32':<22}{'':<24}{b['decode_tokens_per_s']:>8}{1.0:>8}{b['metric']['value']:>9.3f}{'':>9}", end="")
        print(f"{b['size_bytes'] / 1e6:>8.1f}")
    for r in rows:
        res, ref = r["result"], r["settings"].get("metric_reference_path")
        print(
            f"{r['method']:<22}{r.get('tool', 'nncompress'):<24}{res['decode_tokens_per_s']:>8}"
            f"{res['decode_speedup_vs_fp32']:>8}{res['metric']['value']:>9.3f}"
            f"{'' if ref is None else f'{ref:.3f}':>9}{res['size_bytes'] / 1e6:>8.1f}"
            f"  {r['settings'].get('tensor_types') or r['settings']['kernels']}"
        )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nncompress.tasks.smollm2 import availability

    reason = availability()
    if reason is not None:
        raise SystemExit(f"{TASK} decode benchmark skipped: {reason}")
    only = {m for m in args.only.split(",") if m}
    new_tokens, rounds = (32, 1) if args.quick else (NEW_TOKENS, ROUNDS)
    rounds = args.rounds or rounds
    task = nc.tasks.get(TASK)
    test = list(task.test)
    inputs, targets = test[0]
    small = dataclasses.replace(task, test=[(inputs[:EVAL_CHUNKS], targets[:EVAL_CHUNKS])], val=test[:1])
    piece = dataclasses.replace(task, test=[(inputs[:1, :PROMPT_TOKENS], targets[:1, :PROMPT_TOKENS])], val=test[:1])
    prompt = test[0][0][:1, :PROMPT_TOKENS]
    known = [*recipes(), "torchao-int8wo", "torchao-intx4wo-g64", "quanto-w8", "quanto-w4", *LLAMA_CPP]
    if only - set(known):
        raise SystemExit(f"--only {args.only}: accepted method names are {', '.join(known)}")
    wanted = only or set(known)
    with quiet(), tempfile.TemporaryDirectory() as folder:  # the GGUF files live while llama.cpp maps them
        fp32 = task.baseline().eval()
        entries = [Entry("fp32", fp32, {}, size_bytes=_saved_size(fp32))]
        for method, recipe in recipes().items():
            if method in wanted:
                entries.append(our_entry(method, recipe, task, piece, args.reuse))
                print(f"{method}: {entries[-1].settings}, kernels {kernel_counts(entries[-1].model)}", flush=True)
        if wanted & {"torchao-int8wo", "torchao-intx4wo-g64"}:
            entries += [e for e in torchao_entries(task) if e.method in wanted]
        if wanted & {"quanto-w8", "quanto-w4"}:
            entries += [e for e in quanto_entries(task) if e.method in wanted]
        if wanted & set(LLAMA_CPP):
            entries += llama_cpp_entries(fp32, prompt, Path(folder), wanted)
        time_rounds(entries, prompt, rounds, new_tokens)
        settings = {
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": new_tokens,
            "rounds": rounds,
            "batch_size": 1,
            "threads": torch.get_num_threads(),
            "cpu": rt.cpu_features().describe(),
            "eval_chunks": EVAL_CHUNKS,
            "latency_ms_is": "milliseconds per decoded token (median over rounds)",
        }
        rows = rows_for(entries, small, settings)
    path = write_results(FAMILY, rows, args.out)
    print_table(rows)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
