"""Compressed models exported to on-device runtimes, checked and timed there, beside each runtime's own quantizer.

Usage: python benchmarks/edge.py [--quick] [--targets onnx,openvino,executorch] [--tasks fmnist-mlp]
       [--runs N] [--no-peers] [--gguf] [--merge] [--out PATH]

For fmnist-resnet (int8-static, channel-pruned) and fmnist-mlp (int8-static, 4-bit weight-only), every
installed target (``nncompress export --to``): the test metric in the runtime, max |export - ours|, file
size, and batch-1 / batch-64 latency interleaved with our model and with the runtime's own fp32 export of
the baseline. Peers on the same baseline, in their own runtime, timed interleaved with our export there:
NNCF ``nncf.quantize`` (int8 rows) and ``nncf.compress_weights`` INT4_ASYM / per-channel (4-bit row) on
OpenVINO; ExecuTorch's ``XNNPACKQuantizer`` (PT2E, per-channel int8) on ExecuTorch; litert-torch's
``PT2EQuantizer`` (PT2E static int8, per-channel) on LiteRT (the ``litert`` extra). ``--gguf`` adds the
SmolLM2-135M GGUF rows (``gguf_rows``: GPTQ and RTN symmetric 4-bit groups of 32 as Q4_0, the tied head
as Q8_0, and RTN with integer zeros as Q4_1, beside llama.cpp's own Q4_0/Q8_0 of the fp32 weights) when
llama-cpp-python is installed.

Writes benchmarks/results/edge.json: DESIGN.md's row contract (``task``, ``method``, ``settings``,
``baseline``, ``result``) plus ``target`` and ``export`` (the ``DeployResult``); peer rows carry ``tool``
and ``versus_ours`` (latency interleaved with our export in the same runtime, sizes, metrics).
Timings on a shared 2-core machine are preliminary: rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, contract_fields, write_results  # noqa: E402

import nncompress as nc  # noqa: E402
from nncompress.deploy import CheckConfig, deploy, get_target  # noqa: E402
from nncompress.measure.latency import interleaved_latency  # noqa: E402
from nncompress.measure.metric import evaluate  # noqa: E402
from nncompress.tasks.task import repeat_batch  # noqa: E402

FAMILY = "edge"
ARTIFACTS = RESULTS / "artifacts"
LARGE = 64
CALIBRATION_BATCHES = 8  # of the train split, for the peers' static int8 (int8-static's default too)
TARGETS = ("onnx", "openvino", "executorch", "litert")
ALL = "fmnist-resnet,fmnist-mlp"
# ours vs peer decides "at least as fast": time each for >= 2 s over 10 alternating rounds (up to 100 passes per
# round and run). 10 passes (--runs 10, 2 per round) of a 20 us .pte swung 0.021 -> 0.030 ms between two timings
# of the same export in one quiet run, enough to flip the verdict both ways
PEER_TIMING = {"rounds": 10, "warmup": 3, "min_seconds": 2.0}


def variants(task: str) -> list[tuple[str, str, list[nc.Step]]]:
    """(method, artifact relative to results/artifacts, recipe to build it when missing)."""
    table = {
        "fmnist-resnet": [
            ("int8-static", "quantization/fmnist-resnet--int8-static.ncz", [nc.STEPS["int8-static"]()]),
            (
                "channel-global-macs80-finetune",
                "pruning/fmnist-resnet--channel-global-macs80-finetune.ncz",
                [],
            ),
        ],
        "fmnist-mlp": [
            ("int8-static", "edge/fmnist-mlp--int8-static.ncz", [nc.STEPS["int8-static"]()]),
            ("w4-channel", "edge/fmnist-mlp--w4-channel.ncz", [nc.STEPS["weight-quantize"](bits=4)]),
        ],
    }
    return table[task]


def load_variant(task: nc.Task, method: str, rel: str, recipe: list[nc.Step]) -> tuple[nn.Module, Path]:
    path = ARTIFACTS / rel
    if not path.exists():
        if not recipe:
            raise SystemExit(f"{path} is missing: run the benchmark that writes it first")
        model = nc.compress(task.baseline(), recipe, task, seed=0).model
        nc.save(model, path, metadata={"task": task.name, "method": method})
    return nc.load(path), path


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def calibration(task: nc.Task, batch: int = 32) -> list[torch.Tensor]:
    """``CALIBRATION_BATCHES`` train batches of ``batch`` samples, the peers' calibration data."""
    out = []
    for x, _ in task.train:
        out += list(x.split(batch))
        if len(out) >= CALIBRATION_BATCHES:
            break
    return out[:CALIBRATION_BATCHES]


