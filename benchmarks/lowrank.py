"""Low-rank factorization benchmark: prints a table, writes benchmarks/results/lowrank.json.

Rows (method names are stable; see shared DESIGN.md):
- fmnist-resnet: Tucker-2 (``tucker-...``) at per-layer ranks chosen for half the MACs
  (``lowrank-budget``: per-layer sensitivity, then a knapsack) and at VBMF ranks (Kim et al.
  2016), CP (``cp-...``), each fine-tuned with KD from the unfactorized model; and the same Tucker
  and CP ranks built with TensorLy-Torch (``tool``: its ``FactorizedConv.from_conv``, the
  factorized implementation), fine-tuned the same way
- fmnist-mlp and fmnist-vit: truncated SVD of the Linear layers (``svd-...``) for half the
  parameters: ranks by ``lowrank-budget`` (per-layer sensitivity), and every layer at 45% of its
  parameters, plain and activation-aware; fine-tuned with KD

Every row's ``settings.layers`` lists each factorized layer before fine-tuning: its rank, the
relative weight error the step reported, the error Eckart-Young predicts from the singular values
(SVD: sqrt of the dropped squared singular values over the total), and the relative output
error on a test batch; ``settings.metric_before_finetune`` is the metric right after factorizing.

Usage: python benchmarks/lowrank.py [--quick]
(NNCOMPRESS_BENCH_ONLY=svd-params45-kd,... reruns those methods and keeps the other rows of the saved
JSON; NNCOMPRESS_BENCH_LAYERS_ONLY=1 only recomputes every row's ``settings.layers``, factorizing
again without fine-tuning, and checks the metric before fine-tuning comes out the same.)
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, contract_fields, parse_args, peer_row, print_table, write_results
from torch import nn

import nncompress as nc
from nncompress.measure.metric import evaluate
from nncompress.measure.report import add_latency
from nncompress.tasks.task import run_with_hooks

FAMILY = "lowrank"
LAYERS_ONLY = os.environ.get("NNCOMPRESS_BENCH_LAYERS_ONLY") == "1"
LOG_LINE = re.compile(
    r"^(?P<kind>[\w-]+): (?P<name>\S+) rank (?P<rank>.+?)(?: of (?P<full>.+?))?"
    r"(?: \(break-even .+?\))?, relative error (?P<error>[\d.]+)"
)


def _factorized_layers(notes: list[str]) -> dict[str, dict[str, Any]]:
    """``{layer: {rank, full_rank, reported_error}}`` from a factorization step's log lines."""
    out = {}
    for line in notes:
        m = LOG_LINE.match(line)
        if m:
            out[m["name"]] = {
                "step": m["kind"],
                "rank": m["rank"],
                "full_rank": m["full"],
                "reported_error": float(m["error"]),
            }
    return out


def _dense_weight(module: nn.Module) -> torch.Tensor | None:
    """The one weight a factorized ``nn.Sequential`` computes, rebuilt from its factors: SVD
    (Linear, Linear), spatial SVD (kh x 1, 1 x kw conv), Tucker-2 (1x1, core, 1x1) or CP (1x1,
    depthwise kh x 1, depthwise 1 x kw, 1x1); None for anything else."""
    if not isinstance(module, nn.Sequential):
        return None
    w = [m.weight.detach().double() for m in module]
    kinds = [type(m) for m in module]
    if kinds == [nn.Linear, nn.Linear]:
        return w[1] @ w[0]
    if kinds == [nn.Conv2d] * 2:  # W[o,i,y,x] = sum_r B[o,r,0,x] A[r,i,y,0]
        return torch.einsum("orx,riy->oiyx", w[1][:, :, 0, :], w[0][:, :, :, 0])
    if kinds == [nn.Conv2d] * 3:
        return torch.einsum("oa,abyx,bi->oiyx", w[2][:, :, 0, 0], w[1], w[0][:, :, 0, 0])
    if kinds == [nn.Conv2d] * 4:
        return torch.einsum("or,ry,rx,ri->oiyx", w[3][:, :, 0, 0], w[1][:, 0, :, 0], w[2][:, 0, 0, :], w[0][:, :, 0, 0])
    return None


