"""The HTML report opened in real headless Chromium: no console errors, no requests beyond the page
itself, and every expected plot laid out with a non-zero size and its series drawn.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
ended by NUL on file descriptors 3 and 4), so the test needs no port, no websocket library and no
browser download. ``make test`` installs Chromium (Debian package ``chromium``) when it is missing.
Without a browser the test fails, unless ``NNCOMPRESS_ALLOW_NO_BROWSER=1`` says that skipping is
acceptable (a machine that cannot install it); ``NNCOMPRESS_CHROMIUM`` names a binary to use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_task
from test_report_plots import HOSTILE, synthetic_search_files, write_search_files

import nncompress as nc
from nncompress.io.run import write_run
from nncompress.report import render_html

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT = 60.0  # seconds for any one browser answer; a loaded CI machine can be slow to start Chromium
# per plot figure: its laid-out size, the number of <text> elements, and each element with an id that
# has a non-empty box, with the number of point markers (<use>) inside it
MEASURE_JS = """
(() => {
  const out = {title: document.title, plots: {}};
  for (const fig of document.querySelectorAll('figure.plot')) {
    const svg = fig.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    const drawn = {};
    for (const el of (svg ? svg.querySelectorAll('[id]') : [])) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 || r.height > 0) {
        drawn[el.id] = el.querySelectorAll('use').length;
      }
    }
    out.plots[fig.dataset.plot] = {width: box.width, height: box.height, drawn: drawn,
                                   text: svg ? svg.querySelectorAll('text').length : 0};
  }
  return out;
})()
"""


def chromium_binary() -> str | None:
    """``$NNCOMPRESS_CHROMIUM``, else the first Chromium or Chrome on PATH."""
    named = os.environ.get("NNCOMPRESS_CHROMIUM")
    if named:
        return named
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


class Browser:
    """Headless Chromium spoken to over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's fds 3 and 4 must be the pipe ends; move ours above 10 first so dup2 cannot clash
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_r, from_browser_w)]
        self._log_path = profile.parent / "chromium.log"
        self._log = open(self._log_path, "wb")  # noqa: SIM115 (closed in close())
        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--window-size=1200,900",
            "about:blank",
        ]
        actions = [
            (os.POSIX_SPAWN_DUP2, high[0], 3),
            (os.POSIX_SPAWN_DUP2, high[1], 4),
            (os.POSIX_SPAWN_DUP2, self._log.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, self._log.fileno(), 2),
        ]
        try:
            self.pid = os.posix_spawn(binary, args, dict(os.environ), file_actions=actions, setpgroup=0)
        except OSError:
            self._log.close()
            raise
        finally:
            for fd in (*high, to_browser_r, from_browser_w):
                os.close(fd)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError(f"no answer from Chromium in {TIMEOUT}s; its log ends: {self._log_tail()}")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (crashed?); its log ends: {self._log_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _log_tail(self) -> str:
        return self._log_path.read_text(errors="replace")[-2000:]

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
        """Send a command and return its result; events read meanwhile are kept in ``events``."""
        wanted, deadline = self._send(method, params, session), time.monotonic() + TIMEOUT
        while True:
            message = self._read(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            message = self._read(deadline)
            self.events.append(message)
            if message.get("method") == method and message.get("sessionId") == session:
                return message

    def open(self, url: str) -> tuple[str, list[dict[str, Any]]]:
        """Load ``url`` in a new tab; returns its session id and the events of that tab so far."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return session, [e for e in self.events if e.get("sessionId") == session]

    def evaluate(self, expression: str, session: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):  # it may already be gone
            self.call("Browser.close")
        for _ in range(50):
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.1)
        else:
            os.killpg(self.pid, signal.SIGKILL)  # its own process group: the browser and its helpers only
            os.waitpid(self.pid, 0)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self._log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("NNCOMPRESS_ALLOW_NO_BROWSER") == "1":
            pytest.skip("no Chromium found and NNCOMPRESS_ALLOW_NO_BROWSER=1")
        pytest.fail(
            "no Chromium found: run `make browser` (apt-get install chromium), set NNCOMPRESS_CHROMIUM "
            "to a binary, or set NNCOMPRESS_ALLOW_NO_BROWSER=1 to skip this test"
        )
    b = Browser(binary, tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A real run written by ``write_run``: fc2 factorized by SVD, then pruned, then 4-bit weights."""
    task = make_task(n_train=64)
    recipe = [
        nc.SVDFactorize(rank=0.25, layers=["fc2"]),
        nc.MagnitudePrune(sparsity=0.5),
        nc.WeightQuantize(bits=4, method="minmax"),
    ]
    result = nc.compress(task.baseline(), recipe, task, measure_config=nc.MeasureConfig(latency=False))
    out = tmp_path_factory.mktemp("run")
    write_run(result, out)
    return out


def check_page(browser: Browser, path: Path, expected: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Open ``path``; assert no errors, no other requests, and each expected plot drawn."""
    session, events = browser.open(path.as_uri())
    errors = [
        e["params"]
        for e in events
        if e["method"] == "Runtime.exceptionThrown"
        or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
        or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == [], f"console errors in {path.name}: {errors}"
    requested = {e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"}
    assert requested == {path.as_uri()}, f"the page loaded more than itself: {requested}"
    page = browser.evaluate(MEASURE_JS, session)
    assert set(page["plots"]) == set(expected), page["plots"].keys()
    for name, series in expected.items():
        plot = page["plots"][name]
        assert plot["width"] > 300 and plot["height"] > 100, (name, plot["width"], plot["height"])
        assert plot["text"] > 3, f"{name}: axis labels missing"
        for gid, markers in series.items():
            assert gid in plot["drawn"], f"{name}: series {gid} not drawn (drawn: {sorted(plot['drawn'])[:20]})"
            assert plot["drawn"][gid] >= markers, (name, gid, plot["drawn"][gid], markers)
    return page


def test_report_of_a_real_run_renders_in_chromium(browser, small_run):
    assert (small_run / "report.html").is_file()  # write_run draws it next to report.json
    page = check_page(
        browser,
        small_run / "report.html",
        {
            "steps": {"steps-metric": 4, "steps-size": 4, "steps-saved": 1},  # baseline + 3 steps
            "sparsity": {"sparsity-before-0": 0, "sparsity-after-0": 0},
            "bits": {"bits-bar-0": 0},
            "ranks": {"ranks-bar-0": 0},  # fc2 -> fc2.0, fc2.1
        },
    )
    assert page["title"] == "nncompress report: synthetic"


def test_search_report_with_hostile_strings_renders_in_chromium(browser, small_run, tmp_path):
    for name in ("report.json", "model.ncz"):
        shutil.copy(small_run / name, tmp_path / name)
    report = json.loads((tmp_path / "report.json").read_text())
    report["task"] = HOSTILE  # an unescaped <img src=x> would request x and fail; a <script> would log
    report["steps"][0]["notes"].append(HOSTILE)
    (tmp_path / "report.json").write_text(json.dumps(report))
    write_search_files(tmp_path, *synthetic_search_files())
    page = check_page(
        browser,
        render_html(tmp_path),
        {
            "steps": {"steps-metric": 4},
            "sparsity": {"sparsity-after-0": 0},
            "bits": {"bits-bar-0": 0},
            "ranks": {"ranks-bar-0": 0},
            "sensitivity": {f"sensitivity-curve-{i}": 3 for i in range(4)} | {"sensitivity-baseline-0": 0},
            "pareto": {
                "pareto-meets": 8,
                "pareto-misses": 2,
                "pareto-front": 4,
                "pareto-chosen": 1,
                "pareto-budget": 0,
            },
        },
    )
    assert page["title"] == f"nncompress report: {HOSTILE}"  # shown as text, not run as markup
