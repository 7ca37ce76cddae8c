"""The README's Python example runs as written (so it never rots)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nncompress.tasks import fmnist

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.skipif(not fmnist.DEBIAN_DIR.is_dir(), reason="Fashion-MNIST not installed")
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert (tmp_path / "mlp.ncz").is_file()
    assert '"nonzero_params"' in capsys.readouterr().out