def _eckart_young(weight: torch.Tensor, rank: int) -> float:
    """The least relative Frobenius error of any rank-``rank`` matrix: the dropped singular values."""
    s2 = torch.linalg.svdvals(weight.detach().double().flatten(1)) ** 2
    return float((s2[rank:].sum() / s2.sum()).sqrt())


@torch.no_grad()
def _output_errors(
    original: nn.Module, factorized: nn.Module, names: list[str], inputs: torch.Tensor
) -> dict[str, float]:
    """Relative output error of each factorized layer alone, on the inputs the original layer sees."""
    seen: dict[str, torch.Tensor] = {}
    run_with_hooks(original.eval(), names, [inputs], lambda n, _m, x, _out: seen.__setitem__(n, x))
    errors = {}
    for n in names:
        x = seen[n]
        ref, approx = original.get_submodule(n)(x), factorized.get_submodule(n)(x)
        errors[n] = float((approx - ref).norm() / ref.norm())
    return errors


@torch.no_grad()
def _layer_report(
    task: nc.Task, baseline: nn.Module, factorized: nn.Module, notes: list[str], activation_aware: bool
) -> list[dict]:
    """Per factorized layer: its rank; the error the step reported (the relative weight error, or
    for activation-aware SVD the relative output error on its calibration batches); the relative
    weight error rebuilt here from the saved factors; for plain SVD of a Linear the Eckart-Young
    error of that rank (which the weight error must equal); the relative output error on a test batch."""
    layers = _factorized_layers(notes)
    inputs = next(iter(task.test))[0][:256]
    outputs = _output_errors(baseline, factorized, list(layers), inputs)
    rows = []
    for name, info in layers.items():
        original = baseline.get_submodule(name).weight.detach().double()
        dense = _dense_weight(factorized.get_submodule(name))
        row = {
            "layer": name,
            **info,
            "reported_error_is": "output error on calibration data" if activation_aware else "weight error",
            "weight_error": round(float((dense - original).norm() / original.norm()), 5) if dense is not None else None,
            "output_error": round(outputs[name], 5),
        }
        if original.dim() == 2 and not activation_aware and info["rank"].isdigit():
            row["eckart_young_error"] = round(_eckart_young(original, int(info["rank"])), 5)
        rows.append(row)
    return rows


def factorize_row(
    task: nc.Task, method: str, factorize: list[nc.Step], finetune: nc.Step, baseline_report: nc.Report, seed: int = 0
) -> tuple[dict, nn.Module]:
    """Factorize (``factorize`` steps), record each layer's error, fine-tune, measure, save: one row.
    Returns the row and the factorized model before fine-tuning (its ranks, for the peers)."""
    teacher = task.baseline().eval()
    t0 = time.perf_counter()
    first = nc.compress(task.baseline(), factorize, task, seed=seed, measure_config=nc.MeasureConfig(latency=False))
    factorized = first.model
    notes = [line for step in first.report.steps for line in step.notes]
    aware = any(getattr(step, "activation_aware", False) for step in factorize)
    layers = _layer_report(task, teacher, factorized, notes, aware)
    before_ft = first.report.final.metric["value"]
    ctx = nc.StepContext(task=task, teacher=teacher, seed=seed)
    model = finetune.apply(copy.deepcopy(factorized), ctx).eval()
    seconds = time.perf_counter() - t0
    artifact = RESULTS / "artifacts" / FAMILY / f"{task.name}--{method}.ncz"
    recipe = [s.describe() for s in (*factorize, finetune)]
    nc.save(model, artifact, metadata={"task": task.name, "method": method, "recipe": recipe, "seed": seed})
    report = nc.measure(model, task, config=nc.MeasureConfig(latency=False), size_bytes=os.path.getsize(artifact))
    add_latency([baseline_report, report], [teacher, model], task, nc.MeasureConfig())
    settings = {
        "recipe": recipe,
        "seed": seed,
        "metric_before_finetune": before_ft,
        "layers": layers,
        "notes": [n for n in notes if "skipped" in n or "factorized" in n],
    }
    row = {
        "task": task.name,
        "method": method,
        "settings": settings,
        "baseline": contract_fields(baseline_report),
        "result": {
            **contract_fields(report),
            "artifact": str(artifact.relative_to(RESULTS.parent.parent)),
            "compress_seconds": round(seconds, 2),
        },
    }
    return row, factorized


