"""nncompress side by side with peer tools: prints a table, writes benchmarks/results/peers.json and .md.

For each (task, technique) group (see ``_groups.py``), our method and each installed peer's run at
matched settings from the same fp32 baseline; every model of the group is then measured the same
way (test metric, MACs, its tool's own saved file) and timed in one interleaved run beside the
fp32 eager model. Each group's winner on its headline figure is marked (see ``_table.py``).

Usage: python benchmarks/peers/run.py [--quick] [--only TECHNIQUE[,TASK:TECHNIQUE...]] [--out PATH]
(``make peers`` installs the pinned peers; missing ones are skipped and listed. ``--quick`` uses
1,000 test images, a few training steps and short timings: a smoke test, not a result. ``--only``
reruns those groups and keeps the other rows of the saved JSON.)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # _tools & co, and benchmarks/_common & co

import torch  # noqa: E402
from _common import RESULTS, contract_fields, print_table, write_results  # noqa: E402
from _groups import Budget, Group, groups  # noqa: E402
from _table import PEERS_NOTE, group_key, mark_winners, peers_markdown  # noqa: E402
from _tools import Candidate, Missing  # noqa: E402

import nncompress as nc  # noqa: E402
from nncompress.io.atomic import atomic_write_text  # noqa: E402
from nncompress.measure.report import add_latency  # noqa: E402

FAMILY = "peers"
QUICK_TEST_IMAGES = 1000
TIMING = nc.MeasureConfig(runs=30, rounds=4, warmup=2, min_seconds=1.0)
QUICK_TIMING = nc.MeasureConfig(runs=4, rounds=1, warmup=1, min_seconds=0.02)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: small test slice, tiny budgets")
    parser.add_argument("--only", default="", help="comma-separated techniques or task:technique pairs to rerun")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/peers.json)")
    return parser.parse_args(argv)


def select(all_groups: list[Group], only: str, quick: bool) -> list[Group]:
    """The groups ``--only`` names (else all, or the quick ones); ValueError naming an unknown one."""
    wanted = [w for w in only.split(",") if w]
    known = {g.technique for g in all_groups} | {f"{g.task}:{g.technique}" for g in all_groups}
    if bad := [w for w in wanted if w not in known]:
        raise ValueError(f"--only: unknown group(s) {', '.join(bad)}; accepted: {', '.join(sorted(known))}")
    return [
        g
        for g in all_groups
        if g.technique in wanted or f"{g.task}:{g.technique}" in wanted or not wanted and (g.quick or not quick)
    ]


class Runner:
    """Builds and measures groups, caching each task and its baseline's untimed report."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.budget = Budget.quick() if quick else Budget()
        self.timing = QUICK_TIMING if quick else TIMING
        self.skipped: list[str] = []
        self._tasks: dict[str, tuple[nc.Task, nc.Report]] = {}

    def task(self, name: str) -> tuple[nc.Task, nc.Report]:
        if name not in self._tasks:
            task = nc.tasks.get(name)
            if self.quick:
                task = dataclasses.replace(task, test=task.test.subset(QUICK_TEST_IMAGES))
            report = nc.measure(task.baseline().eval(), task, config=self._untimed, size_bytes=0)
            self._tasks[name] = task, report
        return self._tasks[name]

    @property
    def _untimed(self) -> nc.MeasureConfig:
        return dataclasses.replace(self.timing, latency=False)

    def build(self, group: Group, task: nc.Task, baseline: torch.nn.Module) -> list[Candidate]:
        """Every tool's model of ``group``; a peer that is missing or fails is listed as skipped
        (ours failing is a bug and raises)."""
        done: list[Candidate] = []
        for i, build in enumerate(group.builders):
            t0 = time.perf_counter()
            try:
                done.append(build(task, copy.deepcopy(baseline), done))
                print(f"  built {done[-1].tool} {done[-1].method} in {time.perf_counter() - t0:.0f} s", flush=True)
            except Exception as e:
                if i == 0:
                    raise
                reason = str(e) if isinstance(e, Missing) else f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                self.skipped.append(f"{group.task} {group.technique}: peer {i} skipped: {reason}")
                print(self.skipped[-1], file=sys.stderr)
                if not isinstance(e, Missing):
                    traceback.print_exc(limit=3)
        return done

    def run(self, group: Group) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        task, base_report = self.task(group.task)
        baseline = task.baseline().eval()
        candidates = self.build(group, task, baseline)
        t1 = time.perf_counter()
        reports = [copy.deepcopy(base_report)] + [
            nc.measure(c.model, task, config=self._untimed, size_bytes=c.size_bytes) for c in candidates
        ]
        t2 = time.perf_counter()
        add_latency(reports, [baseline] + [c.model for c in candidates], task, self.timing)
        print(f"  measured in {t2 - t1:.0f} s, timed in {time.perf_counter() - t2:.0f} s", flush=True)
        rows = [self._row(group, c, reports[0], r) for c, r in zip(candidates, reports[1:])]
        print(f"{group.task} {group.technique}: {len(rows)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
        return rows

    def _row(self, group: Group, c: Candidate, base: nc.Report, report: nc.Report) -> dict[str, Any]:
        baseline = contract_fields(base) | {"size_bytes": c.baseline_size_bytes}
        result = contract_fields(report) | {"compress_seconds": round(c.seconds, 2)}
        if c.artifact:
            result["artifact"] = c.artifact
        settings = {**c.settings, "matched": group.matched, "notes": c.notes}
        if self.quick:
            settings["quick"] = f"test metric on the first {QUICK_TEST_IMAGES} test images only"
        return {
            "task": group.task,
            "technique": group.technique,
            "headline": group.headline,
            "tool": c.tool,
            "method": c.method,
            "settings": settings,
            "baseline": baseline,
            "result": result,
        }


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]], order: list[Group]) -> list[dict[str, Any]]:
    """``old`` rows with the groups in ``new`` replaced, in the groups' order."""
    fresh = {group_key(r) for r in new}
    rows = [r for r in old if group_key(r) not in fresh] + new
    rank = {(g.task, g.technique): i for i, g in enumerate(order)}
    return sorted(rows, key=lambda r: rank.get(group_key(r), len(rank)))


