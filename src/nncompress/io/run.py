"""Writing a compression run's outputs: DIR/model.ncz, DIR/report.json and DIR/report.html, never over a
user's files, and all at once: the run is written into a temporary sibling folder and renamed into
place, so a reader (or an interrupted run) never leaves a new model beside an old report."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from nncompress.core.compress import Result
from nncompress.io.artifact import save
from nncompress.io.atomic import atomic_write_text
from nncompress.report import render_html
from nncompress.report.html import HTML_NAME

ARTIFACT_NAME, REPORT_NAME = "model.ncz", "report.json"
RUN_FILES = (ARTIFACT_NAME, REPORT_NAME, HTML_NAME)  # what write_run writes


def check_writable_path(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an empty path, one under a file (``afile/sub``) and one whose folder cannot be written,
    before any slow work."""
    if not str(path).strip():
        raise ValueError(f"{flag} must be a path, got an empty string")
    out = Path(path)
    ancestors = [p for p in reversed(out.parents) if str(p) != ""]
    existing = Path(".")
    for p in ancestors:  # from the root down: the deepest existing ancestor must be a folder
        if not p.exists():
            break
        if not p.is_dir():
            raise NotADirectoryError(f"{flag} {out}: {p} is a file, not a folder")
        existing = p
    try:  # os.access says yes to root on read-only mounts: try to create something there
        os.rmdir(tempfile.mkdtemp(prefix=".nncompress-probe-", dir=existing))
    except OSError as e:
        raise PermissionError(f"{flag} {out}: cannot write in {existing} ({e.strerror or e})") from e
    return out


def check_out_dir(out_dir: str | os.PathLike, *, overwrite: bool) -> Path:
    """Refuse an output folder that is unusable or already holds a run's files unless ``overwrite``."""
    out = check_writable_path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder; give a folder path")
    existing = [n for n in RUN_FILES if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; choose another --out or pass --overwrite")
    return out


def _carry(src: Path, dst: Path) -> None:
    """Put ``src``'s entries (other than the run's files) into ``dst``: hard links where possible, so
    the originals stay where they are until the swap."""
    for entry in src.iterdir():
        if entry.name in RUN_FILES:
            continue
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True)
        else:
            try:
                os.link(entry, target, follow_symlinks=False)
            except OSError:
                shutil.copy2(entry, target, follow_symlinks=False)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` folder to ``out`` (replacing the old folder as a whole)."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_run(result: Result, out_dir: str | os.PathLike, *, overwrite: bool = True) -> tuple[Path, Path]:
    """Save the artifact (with the recipe, seed and versions inside), the report and ``report.html``
    drawn from it (see ``nncompress.report``) into a temporary sibling of ``out_dir``, then rename it
    into place. Other files already in ``out_dir`` are kept; with ``overwrite=False`` the run's own
    files there are refused (the CLI checks that before any work, with ``check_out_dir``).

    The final report's ``size_bytes`` is the saved file's real size.
    """
    out = check_out_dir(out_dir, overwrite=overwrite)
    if out.is_symlink():  # swap the folder the link points to, and keep the link
        out = Path(os.path.realpath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        report = result.report
        artifact = save(
            result.model,
            tmp / ARTIFACT_NAME,
            metadata={"task": report.task, "recipe": report.recipe, "seed": report.seed, "versions": report.versions},
        )
        report.final.size_bytes = os.path.getsize(artifact)
        atomic_write_text(tmp / REPORT_NAME, json.dumps(report.to_dict(), indent=2) + "\n")
        render_html(tmp)
        if out.exists():
            _carry(out, tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return out / ARTIFACT_NAME, out / REPORT_NAME


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