# --- TensorLy-Torch peer ----------------------------------------------------------------
def _conv_ranks(factorized: nn.Module, kind: str) -> dict[str, Any]:
    """The ranks our factorized model used per conv: Tucker (r_out, r_in) from the 1x1 convs'
    widths, CP R from the first 1x1 conv's width."""
    ranks = {}
    for name, m in factorized.named_modules():
        if isinstance(m, nn.Sequential) and m and all(isinstance(c, nn.Conv2d) for c in m):
            if kind == "tucker" and len(m) == 3:
                ranks[name] = (m[2].in_channels, m[0].out_channels)
            elif kind == "cp" and len(m) == 4:
                ranks[name] = m[0].out_channels
    return ranks


def tltorch_row(
    task: nc.Task, method: str, kind: str, ours: nn.Module, finetune: nc.Step, baseline_report: nc.Report, seed: int = 0
) -> dict:
    """The same convs at the same ranks as ``ours``, factorized by TensorLy-Torch, then the same fine-tuning."""
    import tltorch

    teacher = task.baseline().eval()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = task.baseline()
    for name, rank in _conv_ranks(ours, kind).items():
        conv = model.get_submodule(name)
        kh, kw = conv.kernel_size
        tl_rank = [rank[0], rank[1], kh, kw] if kind == "tucker" else rank
        with warnings.catch_warnings():  # its SVD start asks small modes for more vectors than they have
            warnings.filterwarnings("ignore", message=".*n_eigenvecs.*", category=UserWarning)
            new = tltorch.FactorizedConv.from_conv(conv, rank=tl_rank, factorization=kind, implementation="factorized")
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    before_ft = evaluate(model.eval(), task.test, task.metric_fn)
    model = finetune.apply(model, nc.StepContext(task=task, teacher=teacher, seed=seed)).eval()
    seconds = time.perf_counter() - t0
    row = peer_row(
        task,
        method,
        "tensorly-torch",
        teacher,
        model,
        lambda m, p: torch.save(m.state_dict(), p),
        {
            "ranks": "the same per-layer ranks as ours",
            "factorization": kind,
            "implementation": "factorized",
            "metric_before_finetune": before_ft,
            "finetune": finetune.describe(),
        },
        seconds,
    )
    row["baseline"] = contract_fields(baseline_report) | {
        "latency_ms": row["baseline"]["latency_ms"],
        "latency": row["baseline"]["latency"],
        "size_bytes": row["baseline"]["size_bytes"],
    }
    return row


@dataclass(frozen=True)
class Spec:
    """One row: factorize ``task``'s baseline with ``factorize``, then fine-tune with ``finetune``;
    a TensorLy-Torch row (``peer``: "tucker" or "cp") rebuilds the ranks of the row ``source``."""

    task: str
    method: str
    factorize: tuple[nc.Step, ...] = ()
    finetune: nc.Step | None = None
    peer: str | None = None
    source: str | None = None


def specs(quick: bool) -> list[Spec]:
    """Every row of the benchmark, in table order."""

    def kd(epochs: float, lr: float = 1e-3) -> nc.Step:
        return nc.Distill(epochs=0.2 if quick else epochs, lr=lr)

    keep = (0.1, 0.25, 0.4, 0.6)
    cp_kd = kd(3, 3e-4)  # CP fine-tunes best at a small learning rate (Lebedev et al.)
    out = [
        Spec(
            "fmnist-resnet",
            "tucker-macs50-kd",
            (nc.LowRankBudget(target=0.5, resource="macs", methods=("tucker",), keep=keep),),
            kd(3),
        ),
        Spec("fmnist-resnet", "tucker-vbmf-kd", (nc.TuckerFactorize(rank="vbmf"),), kd(3)),
        Spec("fmnist-resnet", "cp-params25-kd", (nc.CPFactorize(rank="params:0.25"),), cp_kd),
        Spec(
            "fmnist-resnet",
            "tensorly-torch-tucker-same-ranks-kd",
            finetune=kd(3),
            peer="tucker",
            source="tucker-macs50-kd",
        ),
        Spec("fmnist-resnet", "tensorly-torch-cp-same-ranks-kd", finetune=cp_kd, peer="cp", source="cp-params25-kd"),
    ]
    for name, epochs in (("fmnist-mlp", 3), ("fmnist-vit", 4)):
        out += [
            Spec(
                name,
                "svd-params50-kd",
                (nc.LowRankBudget(target=0.5, resource="params", methods=("svd",), keep=keep),),
                kd(epochs),
            ),
            Spec(name, "svd-params45-kd", (nc.SVDFactorize(rank="params:0.45"),), kd(epochs)),
            Spec(
                name, "svd-aware-params45-kd", (nc.SVDFactorize(rank="params:0.45", activation_aware=True),), kd(epochs)
            ),
        ]
    return out


