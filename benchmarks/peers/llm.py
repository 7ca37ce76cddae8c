"""SmolLM2-135M beside peer tools on the same weights and the same text: perplexity and file size.

Each peer quantizes the fp32 baseline of the ``smollm2-135m`` task (the packaged GGUF, dequantized)
with its own API, at the settings of one of our rows in ``benchmarks/results/llm.json``; its
perplexity is measured on the same test split by the same streamed evaluation as ours, and its
file is the peer's state dict saved with ``torch.save``. Peers that fail are kept as rows with
their error (e.g. a group size that does not divide SmolLM2's width of 576). The table matches
each peer row with our row of the same bits and group size.

Tried and not runnable here (no row): GPTQModel and llm-compressor, see ``NOT_RUN``.

Usage: python benchmarks/peers/llm.py [--only METHOD,...] [--out PATH]
(writes benchmarks/results/llm_peers.json; ``--only`` reruns those rows and keeps the others)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from _common import RESULTS, write_results  # noqa: E402
from _tools import file_size, save_state_dict  # noqa: E402
from torch import nn  # noqa: E402

import nncompress as nc  # noqa: E402
from nncompress.base.compat import prepare_import  # noqa: E402
from nncompress.measure.metric import evaluate  # noqa: E402

TASK = "smollm2-135m"
OUT = RESULTS / "llm_peers.json"
# Library attempts that did not give a CPU model here, with why (checked 2026-12-05, torch 2.13.0 CPU).
NOT_RUN = {
    "GPTQModel": "7.7.0 ships as a source archive only; it builds here with BUILD_CUDA_EXT=0 (pip install --no-deps) "
    "but importing it needs its own dependency chain (first missing: pcre); not run beside nncompress's environment",
    "llm-compressor": "needs its own virtual environment (it pins a different transformers, see PEERS.md); "
    "not run beside nncompress's",
}


def _quiet() -> Any:
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")
    return ctx


def quanto(bits: int) -> Callable[[nn.Module], nn.Module]:
    """optimum-quanto weight-only qint8 / qint4 (qint4 in its default groups of 128), then freeze."""

    def build(model: nn.Module) -> nn.Module:
        import optimum.quanto as oq

        oq.quantize(model, weights=oq.qint8 if bits == 8 else oq.qint4)
        oq.freeze(model)
        return OutsideInferenceMode(model) if bits == 4 else model

    return build


class OutsideInferenceMode(nn.Module):
    """Runs the wrapped model under ``torch.no_grad`` outside inference mode: quanto's int4 path fails
    under ``torch.inference_mode``, which the evaluation uses (PEERS.md)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return self.inner(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args), **kwargs)


def torchao(bits: int, group: int | None) -> Callable[[nn.Module], nn.Module]:
    """torchao ``quantize_``: int8 weight-only, or IntxWeightOnlyConfig at ``bits`` in groups of ``group``."""

    def build(model: nn.Module) -> nn.Module:
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        dtype = {4: torch.int4, 3: torch.int3, 2: torch.int2}.get(bits)
        config = (
            Int8WeightOnlyConfig()
            if bits == 8
            else IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerGroup(group))
        )
        quantize_(model, config)
        return model

    return build


def hqq(bits: int, group: int) -> Callable[[nn.Module], nn.Module]:
    """The ``hqq`` package: every decoder Linear replaced by ``HQQLinear`` (its half-quadratic zero/scale
    optimization, ``BaseQuantizeConfig(nbits, group_size)``); the tied LM head stays fp32, as in ours."""

    def build(model: nn.Module) -> nn.Module:
        prepare_import("hqq")
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        config = BaseQuantizeConfig(nbits=bits, group_size=group)
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and "lm_head" not in f"{name}.{child_name}":
                    setattr(
                        module,
                        child_name,
                        HQQLinear(child, config, compute_dtype=torch.float32, device="cpu", del_orig=True),
                    )
        return model

    return build


