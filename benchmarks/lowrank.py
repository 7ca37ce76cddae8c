"""Low-rank factorization benchmark: prints a table, writes benchmarks/results/lowrank.json.

Rows (method names are stable; see shared DESIGN.md):
- fmnist-resnet: Tucker-2 (``tucker-...``) at per-layer ranks chosen for half the MACs
  (``lowrank-budget``: per-layer sensitivity, then a knapsack) and at VBMF ranks (Kim et al.
  2016), CP (``cp-...``), each fine-tuned with KD from the unfactorized model; and the same Tucker
  and CP ranks built with TensorLy-Torch (``tool``: its ``FactorizedConv.from_conv``, the
  factorized implementation), fine-tuned the same way
- fmnist-mlp and fmnist-vit: truncated SVD of the Linear layers (``svd-...``) for half the
  parameters, plain and activation-aware, fine-tuned with KD

Every row's ``settings.layers`` lists each factorized layer before fine-tuning: its rank, the
relative weight error the step reported, the error Eckart-Young predicts from the singular values
(SVD: sqrt of the dropped squared singular values over the total), and the relative output
error on a test batch; ``settings.metric_before_finetune`` is the metric right after factorizing.

Usage: python benchmarks/lowrank.py [--quick]
"""

from __future__ import annotations

import copy
import os
import re
import time
import warnings
from typing import Any

import torch
from _common import RESULTS, contract_fields, parse_args, peer_row, print_table, write_results
from torch import nn

import nncompress as nc
from nncompress.measure.metric import evaluate
from nncompress.measure.report import add_latency

FAMILY = "lowrank"
LOG_LINE = re.compile(r"^(?P<kind>[\w-]+): (?P<name>\S+) rank (?P<rank>.+?)(?: of (?P<full>.+?))?"
                      r"(?: \(break-even .+?\))?, relative error (?P<error>[\d.]+)")


def _factorized_layers(notes: list[str]) -> dict[str, dict[str, Any]]:
    """``{layer: {rank, full_rank, weight_error}}`` from a factorization step's log lines."""
    out = {}
    for line in notes:
        m = LOG_LINE.match(line)
        if m:
            out[m["name"]] = {"method": m["kind"], "rank": m["rank"], "full_rank": m["full"],
                              "weight_error": float(m["error"])}
    return out


def _eckart_young(weight: torch.Tensor, rank: int) -> float:
    """The least relative Frobenius error of any rank-``rank`` matrix: the dropped singular values."""
    s2 = torch.linalg.svdvals(weight.detach().double().flatten(1)) ** 2
    return float((s2[rank:].sum() / s2.sum()).sqrt())