def _baseline_report(task: nc.Task) -> nc.Report:
    return nc.measure(task.baseline().eval(), task, config=nc.MeasureConfig(latency=False))


def _factorized(spec: Spec, task: nc.Task) -> tuple[nn.Module, list[str]]:
    """The factorized model before fine-tuning, and the steps' log lines."""
    first = nc.compress(task.baseline(), list(spec.factorize), task, measure_config=nc.MeasureConfig(latency=False))
    return first.model, [line for step in first.report.steps for line in step.notes]


def run(spec: Spec, all_specs: dict[tuple[str, str], Spec]) -> dict:
    task = nc.tasks.get(spec.task)
    base = _baseline_report(task)
    if spec.peer is None:
        return factorize_row(task, spec.method, list(spec.factorize), spec.finetune, base)[0]
    ours, _ = _factorized(all_specs[(spec.task, spec.source)], task)
    return tltorch_row(task, spec.method, spec.peer, ours, spec.finetune, base)


def refresh_layers(rows: list[dict], all_specs: dict[tuple[str, str], Spec]) -> None:
    """Recompute ``settings.layers`` of our rows in place by factorizing again (deterministic: the
    same seed), without fine-tuning; the metric right after factorizing must come out the same."""
    for row in rows:
        spec = all_specs.get((row["task"], row["method"]))
        if spec is None or spec.peer is not None:
            continue
        task = nc.tasks.get(spec.task)
        model, notes = _factorized(spec, task)
        metric = evaluate(model, task.test, task.metric_fn)
        aware = any(getattr(step, "activation_aware", False) for step in spec.factorize)
        if abs(metric - row["settings"]["metric_before_finetune"]) > 1e-6:
            if not aware:
                raise SystemExit(
                    f"{spec.task} {spec.method}: factorizing again gave {metric} before fine-tuning, "
                    f"the saved row {row['settings']['metric_before_finetune']}"
                )
            # its calibration batches are the next ones the task's train iterator yields, which
            # depends on what ran before: say which factorization the layer table describes
            row["settings"]["layers_metric_before_finetune"] = metric
        row["settings"]["layers"] = _layer_report(task, task.baseline().eval(), model, notes, aware)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    all_specs = specs(args.quick)
    by_key = {(s.task, s.method): s for s in all_specs}
    methods = sorted({s.method for s in all_specs})
    only = [m for m in os.environ.get("NNCOMPRESS_BENCH_ONLY", "").split(",") if m]
    if bad := sorted(set(only) - set(methods)):
        raise SystemExit(f"NNCOMPRESS_BENCH_ONLY: unknown methods {bad}; accepted: {', '.join(methods)}")
    path = Path(args.out) if args.out else RESULTS / f"{FAMILY}.json"
    old = {(r["task"], r["method"]): r for r in json.loads(path.read_text())} if only or LAYERS_ONLY else {}
    rows = []
    for spec in all_specs:
        if only and spec.method not in only or LAYERS_ONLY:
            if (spec.task, spec.method) in old:
                rows.append(old[(spec.task, spec.method)])
            continue
        rows.append(run(spec, by_key))
    if LAYERS_ONLY:
        refresh_layers(rows, by_key)
    print_table(rows)
    print(f"wrote {write_results(FAMILY, rows, args.out)}")


if __name__ == "__main__":
    main()
