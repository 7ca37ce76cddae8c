"""Re-time saved artifacts against their task's baseline: many alternating rounds, both thread counts.

A benchmark row's speed-up comes from one timing; on a shared machine that can be off by 10%.
This script repeats it for each artifact given and writes benchmarks/results/latency-check.json.

Usage: python benchmarks/latency_check.py TASK=ARTIFACT [TASK=ARTIFACT ...] [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from _common import RESULTS, write_results

import nncompress as nc
from nncompress.measure.latency import interleaved_latency


def check(task_name: str, artifact: str, rounds: int, repeats: int) -> dict:
    """Median batch-1 and batch-64 latency of baseline and artifact, per thread count, ``repeats`` times."""
    task = nc.tasks.get(task_name)
    models = [task.baseline().eval(), nc.load(artifact).eval()]
    one = task.single_example()
    out: dict = {"task": task_name, "artifact": artifact, "rounds": rounds, "timings": []}
    previous = torch.get_num_threads()
    try:
        for threads in sorted({1, previous}):
            torch.set_num_threads(threads)
            for batch in (1, 64):
                for _ in range(repeats):
                    stats = interleaved_latency(
                        models,
                        one.repeat(batch, *[1] * (one.dim() - 1)),
                        batch_size=batch,
                        rounds=rounds,
                        runs=10 * rounds,
                        min_seconds=2.0,
                    )
                    out["timings"].append(
                        {
                            "threads": threads,
                            "batch_size": batch,
                            "baseline_ms": stats[0].median_ms,
                            "artifact_ms": stats[1].median_ms,
                            "speedup": stats[0].median_ms / stats[1].median_ms,
                        }
                    )
    finally:
        torch.set_num_threads(previous)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="TASK=ARTIFACT")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "latency-check.json"))
    args = parser.parse_args()
    rows = []
    for pair in args.pairs:
        task_name, _, artifact = pair.partition("=")
        if not artifact or not Path(artifact).is_file():
            sys.exit(f"latency_check: give TASK=ARTIFACT with an existing artifact file, got {pair!r}")
        row = check(task_name, artifact, args.rounds, args.repeats)
        rows.append(row)
        for threads in sorted({t["threads"] for t in row["timings"]}):
            for batch in (1, 64):
                ups = [t["speedup"] for t in row["timings"] if t["threads"] == threads and t["batch_size"] == batch]
                print(
                    f"{task_name} {Path(artifact).name} threads={threads} batch={batch}: speed-up "
                    f"median {statistics.median(ups):.2f}x (runs: {', '.join(f'{u:.2f}' for u in ups)})"
                )
    print(f"wrote {write_results('latency-check', rows, args.out)}")


if __name__ == "__main__":
    main()
