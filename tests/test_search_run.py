"""End-to-end search: run folder contract, worker processes, resume after a kill, CLI errors, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import nncompress as nc
from nncompress.cli.main import main
from nncompress.search import Budget, SearchConfig, SearchSpace, search
from nncompress.search.trials import read_trials
from nncompress.search.workers import Evaluator, Setup

TASK_FILE = textwrap.dedent('''
    """A tiny task for search tests; the baseline is trained once and saved beside this file."""
    import os
    import time
    from pathlib import Path

    import torch
    from torch import nn

    import nncompress as nc
    from nncompress.io.atomic import atomic_path
    from nncompress.tasks.batches import TensorBatches

    HERE = Path(__file__).parent
    SLOW = float(os.environ.get("SEARCH_TEST_SLOW", "0"))


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, 2, 1)
            self.conv2 = nn.Conv2d(4, 8, 3, 2, 1)
            self.conv3 = nn.Conv2d(8, 8, 3, 1, 1)
            self.fc1 = nn.Linear(8 * 7 * 7, 32)
            self.fc2 = nn.Linear(32, 4)

        def forward(self, x):
            if SLOW:
                time.sleep(SLOW)
            x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))


    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (n,), generator=g)
        x = torch.randn(n, 1, 28, 28, generator=g)
        for c in range(4):
            r, col = divmod(c, 2)
            x[y == c, :, r * 14:(r + 1) * 14, col * 14:(col + 1) * 14] += 0.3
        return x, y


    def baseline():
        model = Net()
        path = HERE / "base.pt"
        if path.exists():
            model.load_state_dict(torch.load(path))
            return model.eval()
        torch.manual_seed(0)
        model = Net()
        x, y = data(512, 1)
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(4):
            for i in range(0, 512, 64):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
                opt.step()
        with atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)
        return model.eval()


    def factory():
        xtr, ytr = data(512, 1)
        xv, yv = data(128, 2)
        xte, yte = data(256, 3)
        return nc.Task("tiny", train=TensorBatches(xtr, ytr, batch_size=64), val=TensorBatches(xv, yv, batch_size=128),
                       test=TensorBatches(xte, yte, batch_size=128), baseline=baseline)
''')

SPACE = SearchSpace(sparsities=(0.5, 0.9), bits=(8, 4, 2), ranks=(0.5,), method="minmax")
NO_LATENCY = nc.MeasureConfig(latency=False)


@pytest.fixture
def task_spec(tmp_path) -> str:
    path = tmp_path / "tinytask.py"
    path.write_text(TASK_FILE)
    return f"{path}:factory"


def test_search_writes_the_run_folder_with_worker_processes(task_spec, tmp_path):
    out = tmp_path / "run"
    config = SearchConfig(trials=6, workers=2, space=SPACE, measure=NO_LATENCY)
    result = search(task_spec, Budget(max_drop=0.03), out, config=config)
    s = json.loads((out / "search.json").read_text())
    for key in ("task", "budget", "objective", "chosen", "pareto", "test_metric", "baseline_test_metric"):
        assert key in s
    assert s["budget"] == {"max_drop": 0.03, "max_bytes": None, "max_latency_ms": None, "max_macs": None}
    trials = read_trials(out / "trials.jsonl")
    assert sorted(t.trial for t in trials) == list(range(6)) and {t.stage for t in trials} <= {"greedy", "refine"}
    chosen = next(t for t in trials if t.trial == s["chosen"])
    baseline_val = s["baseline_val_metric"]
    assert chosen.meets_budget and baseline_val - chosen.metric <= 0.03
    assert all(chosen.size_bytes <= t.size_bytes for t in trials if t.meets_budget)
    assert set(s["pareto"]) <= {t.trial for t in trials} and chosen.trial in s["pareto"]
    # the chosen model, rebuilt by compress() and saved, is the trial: same val metric, same file bytes
    report = json.loads((out / "report.json").read_text())
    assert s["rebuilt_val_metric"] == chosen.metric
    assert report["final"]["size_bytes"] == chosen.size_bytes == os.path.getsize(out / "model.ncz")
    assert report["final"]["metric"]["value"] == s["test_metric"] == result.test_metric
    assert report["final"]["size_bytes"] < report["baseline"]["size_bytes"]
    sens = json.loads((out / "sensitivity.json").read_text())
    assert sens["split"] == "val" and sens["metric"] == {"name": "accuracy", "higher_is_better": True}
    assert {(c["layer"], c["technique"]) for c in sens["curves"]} >= {("conv2", "quantize"), ("fc1", "lowrank")}
    # trials measured in worker processes equal the same candidates measured here
    ev = Evaluator(Setup(task_spec, SPACE))
    for t in trials[:2]:
        m = ev(t.params)
        assert (m.metric, m.size_bytes, m.macs) == (t.metric, t.size_bytes, t.macs)
    # a rerun reads the sensitivity from the cache: no evaluation at all
    from nncompress.search.sensitivity import analyze

    class NoPool:
        def run(self, jobs):
            raise AssertionError("the cached sensitivity was not used")

    again = analyze(
        NoPool(),
        task_name=ev.task.name,
        metric_name="accuracy",
        higher_is_better=True,
        model=ev.model,
        layers=ev.layers,
        space=SPACE,
    )
    assert again.to_dict() == sens


def _cli(task_spec: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nncompress.cli.main",
        "search",
        "--task",
        task_spec,
        "--max-drop",
        "0.05",
        "--trials",
        "10",
        "--out",
        str(out),
        "--no-latency",
        "--techniques",
        "quantize",
        *extra,
    ]


def test_resume_after_kill_keeps_finished_trials(task_spec, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "SEARCH_TEST_SLOW": "0.03", "NNCOMPRESS_PROGRESS": "0"}
    proc = subprocess.Popen(_cli(task_spec, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "trials.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [line for line in log.read_text().splitlines(keepends=True) if line.endswith("\n")]
    assert 3 <= len(before) < 10 and not (out / "search.json").exists()
    again = subprocess.run(_cli(task_spec, out), env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    done = subprocess.run(_cli(task_spec, out, "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = log.read_text().splitlines(keepends=True)
    assert after[: len(before)] == before  # finished trials kept unchanged, not rerun
    assert sorted(json.loads(line)["trial"] for line in after) == list(range(10))
    s = json.loads((out / "search.json").read_text())
    assert s["trials"] == 10
    # the artifact re-measures to the reported test metric (`nncompress evaluate`)
    ev = subprocess.run(
        [
            sys.executable,
            "-m",
            "nncompress.cli.main",
            "evaluate",
            str(out / "model.ncz"),
            "--task",
            task_spec,
            "--no-latency",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["metric"]["value"] == s["test_metric"]


def test_cli_errors_are_one_line(task_spec, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["search", "--task", task_spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a budget needs at least one limit" in err
    assert main(["search", "--task", task_spec, "--out", str(out), "--max-drop", "0.01", "--objective", "speed"]) == 2
    assert "objective must be one of size, macs, latency, metric; got 'speed'" in capsys.readouterr().err
    assert main(["search", "--task", task_spec, "--out", str(out), "--max-drop", "0.01", "--workers", "0"]) == 2
    assert "workers must be an integer >= 1, got 0" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["search", "--task", task_spec, "--out", str(out), "--max-drop", "0.01", "--ray-address", "auto"]) == 2
    assert "nncompress[ray]" in capsys.readouterr().err
    assert not (out / "trials.jsonl").exists() and not (out / "model.ncz").exists()


def test_ray_local_cluster_gives_the_same_trials(task_spec, tmp_path):
    ray = pytest.importorskip("ray")
    if os.environ.get("NNCOMPRESS_TEST_RAY") != "1":
        pytest.skip("starts a local Ray cluster (slow); set NNCOMPRESS_TEST_RAY=1")
    out = tmp_path / "run"
    config = SearchConfig(trials=3, space=SPACE, ray_address="local", measure=NO_LATENCY)
    try:
        search(task_spec, Budget(max_drop=1.0), out, config=config)  # any trial passes: this test is about the trials
    finally:
        ray.shutdown()
    ev = Evaluator(Setup(task_spec, SPACE))
    for t in read_trials(out / "trials.jsonl"):
        m = ev(t.params)
        assert (m.metric, m.size_bytes, m.macs) == (t.metric, t.size_bytes, t.macs)