# --- peers: each runtime's own quantizer on the fp32 baseline -----------------------------------


def nncf_peer(baseline: nn.Module, task: nc.Task, method: str, tmp: Path) -> tuple[str, Path, nn.Module, int]:
    """NNCF on the baseline's OpenVINO IR: ``nncf.quantize`` (int8 rows) or ``compress_weights`` (4-bit)."""
    import nncf
    import openvino as ov

    from nncompress.deploy.openvino import OpenVinoModule
    from nncompress.io.onnx_export import export_onnx

    onnx_path = tmp / "peer-fp32.onnx"
    export_onnx(baseline, onnx_path, task.inputs_example()[:8], overwrite=True)
    model = ov.convert_model(str(onnx_path))
    if method.startswith("w4"):
        name = "nncf.compress_weights INT4_ASYM per-channel, ratio 1"
        out = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=-1, ratio=1.0)
    else:
        name = f"nncf.quantize (int8, {CALIBRATION_BATCHES}x32 calibration samples)"
        data = nncf.Dataset([x.numpy() for x in calibration(task)])
        out = nncf.quantize(model, data, subset_size=CALIBRATION_BATCHES * 32)
    xml = tmp / "peer.xml"
    ov.save_model(out, str(xml), compress_to_fp16=False)
    size = os.path.getsize(xml) + os.path.getsize(xml.with_suffix(".bin"))
    return name, xml, OpenVinoModule(str(xml)), size


def xnnpack_peer(baseline: nn.Module, task: nc.Task, method: str, tmp: Path) -> tuple[str, Path, nn.Module, int]:
    """ExecuTorch's XNNPACKQuantizer (PT2E static int8, per-channel weights) on the baseline, lowered to XNNPACK."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from nncompress.deploy.executorch import ExecuTorchModule, Positional, lower_to_pte

    example = task.inputs_example()
    batch = torch.export.Dim("batch", min=1, max=2 * max(LARGE, example.shape[0]))
    graph = torch.export.export(
        Positional(baseline.eval()), (example[:2],), dynamic_shapes=(({0: batch},),), strict=False
    ).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in calibration(task):
            prepared(x)
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # lower_to_pte calls .eval() on the module it wraps
    data, _ = lower_to_pte(converted, (example,), max_batch=max(LARGE, example.shape[0]))
    path = tmp / "peer.pte"
    path.write_bytes(data)
    name = f"executorch XNNPACKQuantizer (PT2E int8 per-channel, {CALIBRATION_BATCHES}x32 calibration samples)"
    return name, path, ExecuTorchModule(path, max_batch=max(LARGE, example.shape[0])), len(data)


def litert_peer(baseline: nn.Module, task: nc.Task, method: str, tmp: Path) -> tuple[str, Path, nn.Module, int]:
    """litert-torch's own ``PT2EQuantizer`` (static int8, per-channel weights) on the baseline, converted at batch 1
    as our LiteRT export is (its dynamic batch axis did not lower through the Flatten)."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from nncompress.deploy.executorch import Positional
    from nncompress.deploy.litert import LiteRtModule

    example = task.inputs_example()[:1]
    graph = torch.export.export(Positional(baseline.eval()), (example,), strict=False).module()
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in calibration(task):
            for sample in x.split(1):  # the graph is specialized to batch 1
                prepared(sample)
    converted = convert_pt2e(prepared, fold_quantize=False)  # the form the converter folds into int8 kernels
    edge = litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    path = tmp / "peer.tflite"
    edge.export(str(path))
    name = f"litert-torch PT2EQuantizer (static int8 per-channel, {CALIBRATION_BATCHES}x32 calibration samples)"
    return name, path, LiteRtModule(path), os.path.getsize(path)


