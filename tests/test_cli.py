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

needs_fmnist = pytest.mark.skipif(not fmnist.DEBIAN_DIR.is_dir(), reason="Fashion-MNIST not installed")
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

    code, stdout, err = run(["evaluate", out / "model.ncz", "--task", "fmnist-mlp", "--no-latency"], capsys)
    assert code == 0, err
    measured = json.loads(stdout)
    assert measured["metric"] == report["final"]["metric"]  # exactly, not approximately
    assert measured["size_bytes"] == report["final"]["size_bytes"]
    assert measured["nonzero_params"] == report["final"]["nonzero_params"]

    # refusing to overwrite an earlier run
    code, _, err = run(["compress", "--task", "fmnist-mlp", "--recipe", recipe, "--out", out], capsys)
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
    code, _, err = run(["evaluate", artifact, "--task", f"{file_task}:make", "--no-latency"], capsys)
    assert_one_line_error(code, err, "forward failed", "(8, 6)")


def test_bad_recipe_leaves_no_output(tmp_path, file_task, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\nkind = "magnitude-prune"\nsparsity = 2.0\n')
    out = tmp_path / "out"
    code, _, err = run(["compress", "--task", f"{file_task}:make", "--recipe", recipe, "--out", out], capsys)
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
    code, stdout, err = run(["evaluate", out / "model.ncz", "--task", f"{file_task}:make", "--no-latency"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert json.loads(stdout)["metric"] == report["final"]["metric"]


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "nncompress")
    for argv in ([], ["compress"], ["zoo"], ["evaluate"]):
        proc = subprocess.run([exe, *argv, "--help"], capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and "usage: nncompress" in proc.stdout


# --- hardened inputs (issue 22): each refused in one line, exit 2, before any work --------------


def _compress(tmp_path, capsys, *extra, recipe="prune-finetune", out=None, task="no-such-task"):
    """``compress`` with a task that cannot load: an error about anything else came before the work."""
    argv = ["compress", "--task", task, "--recipe", recipe, "--out", tmp_path / "o" if out is None else out]
    return run([*argv, *extra], capsys)


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("list.json", "[1, 2]", "top level must be a table"),
        ("string.json", '"prune"', "top level must be a table"),
        ("kind.toml", 'steps = [{kind = ["x"]}]\n', "'kind' must be a step name"),
        ("nokind.json", '{"steps": [{}]}', "'kind' must be a step name"),
        ("latin1.toml", b'name = "caf\xe9"\n', "not UTF-8"),
    ],
)
def test_bad_recipe_files_are_refused_naming_the_file(name, text, needle, tmp_path, capsys):
    recipe = tmp_path / name
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, err = _compress(tmp_path, capsys, recipe=recipe)
    assert_one_line_error(code, err, str(recipe), needle)


def test_out_under_a_file_empty_or_unwritable_is_refused_before_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = _compress(tmp_path, capsys, out=afile / "sub")
    assert_one_line_error(code, err, "afile is a file, not a folder")
    code, _, err = _compress(tmp_path, capsys, out="")
    assert_one_line_error(code, err, "--out must be a path")
    code, _, err = _compress(tmp_path, capsys, out="/proc/nncompress-run")  # not writable, even for root
    assert_one_line_error(code, err, "cannot write in /proc")


def test_every_file_of_a_run_needs_overwrite(tmp_path, capsys):
    for name in ("model.ncz", "report.json", "report.html"):
        out = tmp_path / name.replace(".", "-")
        out.mkdir()
        (out / name).write_text("the user's file")
        code, _, err = _compress(tmp_path, capsys, out=out)
        assert_one_line_error(code, err, name, "--overwrite")
        assert (out / name).read_text() == "the user's file"


@pytest.mark.parametrize("seed", [str(2**70), "-1", "1.5", "x"])
def test_out_of_range_seeds_are_refused_in_one_line(seed, tmp_path, capsys):
    code, _, err = _compress(tmp_path, capsys, "--seed", seed)
    assert_one_line_error(code, err, "--seed", "4294967295")


@pytest.mark.parametrize(
    "argv",
    [["compress"], ["nope"], ["evaluate"], ["compress", "--task", "x", "--recipe", "y", "--out", "z", "--bogus"], []],
)
def test_argparse_errors_take_one_line(argv, capsys):
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err)


def test_evaluate_refuses_untrusted_classes_and_trust_loads_them(tmp_path, file_task, capsys):
    import nncompress as nc
    from nncompress.tasks import get

    other = tmp_path / "other.py"  # the model's class lives in a file the command was not given
    other.write_text(textwrap.dedent(TASK_FILE))
    artifact = nc.save(get(f"{other}:make").baseline(), tmp_path / "m.ncz")
    module = "nncompress_user_other_"  # tasks/loading.py names a file task's module after its stem
    code, _, err = run(["evaluate", artifact, "--task", f"{file_task}:make", "--no-latency"], capsys)
    assert_one_line_error(code, err, "m.ncz", module, "--trust")
    trusted = next(m for m in __import__("sys").modules if m.startswith(module))
    code, out, err = run(
        ["evaluate", artifact, "--task", f"{file_task}:make", "--no-latency", "--trust", trusted], capsys
    )
    assert code == 0, err
    assert "metric" in json.loads(out)
    code, _, err = run(["evaluate", artifact, "--task", f"{file_task}:make", "--trust", "os"], capsys)
    assert_one_line_error(code, err, "refusing to trust 'os'")


def test_evaluate_of_a_crafted_artifact_runs_no_code(tmp_path, file_task, capsys):
    import pickle
    import zipfile

    import nncompress as nc
    from nncompress.models import LeNet300100

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    good = nc.save(LeNet300100(), tmp_path / "good.ncz")
    evil = tmp_path / "evil.ncz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w") as zout:
        manifest = json.loads(zin.read("manifest.json"))
        manifest.pop("sha256")
        zout.writestr("manifest.json", json.dumps(manifest))
        zout.writestr("tensors.safetensors", zin.read("tensors.safetensors"))
        zout.writestr("skeleton.pkl", pickle.dumps((Evil(), 0)))
    for command in ("evaluate", "measure"):
        code, _, err = run([command, evil, "--task", f"{file_task}:make", "--no-latency"], capsys)
        assert_one_line_error(code, err, "evil.ncz", "not allowed to load")
    code, _, err = run(["export", evil, "--task", f"{file_task}:make", "--out", tmp_path / "m.onnx"], capsys)
    assert_one_line_error(code, err, "evil.ncz", "not allowed to load")
    assert not marker.exists()


def test_a_run_is_swapped_into_place_whole(tmp_path, monkeypatch):
    """An interrupted write leaves the old run as it was; a finished one keeps the user's other files."""
    from conftest import make_task

    import nncompress as nc
    import nncompress.io.run as run_io
    from nncompress.prune import MagnitudePrune

    task = make_task()
    step = MagnitudePrune(sparsity=0.5)
    result = nc.compress(task.baseline(), [step], task, measure_config=nc.MeasureConfig(latency=False))
    out = tmp_path / "run"
    run_io.write_run(result, out, overwrite=False)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_io, "render_html", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_io.write_run(result, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left behind
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_io.write_run(result, out, overwrite=False)
    run_io.write_run(result, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert nc.load(out / "model.ncz") is not None
