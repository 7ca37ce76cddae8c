"""The CLI end to end: demo/compress/evaluate round trip, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_tasks import TASK_FILE

from nncompress.cli.main import main
from nncompress.tasks import fmnist

needs_fmnist = pytest.mark.skipif(
    not fmnist.DEBIAN_DIR.is_dir(), reason="Fashion-MNIST not installed"
)
QUICK_RECIPE = """
[[steps]]
kind = "magnitude-prune"
sparsity = 0.8
[[steps]]
kind = "finetune"
max_steps = 20
"""


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@needs_fmnist
def test_compress_then_evaluate_reproduces_the_report(tmp_path, capsys):
    recipe = tmp_path / "quick.toml"
    recipe.write_text(QUICK_RECIPE)
    out = tmp_path / "run"
    code, stdout, err = run(
        ["compress", "--task", "fmnist-mlp", "--recipe", recipe, "--out", out, "--no-latency"],
        capsys,
    )
    assert code == 0, err
    assert "baseline" in stdout and "compressed" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "fmnist-mlp"
    for side in ("baseline", "final"):
        for key in (
            "metric",
            "params",
            "nonzero_params",
            "size_bytes",
            "dense_fp32_bytes",
            "macs",
            "latency_ms",
            "steps",
        ):
            assert key in report[side]
    assert report["final"]["size_bytes"] == os.path.getsize(out / "model.ncz")
    assert [s["kind"] for s in report["final"]["steps"]] == ["magnitude-prune", "finetune"]
    assert report["baseline"]["metric"]["value"] >= 0.89  # the shipped LeNet-300-100

    code, stdout, err = run(
        ["evaluate", out / "model.ncz", "--task", "fmnist-mlp", "--no-latency"], capsys
    )
    assert code == 0, err
    measured = json.loads(stdout)
    assert measured["metric"] == report["final"]["metric"]  # exactly, not approximately
    assert measured["size_bytes"] == report["final"]["size_bytes"]
    assert measured["nonzero_params"] == report["final"]["nonzero_params"]

    # refusing to overwrite an earlier run
    code, _, err = run(
        ["compress", "--task", "fmnist-mlp", "--recipe", recipe, "--out", out], capsys
    )
    assert code == 2 and "--overwrite" in err

    code, stdout, _ = run(["report", out], capsys)
    assert code == 0 and "size on disk" in stdout
    code, measured_table, err = run(["measure", out / "model.ncz", "--task", "fmnist-mlp", "--no-latency"], capsys)
    assert code == 0 and "non-zero params" in measured_table, err
    # the per-layer table: fc1 and fc2 pruned globally to 80% overall, the classifier fc3 kept dense
    layers = {row["name"]: row for row in report["final"]["layers"]}
    assert set(layers) == {"fc1", "fc2", "fc3"}
    assert layers["fc3"]["weight_sparsity"] == 0.0
    pruned = sum(layers[n]["weight_sparsity"] * layers[n]["shape"][0] * layers[n]["shape"][1] for n in ("fc1", "fc2"))
    total = sum(layers[n]["shape"][0] * layers[n]["shape"][1] for n in ("fc1", "fc2"))
    assert pruned / total == pytest.approx(0.8, abs=1e-3)
    assert "per layer" in stdout and "fc1" in stdout.split("per layer")[1]


@needs_fmnist
def test_zoo_list_shows_measured_metric(capsys):
    code, stdout, _ = run(["zoo", "list", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(stdout)}
    assert code == 0 and set(rows) == {"fmnist-mlp", "fmnist-lenet5", "fmnist-resnet", "fmnist-vit", "stdlib-gpt"}
    assert rows["fmnist-mlp"]["test_accuracy"] >= 0.89
    assert rows["stdlib-gpt"]["metric"] == "perplexity" and rows["stdlib-gpt"]["test_perplexity"] < 6.0


def test_steps_lists_registry(capsys):
    code, stdout, _ = run(["steps", "--json"], capsys)
    kinds = {r["kind"] for r in json.loads(stdout)}
    assert code == 0 and {"magnitude-prune", "finetune"} <= kinds


@pytest.fixture
def file_task(tmp_path):
    path = tmp_path / "mytask.py"
    path.write_text(textwrap.dedent(TASK_FILE))
    return path


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nncompress: error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_artifact(tmp_path, file_task, capsys):
    code, _, err = run(["evaluate", tmp_path / "none.ncz", "--task", f"{file_task}:make"], capsys)
    assert_one_line_error(code, err, "none.ncz")


def test_wrong_task_name(tmp_path, capsys):
    code, _, err = run(
        ["compress", "--task", "mnist-huge", "--recipe", "prune-finetune", "--out", tmp_path / "o"],
        capsys,
    )
    assert_one_line_error(code, err, "mnist-huge", "fmnist-mlp", "file.py:factory")
    assert not (tmp_path / "o").exists()


def test_corrupt_artifact(tmp_path, file_task, capsys):
    bad = tmp_path / "bad.ncz"
    bad.write_bytes(b"not a zip at all")
    code, _, err = run(["evaluate", bad, "--task", f"{file_task}:make"], capsys)
    assert_one_line_error(code, err, "bad.ncz", "not an nncompress artifact")


def test_model_whose_forward_fails(tmp_path, file_task, capsys):
    import nncompress as nc
    from nncompress.models import LeNet5

    artifact = nc.save(LeNet5(), tmp_path / "lenet.ncz")  # expects images, the task gives vectors
    code, _, err = run(
        ["evaluate", artifact, "--task", f"{file_task}:make", "--no-latency"], capsys
    )
    assert_one_line_error(code, err, "forward failed", "(8, 6)")


def test_bad_recipe_leaves_no_output(tmp_path, file_task, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\nkind = "magnitude-prune"\nsparsity = 2.0\n')
    out = tmp_path / "out"
    code, _, err = run(
        ["compress", "--task", f"{file_task}:make", "--recipe", recipe, "--out", out], capsys
    )
    assert_one_line_error(code, err, "sparsity")
    assert not out.exists()


def test_failing_forward_in_compress_leaves_no_output(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text(textwrap.dedent(TASK_FILE).replace("nn.Linear(6, 16)", "nn.Linear(7, 16)"))
    out = tmp_path / "out"
    code, _, err = run(
        [
            "compress",
            "--task",
            f"{path}:make",
            "--recipe",
            "prune-finetune",
            "--out",
            out,
            "--no-latency",
        ],
        capsys,
    )
    assert_one_line_error(code, err, "forward failed")
    assert not out.exists()


def test_file_task_compress_and_evaluate(tmp_path, file_task, capsys):
    out = tmp_path / "run"
    code, _, err = run(
        [
            "compress",
            "--task",
            f"{file_task}:make",
            "--recipe",
            "prune-finetune",
            "--out",
            out,
            "--no-latency",
        ],
        capsys,
    )
    assert code == 0, err
    code, stdout, err = run(
        ["evaluate", out / "model.ncz", "--task", f"{file_task}:make", "--no-latency"], capsys
    )
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert json.loads(stdout)["metric"] == report["final"]["metric"]


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "nncompress")
    for argv in ([], ["compress"], ["zoo"], ["evaluate"]):
        proc = subprocess.run([exe, *argv, "--help"], capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and "usage: nncompress" in proc.stdout
