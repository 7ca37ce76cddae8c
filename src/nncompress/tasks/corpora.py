"""English text that installs offline from Debian packages, as documents split by source file.

Two sources, each a folder of files:

- ``fortunes``: the Debian ``fortunes`` collection, ``/usr/share/games/fortunes/<topic>`` (plain
  text, entries separated by lines holding only ``%``; the ``.dat`` / ``.u8`` index and link files
  and the ASCII-art topic are skipped). Short quotations, jokes and verse: about 2.6 MB.
- ``python-doc``: the Python documentation from Debian's ``python3-doc``, the HTML pages under
  ``/usr/share/doc/python3/html`` reduced to the text of their main body (navigation, code blocks
  and index pages dropped). Technical English prose: about 500 pages.

A document is one source file; :func:`split_of` assigns it to ``calibration``, ``val`` or
``test`` by a hash of ``source/relative path``, so the splits never share a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from nncompress.tasks.text import path_hash

SPLITS = ("calibration", "val", "test")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
PYTHON_DOC_DIR = Path("/usr/share/doc/python3/html")
FORTUNES_SKIP = frozenset({"ascii-art"})  # pictures drawn in characters, not prose
PYTHON_DOC_SKIP = re.compile(r"(^|/)(genindex.*|py-modindex|search|_static|_sources|_images|_downloads)(\.html$|/)")


@dataclass(frozen=True)
class Document:
    """One source file's text: ``key`` is ``source/relative path`` (what the split hashes)."""

    key: str
    text: str


def fortunes_documents(root: str | os.PathLike = FORTUNES_DIR) -> list[Document]:
    """One document per fortunes topic file: its entries, separated by blank lines."""
    root = Path(root)
    docs = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.suffix or path.is_symlink() or not path.is_file() or path.name in FORTUNES_SKIP:
            continue
        raw = path.read_text(encoding="utf-8", errors="replace")
        entries = [e.strip("\n") for e in re.split(r"^%$", raw, flags=re.M)]
        text = "\n\n".join(e for e in entries if e.strip())
        if text:
            docs.append(Document(f"fortunes/{path.name}", text))
    return docs


class _MainText(HTMLParser):
    """The text inside Sphinx's ``<div role="main">``, one line per block element, without ``<pre>``."""

    BLOCKS = frozenset(
        {
            "p",
            "li",
            "dt",
            "dd",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "div",
            "section",
            "tr",
            "table",
            "ul",
            "ol",
            "dl",
            "blockquote",
            "br",
            "caption",
        }
    )
    VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0  # open tags inside the main div (0: outside it)
        self.skip = 0  # open <pre>/<script>/<style> tags
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            if self.depth and tag == "br":
                self.parts.append("\n")
            return
        if self.depth:
            self.depth += 1
            if tag in ("pre", "script", "style"):
                self.skip += 1
            if tag in self.BLOCKS:
                self.parts.append("\n")
        elif tag == "div" and ("role", "main") in attrs:
            self.depth = 1

    def handle_endtag(self, tag: str) -> None:
        if not self.depth or tag in self.VOID:
            return
        self.depth -= 1
        if tag in ("pre", "script", "style"):
            self.skip = max(0, self.skip - 1)
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.depth and not self.skip:
            self.parts.append(re.sub(r"\s+", " ", data))  # source line breaks are not paragraph breaks

    def text(self) -> str:
        lines = (" ".join(line.replace("\u00b6", "").split()) for line in "".join(self.parts).split("\n"))
        return "\n".join(line for line in lines if line)


def html_main_text(html: str) -> str:
    """The prose of a Sphinx HTML page: its main body's text, code blocks and markup removed."""
    parser = _MainText()
    parser.feed(html)
    parser.close()
    return parser.text()


def python_doc_documents(root: str | os.PathLike = PYTHON_DOC_DIR) -> list[Document]:
    """One document per page of the Python documentation (index and search pages skipped)."""
    root = Path(root)
    docs = []
    if not root.is_dir():
        return docs
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            rel = (Path(folder) / name).relative_to(root).as_posix()
            if not name.endswith(".html") or PYTHON_DOC_SKIP.search(rel):
                continue
            text = html_main_text((root / rel).read_text(encoding="utf-8", errors="replace"))
            if text:
                docs.append(Document(f"python-doc/{rel}", text))
    return docs


@dataclass(frozen=True)
class TextSource:
    """A named source of documents, where it installs from, and how to read it."""

    name: str
    root: Path
    package: str  # the Debian package that installs it
    read: Callable[[Path], list[Document]]


SOURCES: dict[str, TextSource] = {
    "fortunes": TextSource("fortunes", FORTUNES_DIR, "fortunes", fortunes_documents),
    "python-doc": TextSource("python-doc", PYTHON_DOC_DIR, "python3-doc", python_doc_documents),
}


def missing_sources(names: tuple[str, ...]) -> list[str]:
    """Install hints for the named sources whose folders are absent (empty when all are there)."""
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown text source(s) {unknown}; accepted: {', '.join(SOURCES)}")
    return [
        f"{n} ({SOURCES[n].root}; apt-get install {SOURCES[n].package})" for n in names if not SOURCES[n].root.is_dir()
    ]


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """``"test"``, ``"val"`` or ``"calibration"`` for a document, by the hash of its key."""
    u = path_hash(key)
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "calibration"


def split_documents(docs: list[Document], val_fraction: float, test_fraction: float) -> dict[str, list[Document]]:
    """Each split's documents, in hash order (the order their text is concatenated)."""
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for d in sorted(docs, key=lambda d: path_hash(d.key)):
        out[split_of(d.key, val_fraction, test_fraction)].append(d)
    return out
