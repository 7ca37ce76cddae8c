"""Pruning benchmark on the reference tasks: prints a table, writes benchmarks/results/pruning.json.

Rows (method names are stable; see shared DESIGN.md):
- fmnist-mlp  magnitude-global-90: global unstructured 90% + fine-tune
- fmnist-resnet channel-50: structured channel pruning (half the channels of every group) + fine-tune
- fmnist-vit  2:4: 2:4 on every eligible Linear + fine-tune
- fmnist-mlp  lottery-80: iterative magnitude pruning with rewinding, 7 rounds of 20%
- peer: torch.nn.utils.prune global L1 90% + the same fine-tune (masks only: its artifact stays dense)

Usage: python benchmarks/pruning.py [--quick]
"""

from __future__ import annotations

import copy
import os
import tempfile

import torch
import torch.nn.utils.prune as torch_prune
from _common import contract_fields, parse_args, print_table, run_recipe, write_results

import nncompress as nc

FAMILY = "pruning"


def ours(quick: bool) -> list[dict]:
    ft = nc.FineTune(epochs=1 if quick else 4, lr=5e-4)
    rows = []
    mlp = nc.tasks.get("fmnist-mlp")
    rows.append(run_recipe(FAMILY, mlp, "magnitude-global-90", [nc.MagnitudePrune(sparsity=0.9), ft]))
    resnet = nc.tasks.get("fmnist-resnet")
    rows.append(run_recipe(FAMILY, resnet, "channel-50", [nc.ChannelPrune(sparsity=0.5), ft]))
    vit = nc.tasks.get("fmnist-vit")
    rows.append(run_recipe(FAMILY, vit, "2:4", [nc.NMPrune(n=2, m=4), ft]))
    rounds = 2 if quick else 8
    lottery = nc.LotteryTicket(rounds=rounds, rate=0.2, epochs=1 if quick else 3, lr=2e-3, rewind_steps=100)
    rows.append(run_recipe(FAMILY, mlp, f"lottery-{round(100 * (1 - 0.8**rounds))}", [lottery]))
    return rows


def torch_prune_peer(quick: bool) -> dict:
    """torch.nn.utils.prune.global_unstructured (L1, 90%) + the same fine-tune, masks made permanent."""
    task = nc.tasks.get("fmnist-mlp")
    model = task.baseline()
    baseline = nc.measure(model, task)
    model = copy.deepcopy(model)
    params = [(m, "weight") for m in (model.fc1, model.fc2)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=0.9)
    nc.train.fit(model, task.train, nc.train.TrainConfig(epochs=1 if quick else 4, lr=5e-4))
    for module, name in params:
        torch_prune.remove(module, name)
    report = nc.measure(model, task)
    with tempfile.TemporaryDirectory() as d:  # how a torch user saves it: a dense state_dict
        path = os.path.join(d, "m.pt")
        torch.save(model.state_dict(), path)
        report.size_bytes = os.path.getsize(path)
    return {"task": task.name, "method": "magnitude-global-90", "tool": "torch.nn.utils.prune",
            "settings": {"amount": 0.9, "finetune_epochs": 1 if quick else 4},
            "baseline": contract_fields(baseline), "result": contract_fields(report)}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rows = ours(args.quick) + [torch_prune_peer(args.quick)]
    print_table(rows)
    print(f"wrote {write_results(FAMILY, rows, args.out)}")


if __name__ == "__main__":
    main()
