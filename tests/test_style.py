"""The tree stays formatted and lint-clean: `ruff format --check` and `ruff check` over src, tests, benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("src", "tests", "benchmarks")


def _ruff() -> str:
    beside = Path(sys.executable).with_name("ruff")  # the venv's ruff (a dev dependency)
    found = str(beside) if beside.is_file() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return found


@pytest.mark.parametrize("command", [("format", "--check"), ("check",)], ids=["format", "lint"])
def test_ruff_is_clean(command):
    result = subprocess.run([_ruff(), *command, *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"ruff {' '.join(command)} found problems:\n{result.stdout[-3000:]}{result.stderr[-1000:]}"
    )
