"""The ``nncompress`` command: thin wrappers over the Python API.

User errors (bad paths, names, settings, corrupt artifacts, models that do not run, and bad
command lines) print one line ``nncompress: error: ...`` naming what was wrong and what is accepted,
and exit with code 2.

Loading an artifact runs no code from it: classes outside nncompress and ``torch.nn`` load only from
modules named with ``--trust MODULE`` (and from the file of a ``path/file.py:factory`` task).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from nncompress.cli import commands, generate

USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    TypeError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
)
SEED_MAX = 2**32 - 1  # numpy's and torch's generators both take it


class UsageError(Exception):
    """A command line argparse cannot parse (reported in one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors raise ``UsageError`` (one line) instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def seed_arg(text: str) -> int:
    """``--seed``: an integer in [0, 2**32 - 1], refused before any work."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer in [0, {SEED_MAX}], got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"--seed must be an integer in [0, {SEED_MAX}], got {text}")
    return value


TRUST_HELP = (
    "also load classes and functions of MODULE (and its submodules) from the artifact, e.g. "
    "transformers, timm or your package; repeatable. Loading never runs other code from the file, "
    "but a trusted module's classes run when rebuilt: trust only packages you would import anyway"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nncompress",
        description="Compress trained PyTorch models and report what each step cost and gained.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    def trust_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--trust", action="append", default=[], metavar="MODULE", help=TRUST_HELP)

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            default=None,
            help="folder with the Fashion-MNIST IDX files (default: $NNCOMPRESS_FMNIST_DIR "
            "or /usr/share/datasets/fashion-mnist)",
        )

    def task_arg(p: argparse.ArgumentParser, required: bool = True, default: str | None = None) -> None:
        p.add_argument(
            "--task",
            required=required,
            default=default,
            help="reference task name (see `nncompress zoo list`) or path/to/file.py:factory",
        )
        data_dir(p)

    def latency_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-latency", action="store_true", help="skip latency timing (faster)")
        p.add_argument("--batch-size", type=int, default=64, help="larger batch for batch-N latency")

    def run_args(p: argparse.ArgumentParser) -> None:
        """Options of the commands that run a recipe: --overwrite, --seed, --json and latency."""
        p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --out")
        p.add_argument("--seed", type=seed_arg, default=0, help=f"random seed, 0 to {SEED_MAX} (default 0)")
        p.add_argument("--json", action="store_true", help="print report.json instead of the table")
        latency_args(p)

    p = add(
        "demo",
        commands.demo,
        "Compress a reference model with the default recipe and "
        "print a before/after table (writes report.json and model.ncz).",
    )
    task_arg(p, required=False, default="fmnist-mlp")
    p.add_argument("--recipe", default="prune-finetune", help="recipe file or shipped recipe name")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    run_args(p)

    p = add(
        "compress",
        commands.compress,
        "Run a recipe on a task's baseline model; write DIR/model.ncz and DIR/report.json.",
    )
    task_arg(p)
    p.add_argument("--recipe", required=True, help="recipe file (.toml/.json) or shipped recipe name")
    p.add_argument("--out", required=True, help="output folder")
    run_args(p)

    p = add(
        "evaluate",
        commands.evaluate,
        "Measure a saved artifact on a task and print the report as JSON.",
    )
    p.add_argument("artifact", help="a .ncz file written by nncompress (loading runs no code from it)")
    task_arg(p)
    trust_arg(p)
    p.add_argument("--json", action="store_true", help="(default) print JSON")
    latency_args(p)

    p = add(
        "measure",
        commands.measure_cmd,
        "Measure a task's baseline model (or an artifact) and print a table.",
    )
    p.add_argument("artifact", nargs="?", default=None, help="optional .ncz file; default: the baseline")
    task_arg(p)
    trust_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    latency_args(p)

    p = add("zoo", commands.zoo_list, "Reference models: `zoo list`, `zoo train NAME`.")
    zoo = p.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    pl = zoo.add_parser("list", help="list reference models with their measured baseline metric")
    pl.add_argument("--json", action="store_true", help="print JSON")
    pl.set_defaults(func=commands.zoo_list)
    pt = zoo.add_parser("train", help="train a reference model from its fixed seed and cache it")
    pt.add_argument("name", help="reference model name (see `zoo list`)")
    pt.add_argument("--out-dir", default=None, help="where to write the checkpoint (default: the cache)")
    pt.add_argument("--json", action="store_true", help="print JSON")
    data_dir(pt)
    pt.set_defaults(func=commands.zoo_train)

    p = add("steps", commands.steps, "List the registered compression steps and their settings.")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "report",
        commands.report,
        "Print the before/after table of a run folder's report.json and (re)write DIR/report.html.",
    )
    p.add_argument("dir", help="a folder written by `compress`, `demo` or `search`")
    trust_arg(p)  # report.json and report.html need no model; accepted so scripts can pass it everywhere

    p = add(
        "export",
        commands.export,
        "Export an artifact to a runtime keeping its compression (--to onnx: int8 as QDQ, 4-bit Linears as "
        "MatMulNBits; openvino: int8 kernels and u4/u8 weights; executorch: XNNPACK int8; litert; gguf for LLMs) "
        "and check it there: test metric, max output error, size, latency beside ours and the runtime's fp32.",
    )
    p.add_argument("artifact", help="a .ncz file written by nncompress (loading runs no code from it)")
    task_arg(p)
    trust_arg(p)
    p.add_argument(
        "--to",
        default="onnx",
        choices=["onnx", "executorch", "litert", "openvino", "gguf"],
        help="target runtime (default onnx); each needs its extra: pip install 'nncompress[openvino]'",
    )
    p.add_argument("--out", required=True, help="the file to write (.onnx, .xml, .pte, .tflite, .gguf)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset for traced graphs, 13-20 (default 17)")
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the export on the test split and time it beside ours and the runtime's fp32 export "
        "(default: on, except for a plain --to onnx export)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="larger batch timed besides batch 1 (0: no timing)")
    p.add_argument("--max-batches", type=int, default=None, help="test batches evaluated (default: all)")
    p.add_argument("--no-fp32", action="store_true", help="skip the runtime's own fp32 export of the baseline")
    p.add_argument(
        "--report",
        default=None,
        help="report.json to add the result to as export.<target> (default: the one beside ARTIFACT, if any)",
    )
    p.add_argument("--json", action="store_true", help="print the export result as JSON")

    p = add(
        "search",
        commands.search,
        "Search per-layer pruning / quantization / low-rank settings with the best objective "
        "within a budget (val split); confirm on test; write DIR/model.ncz, report.json, search.json.",
    )
    task_arg(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--max-drop",
        type=float,
        default=None,
        help="largest metric drop allowed, in the metric's units (0.01 = 1 point of accuracy)",
    )
    p.add_argument("--max-bytes", type=int, default=None, help="largest artifact size in bytes")
    p.add_argument("--max-macs", type=int, default=None, help="most MACs per sample")
    p.add_argument("--max-latency-ms", type=float, default=None, help="slowest batch-1 median latency (ms)")
    p.add_argument("--objective", default="size", help="size (default), macs, latency or metric")
    p.add_argument("--trials", type=int, default=32, help="candidates built and measured (default 32)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--resume", action="store_true", help="continue DIR/trials.jsonl, skipping finished trials")
    p.add_argument("--seed", type=seed_arg, default=0, help=f"random seed, 0 to {SEED_MAX} (default 0)")
    p.add_argument(
        "--ray-address",
        default=None,
        help="run trials on this Ray cluster ('auto', ray://host:port, or 'local'); needs nncompress[ray]",
    )
    p.add_argument(
        "--techniques",
        default="lowrank,prune,quantize",
        help="comma-separated techniques to search: lowrank, prune, quantize (default: all)",
    )
    p.add_argument("--json", action="store_true", help="print search.json instead of the summary")
    latency_args(p)
    generate.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"nncompress: error: {e}", file=sys.stderr)
        return 2
    from nncompress.io.artifact import ArtifactError
    from nncompress.measure.metric import ModelCallError

    try:
        out = args.func(args)
    except (ArtifactError, ModelCallError, *USER_ERRORS) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and not str(e).startswith("no "):
            message = f"{e.strerror}: {e.filename}"
        print(f"nncompress: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nncompress: interrupted", file=sys.stderr)
        return 130
    if out is not None:
        print(out if isinstance(out, str) else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