@torch.no_grad()
def _output_errors(original: nn.Module, factorized: nn.Module, names: list[str], inputs: torch.Tensor
                   ) -> dict[str, float]:
    """Relative output error of each factorized layer alone, on the inputs the original layer sees."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [original.get_submodule(n).register_forward_hook(
        lambda _m, args, _out, n=n: seen.__setitem__(n, args[0])) for n in names]
    try:
        original.eval()(inputs)
    finally:
        for h in hooks:
            h.remove()
    errors = {}
    for n in names:
        x = seen[n]
        ref, approx = original.get_submodule(n)(x), factorized.get_submodule(n)(x)
        errors[n] = float((approx - ref).norm() / ref.norm())
    return errors


def _layer_report(task: nc.Task, baseline: nn.Module, factorized: nn.Module, notes: list[str]) -> list[dict]:
    """Per factorized layer: rank, reported weight error, Eckart-Young (SVD) and measured output error."""
    layers = _factorized_layers(notes)
    inputs = next(iter(task.test))[0][:256]
    outputs = _output_errors(baseline, factorized, list(layers), inputs)
    rows = []
    for name, info in layers.items():
        row = {"layer": name, **info, "output_error": round(outputs[name], 5)}
        if info["method"] == "svd" and info["rank"].isdigit():
            row["eckart_young_error"] = round(_eckart_young(baseline.get_submodule(name).weight, int(info["rank"])), 5)
        rows.append(row)
    return rows


def factorize_row(task: nc.Task, method: str, factorize: list[nc.Step], finetune: nc.Step,
                  baseline_report: nc.Report, seed: int = 0) -> tuple[dict, nn.Module]:
    """Factorize (``factorize`` steps), record each layer's error, fine-tune, measure, save: one row.
    Returns the row and the factorized model before fine-tuning (its ranks, for the peers)."""
    teacher = task.baseline().eval()
    t0 = time.perf_counter()
    first = nc.compress(task.baseline(), factorize, task, seed=seed, measure_config=nc.MeasureConfig(latency=False))
    factorized = first.model
    notes = [line for step in first.report.steps for line in step.notes]
    layers = _layer_report(task, teacher, factorized, notes)
    before_ft = first.report.final.metric["value"]
    ctx = nc.StepContext(task=task, teacher=teacher, seed=seed)
    model = finetune.apply(copy.deepcopy(factorized), ctx).eval()
    seconds = time.perf_counter() - t0
    artifact = RESULTS / "artifacts" / FAMILY / f"{task.name}--{method}.ncz"
    recipe = [s.describe() for s in (*factorize, finetune)]
    nc.save(model, artifact, metadata={"task": task.name, "method": method, "recipe": recipe, "seed": seed})
    report = nc.measure(model, task, config=nc.MeasureConfig(latency=False), size_bytes=os.path.getsize(artifact))
    add_latency([baseline_report, report], [teacher, model], task, nc.MeasureConfig())
    settings = {"recipe": recipe, "seed": seed, "metric_before_finetune": before_ft, "layers": layers,
                "notes": [n for n in notes if "skipped" in n or "factorized" in n]}
    row = {"task": task.name, "method": method, "settings": settings,
           "baseline": contract_fields(baseline_report),
           "result": {**contract_fields(report), "artifact": str(artifact.relative_to(RESULTS.parent.parent)),
                      "compress_seconds": round(seconds, 2)}}
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


def tltorch_row(task: nc.Task, method: str, kind: str, ours: nn.Module, finetune: nc.Step, baseline_report: nc.Report,
                seed: int = 0) -> dict:
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
            new = tltorch.FactorizedConv.from_conv(conv, rank=tl_rank, factorization=kind,
                                                   implementation="factorized")
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    before_ft = evaluate(model.eval(), task.test, task.metric_fn)
    model = finetune.apply(model, nc.StepContext(task=task, teacher=teacher, seed=seed)).eval()
    seconds = time.perf_counter() - t0
    row = peer_row(task, method, "tensorly-torch", teacher, model, lambda m, p: torch.save(m.state_dict(), p),
                   {"ranks": "the same per-layer ranks as ours", "factorization": kind, "implementation": "factorized",
                    "metric_before_finetune": before_ft, "finetune": finetune.describe()}, seconds)
    row["baseline"] = contract_fields(baseline_report) | {"latency_ms": row["baseline"]["latency_ms"],
                                                          "latency": row["baseline"]["latency"],
                                                          "size_bytes": row["baseline"]["size_bytes"]}
    return row


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick = args.quick
    rows: list[dict] = []

    resnet = nc.tasks.get("fmnist-resnet")
    base = nc.measure(resnet.baseline().eval(), resnet, config=nc.MeasureConfig(latency=False))
    ft = nc.Distill(epochs=0.2 if quick else 3, lr=1e-3)
    budget = nc.LowRankBudget(target=0.5, resource="macs", methods=("tucker",), keep=(0.1, 0.25, 0.4, 0.6))
    row, tucker = factorize_row(resnet, "tucker-macs50-kd", [budget], ft, base)
    rows.append(row)
    row, _ = factorize_row(resnet, "tucker-vbmf-kd", [nc.TuckerFactorize(rank="vbmf")], ft, base)
    rows.append(row)
    cp_ft = nc.Distill(epochs=0.2 if quick else 3, lr=3e-4)  # CP fine-tunes best at a small learning rate
    row, cp = factorize_row(resnet, "cp-params25-kd", [nc.CPFactorize(rank="params:0.25")], cp_ft, base)
    rows.append(row)
    rows.append(tltorch_row(resnet, "tensorly-torch-tucker-same-ranks-kd", "tucker", tucker, ft, base))
    rows.append(tltorch_row(resnet, "tensorly-torch-cp-same-ranks-kd", "cp", cp, cp_ft, base))

    for name, epochs in (("fmnist-mlp", 3), ("fmnist-vit", 4)):
        task = nc.tasks.get(name)
        base = nc.measure(task.baseline().eval(), task, config=nc.MeasureConfig(latency=False))
        ft = nc.Distill(epochs=0.2 if quick else epochs, lr=1e-3)
        for aware in (False, True):
            step = nc.LowRankBudget(target=0.5, resource="params", methods=("svd",), keep=(0.1, 0.25, 0.4, 0.6))
            method = "svd-params50-kd"
            if aware:
                step, method = nc.SVDFactorize(rank="params:0.45", activation_aware=True), "svd-aware-params45-kd"
            row, _ = factorize_row(task, method, [step], ft, base)
            rows.append(row)
    print_table(rows)
    print(f"wrote {write_results(FAMILY, rows, args.out)}")


if __name__ == "__main__":
    main()