def markdown(rows: list[dict[str, Any]], skipped: list[str], quick: bool) -> str:
    lines = [
        "# nncompress and peer tools, side by side",
        "",
        "Generated by `python benchmarks/peers/run.py"
        + (" --quick`" if quick else "`")
        + f" (torch {torch.__version__}, {torch.get_num_threads()} threads); do not edit.",
        "",
        peers_markdown(rows),
        "",
        PEERS_NOTE,
    ]
    if skipped:
        lines += ["", "Not run in this pass:", *[f"- {s}" for s in skipped]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    runner = Runner(args.quick)
    all_groups = groups(runner.budget)
    try:
        chosen = select(all_groups, args.only, args.quick)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    torch.manual_seed(0)
    path = Path(args.out) if args.out else RESULTS / f"{FAMILY}.json"
    old = json.loads(path.read_text()) if args.only and path.exists() else []
    rows: list[dict[str, Any]] = []
    for i, group in enumerate(chosen):
        rows = merge(rows, runner.run(group), all_groups)
        pending = [f"{g.task} {g.technique}: not measured yet (the run was still going)" for g in chosen[i + 1 :]]
        save(merge(old, rows, all_groups), path, runner.skipped + pending, args.quick)  # a long run's partial results
    print_table(rows)
    print(f"wrote {path} and {path.with_suffix('.md')}")


def save(rows: list[dict[str, Any]], path: Path, skipped: list[str], quick: bool) -> None:
    """Mark each group's winner; write the JSON rows and the markdown table beside them."""
    mark_winners(rows)
    write_results(FAMILY, rows, str(path))
    atomic_write_text(path.with_suffix(".md"), markdown(rows, skipped, quick))


if __name__ == "__main__":
    main()