PEERS = {
    "openvino": (nncf_peer, "nncf"),
    "executorch": (xnnpack_peer, "executorch"),
    "litert": (litert_peer, "litert-torch"),
}


def peer_row(
    task: nc.Task, target: str, method: str, ours: Any, baseline: nn.Module, base_fields: dict, runs: int
) -> dict[str, Any] | None:
    """The runtime's own quantizer on the baseline: metric, size, latency interleaved with our export."""
    make, package = PEERS[target]
    if target == "executorch" and method.startswith("w4"):
        return None  # XNNPACK has no weight-only 4-bit: its 4-bit path quantizes activations too
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        try:
            name, _, runner, size = make(baseline, task, method, Path(d))
        except Exception as e:  # noqa: BLE001 - a peer that fails is a row saying so, not a crash
            return {"task": task.name, "method": f"{target}-peer-{method}", "tool": package, "error": str(e)[:300]}
        seconds = time.perf_counter() - t0
        metric = evaluate(runner, task.test, task.metric_fn)
        latency = {}
        for batch in (1, LARGE):
            inputs = repeat_batch(task.single_example(), batch)
            ms = interleaved_latency([ours.runner, runner], inputs, batch_size=batch, runs=runs, **PEER_TIMING)
            latency[f"batch_{batch}"] = {"ours_export": round(ms[0].median_ms, 4), "peer": round(ms[1].median_ms, 4)}
    result = {k: None for k in base_fields}
    result.update(
        metric={"name": task.metric_name, "value": metric},
        size_bytes=size,
        latency_ms=latency["batch_1"]["peer"],
        compress_seconds=round(seconds, 2),
    )
    faster = all(t["ours_export"] <= t["peer"] for t in latency.values())
    return {
        "task": task.name,
        "method": f"{target}-peer-{method}",
        "tool": f"{package} {version(package)}",
        "target": target,
        "settings": {"peer": name, "same_runtime_as": f"{target}-{method}"},
        "baseline": base_fields,
        "result": result,
        "versus_ours": {
            "latency_ms": latency,
            # ours / peer median per batch: 1.01 is inside what loading order alone moved an identical IR by
            "latency_ratio": {k: round(t["ours_export"] / t["peer"], 3) for k, t in latency.items()},
            "bytes": {"ours_export": ours.bytes, "peer": size},
            "metric": {"ours_export": ours.metric["export"], "peer": metric},
            "ours_at_least_as_fast": faster,
            "ours_at_least_as_small": ours.bytes <= size,
        },
    }