# method -> (tool, settings, builder, our row it matches)
PEERS: dict[str, tuple[str, dict[str, Any], Callable[[nn.Module], nn.Module], str]] = {
    "quanto-w8": ("optimum-quanto", {"bits": 8, "group_size": None}, quanto(8), "rtn-w8"),
    "quanto-w4-g128": ("optimum-quanto", {"bits": 4, "group_size": 128}, quanto(4), "gptq-w4"),
    "torchao-w8": ("torchao", {"bits": 8, "group_size": None}, torchao(8, None), "rtn-w8"),
    "torchao-w4-g128": ("torchao", {"bits": 4, "group_size": 128}, torchao(4, 128), "gptq-w4"),
    "torchao-w4-g64": ("torchao", {"bits": 4, "group_size": 64}, torchao(4, 64), "gptaq-w4-g64"),
    "torchao-w3-g64": ("torchao", {"bits": 3, "group_size": 64}, torchao(3, 64), "gptq-w3-g64"),
    "hqq-w4-g64": ("hqq", {"bits": 4, "group_size": 64}, hqq(4, 64), "gptaq-w4-g64"),
    "hqq-w3-g64": ("hqq", {"bits": 3, "group_size": 64}, hqq(3, 64), "gptq-w3-g64"),
}


def peer_row(task: nc.Task, baseline: nn.Module, base: dict[str, Any], method: str) -> dict[str, Any]:
    """Quantize a copy of the baseline with one peer; its test perplexity and file, or its error."""
    tool, settings, build, matches = PEERS[method]
    row: dict[str, Any] = {"task": TASK, "method": method, "tool": tool, "settings": settings, "matches": matches}
    row["baseline"] = base
    t0 = time.perf_counter()
    quiet = _quiet()
    try:
        model = build(copy.deepcopy(baseline).eval())
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            value = evaluate(model, task.test, task.metric_fn)
        size = file_size(save_state_dict, model)
    except Exception as e:  # a peer that fails is a row with its error, not a crash of the benchmark
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        row["result"] = None
        traceback.print_exc(limit=2)
        return row
    finally:
        quiet.__exit__(None, None, None)
    row["result"] = {
        **{k: base[k] for k in ("params", "nonzero_params", "dense_fp32_bytes", "macs")},
        "metric": {**base["metric"], "value": value},
        "size_bytes": size,
        "latency_ms": None,  # decode speed: benchmarks/decode.py
        "compress_seconds": round(seconds, 2),
    }
    return row


def ours_by_method() -> dict[str, dict[str, Any]]:
    path = RESULTS / "llm.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    return {r["method"]: r for r in rows if r["task"] == TASK}


def print_table(rows: list[dict[str, Any]]) -> None:
    """Each peer row beside our matched row: perplexity and file size."""
    ours = ours_by_method()
    print(f"{'peer':18} {'ppl':>8} {'MB':>7}   {'ours':14} {'ppl':>8} {'MB':>7}")
    for r in rows:
        mine = ours.get(r["matches"], {}).get("result")
        ppl = f"{r['result']['metric']['value']:.3f}" if r.get("result") else "error"
        mb = f"{r['result']['size_bytes'] / 1e6:.1f}" if r.get("result") else ""
        our_ppl = f"{mine['metric']['value']:.3f}" if mine else "-"
        our_mb = f"{mine['size_bytes'] / 1e6:.1f}" if mine else ""
        print(f"{r['method']:18} {ppl:>8} {mb:>7}   {r['matches']:14} {our_ppl:>8} {our_mb:>7}")
        if r.get("error"):
            print(f"  {r['error']}")
    for tool, why in NOT_RUN.items():
        print(f"not run: {tool}: {why}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated methods to (re)run; the other rows are kept")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    only = [m for m in args.only.split(",") if m]
    unknown = sorted(set(only) - set(PEERS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; accepted: {', '.join(PEERS)}")
    from nncompress.tasks.smollm2 import availability

    reason = availability()
    if reason is not None:
        print(f"{TASK} skipped: {reason}")
        return
    task = nc.tasks.get(TASK)
    baseline = task.baseline()
    report = nc.measure(baseline, task, config=nc.MeasureConfig(latency=False), size_bytes=0)
    base = {k: v for k, v in report.to_dict().items() if k in ("metric", "params", "nonzero_params", "macs")}
    base.update(dense_fp32_bytes=report.dense_fp32_bytes, size_bytes=file_size(save_state_dict, baseline))
    base["latency_ms"] = None
    kept = json.loads(Path(args.out).read_text()) if only and Path(args.out).exists() else []
    rows = [r for r in kept if r["method"] not in only]
    for method in only or PEERS:
        rows.append(peer_row(task, baseline, base, method))
        r = rows[-1]
        print(method, r["result"]["metric"]["value"] if r.get("result") else r.get("error"), flush=True)
    rows.sort(key=lambda r: list(PEERS).index(r["method"]) if r["method"] in PEERS else len(PEERS))
    write_results("llm_peers", rows, args.out)
    print_table(rows)


if __name__ == "__main__":
    main()
