"""Pruning benchmark on the reference tasks: prints a table, writes benchmarks/results/pruning.json.

Rows (method names are stable; see shared DESIGN.md):
- fmnist-mlp  magnitude-global-90: one-shot global magnitude 90% + fine-tune
- fmnist-mlp  magnitude-global-90-gradual: Zhu & Gupta's cubic ramp to 90% while fine-tuning
- fmnist-resnet channel-global-macs80: structured channel pruning (global ranking) removing
  >= 80% of MACs, then distillation from the unpruned model (plain fine-tune as a second row)
- fmnist-vit  2:4: 2:4 on every eligible Linear + fine-tune
- fmnist-mlp  lottery-83: iterative magnitude pruning, 8 rounds of 20%, rewinding to step 200
- peers at the same settings: torch.nn.utils.prune (global L1 90%, masks only: its saved
  state_dict stays dense) and Torch-Pruning (DepGraph, L1 group magnitude, to the same MACs)

Usage: python benchmarks/pruning.py [--quick]
Torch-Pruning is optional: pip install torch-pruning==1.6.1 -c <(echo torch==2.13.0)
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.utils.prune as torch_prune
from _common import parse_args, peer_row, print_table, run_recipe, write_results
from torch import nn

import nncompress as nc
from nncompress.measure.flops import count_macs

FAMILY = "pruning"
MACS_REDUCTION = 0.8


def settings(quick: bool) -> dict[str, nc.FineTune]:
    """The recovery training each row gets (ours and the peers' alike)."""
    if quick:
        return {
            "mlp": nc.FineTune(epochs=1, lr=1e-3),
            "resnet": nc.Distill(epochs=1, lr=2e-3),
            "resnet-ft": nc.FineTune(epochs=1, lr=2e-3),
            "vit": nc.FineTune(epochs=1, lr=5e-4),
        }
    return {
        "mlp": nc.FineTune(epochs=8, lr=2e-3),
        "resnet": nc.Distill(epochs=10, lr=2e-3),
        "resnet-ft": nc.FineTune(epochs=10, lr=2e-3),
        "vit": nc.FineTune(epochs=3, lr=5e-4),
    }


def ours(quick: bool) -> list[dict]:
    ft = settings(quick)
    rows = []
    mlp = nc.tasks.get("fmnist-mlp")
    rows.append(run_recipe(FAMILY, mlp, "magnitude-global-90", [nc.MagnitudePrune(sparsity=0.9), ft["mlp"]]))
    gradual = nc.GradualPrune(sparsity=0.9, epochs=ft["mlp"].epochs, lr=ft["mlp"].lr, end=0.5, frequency=50)
    rows.append(run_recipe(FAMILY, mlp, "magnitude-global-90-gradual", [gradual]))
    resnet = nc.tasks.get("fmnist-resnet")
    channel = nc.ChannelPrune(macs_reduction=MACS_REDUCTION, scope="global")
    name = f"channel-global-macs{round(100 * MACS_REDUCTION)}"
    rows.append(run_recipe(FAMILY, resnet, name, [channel, ft["resnet"]]))
    rows.append(run_recipe(FAMILY, resnet, f"{name}-finetune", [channel, ft["resnet-ft"]]))
    vit = nc.tasks.get("fmnist-vit")
    rows.append(run_recipe(FAMILY, vit, "2:4", [nc.NMPrune(n=2, m=4), ft["vit"]]))
    rounds = 2 if quick else 8
    lottery = nc.LotteryTicket(
        rounds=rounds, rate=0.2, epochs=1 if quick else 8, lr=2e-3, weight_decay=0.05, rewind_steps=200
    )
    rows.append(run_recipe(FAMILY, mlp, f"lottery-{round(100 * (1 - 0.8**rounds))}", [lottery]))
    return rows


def finetune(model: nn.Module, task: nc.Task, step: nc.FineTune, teacher: nn.Module) -> nn.Module:
    """The same recovery as our rows (distillation from ``teacher`` where ours distils), on a
    model pruned by a peer."""
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    return step.apply(model, nc.StepContext(task=task, teacher=teacher))


def torch_prune_peer(quick: bool) -> dict:
    """torch.nn.utils.prune.global_unstructured (L1, 90%) + the same fine-tune, masks made permanent."""
    ft = settings(quick)["mlp"]
    task = nc.tasks.get("fmnist-mlp")
    baseline = task.baseline()
    t0 = time.perf_counter()
    model = copy.deepcopy(baseline)
    params = [(m, "weight") for m in (model.fc1, model.fc2)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=0.9)
    finetune(model, task, ft, baseline)  # the mask is a forward pre-hook: pruned weights stay zero
    for module, name in params:
        torch_prune.remove(module, name)
    return peer_row(
        task,
        "magnitude-global-90",
        "torch.nn.utils.prune",
        baseline,
        model,
        lambda m, p: torch.save(m.state_dict(), p),  # how a torch user saves it: dense
        {"amount": 0.9, "finetune": ft.settings()},
        time.perf_counter() - t0,
    )


def torch_pruning_peer(quick: bool) -> dict | None:
    """Torch-Pruning's MetaPruner (L1 group magnitude, global ranking), stepped until as many MACs
    go as in our row."""
    try:
        import torch_pruning as tp
    except ImportError:
        print("Torch-Pruning is not installed: no peer row (pip install torch-pruning==1.6.1)")
        return None
    ft = settings(quick)["resnet"]
    task = nc.tasks.get("fmnist-resnet")
    baseline = task.baseline()
    t0 = time.perf_counter()
    model = copy.deepcopy(baseline).eval()
    example = task.single_example()
    dense = count_macs(model, example)
    steps = 200
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=0.9,
        iterative_steps=steps,
        ignored_layers=[model.fc],
        global_pruning=True,
    )
    taken = 0
    while 1 - count_macs(model, example) / dense < MACS_REDUCTION and taken < steps:
        pruner.step()
        taken += 1
    finetune(model, task, ft, baseline)
    return peer_row(
        task,
        f"channel-global-macs{round(100 * MACS_REDUCTION)}",
        "Torch-Pruning",
        baseline,
        model,
        lambda m, p: torch.save(m, p),  # Torch-Pruning's advice: pickle the whole model
        {
            "importance": "GroupMagnitudeImportance(p=1)",
            "global_pruning": True,
            "pruner_steps": taken,
            "finetune": ft.settings(),
            "macs_reduction": round(1 - count_macs(model, example) / dense, 4),
        },
        time.perf_counter() - t0,
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rows = ours(args.quick) + [torch_prune_peer(args.quick)]
    tp_row = torch_pruning_peer(args.quick)
    rows += [tp_row] if tp_row else []
    print_table(rows)
    print(f"wrote {write_results(FAMILY, rows, args.out)}")


if __name__ == "__main__":
    main()