def run_task(task_name: str, targets: list[str], peers: bool, runs: int, tmp: Path) -> list[dict[str, Any]]:
    task = nc.tasks.get(task_name)
    baseline = task.baseline().eval()
    no_latency = nc.MeasureConfig(latency=False)
    base_fields = contract_fields(nc.measure(baseline, task, config=no_latency))
    config = CheckConfig(batch_large=LARGE, runs=runs, rounds=5)
    rows = []
    for method, rel, recipe in variants(task_name):
        model, path = load_variant(task, method, rel, recipe)
        report = nc.measure(model, task, config=no_latency, size_bytes=os.path.getsize(path))
        fields = contract_fields(report)
        fields["artifact"] = str(path.relative_to(RESULTS.parent.parent))
        for target in targets:
            out = tmp / f"{task_name}-{method}{get_target(target).suffix}"
            try:
                result = deploy(model, target, out, task, config=config, fp32_model=baseline)
            except Exception as e:  # noqa: BLE001 - one failing export is a row saying why
                rows.append(
                    {"task": task_name, "method": f"{target}-{method}", "target": target, "error": str(e)[:300]}
                )
                print(f"{task_name} {method} -> {target}: FAILED {e}", flush=True)
                continue
            row_fields = dict(fields, latency_ms=result.latency_ms["batch_1"]["ours"])
            drop = None if result.metric["export"] is None else result.metric["ours"] - result.metric["export"]
            rows.append(
                {
                    "task": task_name,
                    "method": f"{target}-{method}",
                    "target": target,
                    "settings": {"source_artifact": fields["artifact"], "batch_large": LARGE, "runs": runs},
                    "baseline": base_fields,
                    "result": row_fields,
                    "export": result.to_dict(),
                    "within_0_3_points": drop is not None and abs(drop) <= 0.003,
                }
            )
            print(_line(rows[-1]), flush=True)
            if (
                peers
                and target in PEERS
                and "int8" in method
                or peers
                and target == "openvino"
                and method.startswith("w4")
            ):
                row = peer_row(task, target, method, result, baseline, base_fields, runs)
                if row:
                    rows.append(row)
                    print(_peer_line(row), flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    e = row["export"]
    m, t = e["metric"], e["latency_ms"]
    return (
        f"{row['task']:14} {row['method']:42} {e['bytes']:>10,} B (fp32 {e['fp32_bytes']:,})  "
        f"metric {m['ours']:.4f} -> {m['export']:.4f} (fp32 export {m['fp32_export']:.4f})  "
        f"err {e['max_abs_error']:.2g}  "
        + "  ".join(
            f"b{k.split('_')[1]} {v['ours']:.3f}/{v['export']:.3f}/{v['fp32_export']:.3f} ms" for k, v in t.items()
        )
    )


def _peer_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['task']:14} {row['method']:42} FAILED {row['error']}"
    v = row["versus_ours"]
    return (
        f"{row['task']:14} {row['method']:42} {v['bytes']['peer']:>10,} B (ours {v['bytes']['ours_export']:,})  "
        f"metric peer {v['metric']['peer']:.4f} ours {v['metric']['ours_export']:.4f}  "
        + "  ".join(
            f"b{k.split('_')[1]} ours {t['ours_export']:.3f} / peer {t['peer']:.3f} ms"
            for k, t in v["latency_ms"].items()
        )
    )


GGUF_ARTIFACT = "edge/smollm2-135m--gptq-w4-g32-sym.ncz"
# llama.cpp's Q4_0 keeps the tied token_embd at Q8_0 (Q6_K, its pick for the output, needs widths of 256k:
# 576 falls back to Q8_0), so ours packs the tied LM head at 8 bits, symmetric groups of 32 (Q8_0 exactly)
GGUF_SYMMETRIC = {"bits": 4, "group_size": 32, "symmetric": True, "head_bits": 8, "rest_bits": 16}
GGUF_GPTQ = {**GGUF_SYMMETRIC, "act_order": True, "calibration_batches": 4}


def _decode_rates(runners: dict[str, Any], prompt: list[int], tokens: int, rounds: int = 3) -> dict[str, float]:
    """Median decode tokens/s of each llama.cpp model, measured in alternating rounds."""
    import statistics

    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            rates[name].append(runner.decode_tokens_per_second(prompt, tokens))
    return {name: round(statistics.median(r), 2) for name, r in rates.items()}


def rtn_w4(model: nn.Module, task: nc.Task, symmetric: bool = True) -> nn.Module:
    """Round-to-nearest 4-bit groups of 32 on every decoder Linear: symmetric with the GPTQ row's head and
    float handling (``GGUF_SYMMETRIC``), or asymmetric (integer zeros, Q4_1) with the float head kept."""
    import copy

    from nncompress.core.step import StepContext

    settings = GGUF_SYMMETRIC if symmetric else {"bits": 4, "group_size": 32, "symmetric": False}
    step = nc.RTNQuantize(**settings)
    return step.apply(copy.deepcopy(model), StepContext(task=task, seed=0)).eval()


