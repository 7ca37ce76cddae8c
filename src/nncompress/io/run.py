"""Writing a compression run's outputs: DIR/model.ncz and DIR/report.json, atomically, never over a user's files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nncompress.core.compress import Result
from nncompress.io.artifact import save
from nncompress.io.atomic import atomic_write_text
from nncompress.measure.energy import estimate_energy
from nncompress.report import render_html

ARTIFACT_NAME, REPORT_NAME = "model.ncz", "report.json"


def check_out_dir(out_dir: str | os.PathLike, *, overwrite: bool) -> Path:
    """Refuse an output folder that already holds a run's files unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder; give a folder path")
    existing = [n for n in (ARTIFACT_NAME, REPORT_NAME) if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)}; choose another --out or pass --overwrite"
        )
    return out


def write_run(result: Result, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Save the artifact (with the recipe, seed and versions inside), then the report, then
    ``report.html`` drawn from it (see ``nncompress.report``).

    The final report's ``size_bytes`` is the saved file's real size.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = result.report
    artifact = save(
        result.model,
        out / ARTIFACT_NAME,
        metadata={
            "task": report.task,
            "recipe": report.recipe,
            "seed": report.seed,
            "versions": report.versions,
        },
    )
    report.final.size_bytes = os.path.getsize(artifact)
    report.final.energy = estimate_energy(report.final.macs, report.final.size_bytes).to_dict()
    report_path = out / REPORT_NAME
    atomic_write_text(report_path, json.dumps(report.to_dict(), indent=2) + "\n")
    render_html(out)
    return artifact, report_path