def _gptq_w4(task: nc.Task, baseline: nn.Module, path: Path) -> nn.Module:
    """The GPTQ row's model (``GGUF_GPTQ``), loaded from ``path`` or compressed (minutes) and saved there."""
    import copy

    from nncompress.core.step import StepContext

    if not path.exists():
        step = nc.GPTQQuantize(**GGUF_GPTQ)
        model = step.apply(copy.deepcopy(baseline), StepContext(task=task, seed=0))
        nc.save(model, path, metadata={"task": task.name, "method": "gptq-w4-g32-sym", "settings": GGUF_GPTQ})
    return nc.load(path, trust=("transformers",)).eval()  # written by this function: a Hugging Face Llama


def _tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGUF type a file holds (``{"Q4_0": 210, "Q8_0": 1, "F32": 61}``)."""
    from collections import Counter

    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(path).tensors))


def _gguf_models(task: nc.Task, baseline: nn.Module, quick: bool) -> list[tuple[str, nn.Module, Path | None, dict]]:
    """Our models for the GGUF rows: (method, model, artifact or None, settings)."""
    models = []
    path = ARTIFACTS / GGUF_ARTIFACT
    if not quick or path.exists():  # GPTQ takes minutes: --quick only reuses its artifact
        models.append(("gptq-w4-g32-sym", _gptq_w4(task, baseline, path), path, {"step": "gptq", **GGUF_GPTQ}))
    models.append(("rtn-w4-g32-sym", rtn_w4(baseline, task), None, {"step": "rtn", **GGUF_SYMMETRIC}))
    asym = {"bits": 4, "group_size": 32, "symmetric": False}
    models.append(("rtn-w4-g32", rtn_w4(baseline, task, symmetric=False), None, {"step": "rtn", **asym}))
    return models


def gguf_rows(quick: bool = False) -> list[dict[str, Any]]:
    """SmolLM2-135M GPTQ / RTN 4-bit (groups of 32) -> GGUF (symmetric: Q4_0; integer zeros: Q4_1) in
    llama.cpp, beside llama.cpp's own Q4_0 / Q8_0 of the fp32 weights: perplexity on the test split
    (llama.cpp's logits), size, tensor types, decode tokens/s."""
    from nncompress.deploy.gguf import GgufTarget, LlamaCppModule, llama_quantize, perplexity

    task = nc.tasks.get("smollm2-135m")
    baseline = task.baseline().eval()
    test = list(task.test)[:1] if quick else list(task.test)
    context = int(test[0][0].shape[-1])
    ours: dict[str, tuple[Any, Path | None, dict, float]] = {}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files: dict[str, Path] = {}
        for method, model, path, settings in _gguf_models(task, baseline, quick):
            exported = GgufTarget().export(model, tmp / f"{method}.gguf", test[0][0])
            exported.runner = None  # llama.cpp runs it below, beside the others
            kind = "q4_0" if settings["symmetric"] else "q4_1"
            files[f"ours-{method}-{kind}"] = tmp / f"{method}.gguf"
            ours[f"ours-{method}-{kind}"] = (exported, path, settings, perplexity(model, test))
        GgufTarget(f32=True).export(baseline, tmp / "f32.gguf", test[0][0])
        files["llama.cpp-f32"] = tmp / "f32.gguf"
        for kind in ("Q4_0", "Q8_0"):
            files[f"llama.cpp-{kind.lower()}"] = tmp / f"{kind}.gguf"
            llama_quantize(tmp / "f32.gguf", files[f"llama.cpp-{kind.lower()}"], kind)
        runners = {name: LlamaCppModule(f, context=context) for name, f in files.items()}
        ppl = {name: perplexity(r, test) for name, r in runners.items()}
        ppl_base_torch = perplexity(baseline, test)
        prompt = test[0][0][0, :64].tolist()
        rates = _decode_rates(runners, prompt, 16 if quick else 64)
        sizes = {name: os.path.getsize(f) for name, f in files.items()}
        types = {name: _tensor_types(f) for name, f in files.items()}
    for name in files:
        common = {"test_tokens": sum(t.numel() for _, t in test), "context": context}
        rows.append(_gguf_row(task.name, name, common, ppl, sizes, rates, types, ours.get(name), ppl_base_torch))
        torch_ppl = ours[name][3] if name in ours else ppl_base_torch
        print(
            f"{task.name:14} {rows[-1]['method']:34} ppl {ppl[name]:.3f} (torch {torch_ppl:.3f}, fp32 "
            f"{ppl_base_torch:.3f})  {sizes[name]:,} B {types[name]}  decode {rates[name]:.1f} tok/s",
            flush=True,
        )
    return rows


def _gguf_row(
    task: str,
    name: str,
    common: dict[str, int],
    ppl: dict[str, float],
    sizes: dict[str, int],
    rates: dict[str, float],
    types: dict[str, dict[str, int]],
    ours: tuple[Any, Path | None, dict, float] | None,
    ppl_base_torch: float,
) -> dict[str, Any]:
    """One GGUF row: ours (export layers and notes, torch perplexity, versus llama.cpp's Q4_0) or a llama.cpp file."""
    row: dict[str, Any] = {
        "task": task,
        "method": f"gguf-{name}",
        "target": "gguf",
        "settings": dict(common),
        "result": {
            "metric": {"name": "perplexity", "value": ppl[name], "higher_is_better": False},
            "size_bytes": sizes[name],
            "tensor_types": types[name],
            "decode_tokens_per_s": rates[name],
        },
    }
    if ours is None:
        row["tool"] = f"llama-cpp-python {version('llama-cpp-python')}"
        row["baseline_torch_perplexity"] = ppl_base_torch
        return row
    exported, path, settings, ppl_torch = ours
    row["settings"]["compress"] = settings
    row["settings"]["source_artifact"] = str(path.relative_to(RESULTS.parent.parent)) if path else None
    row["export"] = {"layers": exported.layers, "notes": exported.notes}
    row["ours_torch_perplexity"] = ppl_torch
    row["relative_perplexity_gap"] = abs(ppl[name] - ppl_torch) / ppl_torch
    row["versus_llama_cpp_q4_0"] = {
        "perplexity": [ppl[name], ppl["llama.cpp-q4_0"]],
        "bytes": [sizes[name], sizes["llama.cpp-q4_0"]],
        "decode_tokens_per_s": [rates[name], rates["llama.cpp-q4_0"]],
    }
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fmnist-mlp only, fewer timing runs, no peers")
    parser.add_argument("--tasks", default=None, help=f"comma-separated (default {ALL}; --quick: fmnist-mlp); '': none")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated; missing runtimes are skipped")
    parser.add_argument("--runs", type=int, default=30, help="timed passes per model and batch size")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--gguf", action="store_true", help="add SmolLM2-135M GGUF rows (needs llama-cpp-python)")
    parser.add_argument("--merge", action="store_true", help="keep rows of the existing JSON not rerun here")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    tasks = (
        ["fmnist-mlp"]
        if args.quick and args.tasks is None
        else [t for t in (ALL if args.tasks is None else args.tasks).split(",") if t]
    )
    runs = 6 if args.quick else args.runs
    targets = []
    for name in args.targets.split(","):
        try:
            get_target(name)
            targets.append(name)
        except ValueError as e:
            print(f"skipping --to {name}: {e}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        for task in tasks:
            rows += run_task(task, targets, not (args.no_peers or args.quick), runs, Path(d))
    if args.gguf:
        rows += gguf_rows(quick=args.quick)
    if args.merge and Path(args.out or RESULTS / f"{FAMILY}.json").exists():
        import json

        fresh = {(r["task"], r["method"]) for r in rows}
        old = json.loads(Path(args.out or RESULTS / f"{FAMILY}.json").read_text())
        rows = [r for r in old if (r["task"], r["method"]) not in fresh] + rows
    path = write_results(FAMILY, rows, args.out)
    print(f"wrote {path} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
