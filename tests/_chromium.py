"""Headless Chromium for page tests (the hub's /stats, the client's status page).

``await chromium(test, "--dump-dom", url)`` runs it with a fresh profile in the test's temp
directory and returns what it printed; it is killed at the end of the test if still running.
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests._cleanup import add_async_cleanup
from tests._tools import unavailable

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
    # Long enough for a page to load and fetch its JSON once or twice; no more.
    "--virtual-time-budget=4000",
]


def chromium_missing(page: str) -> str | None:
    """The skip reason for tests of PAGE when Chromium is missing (None if present)."""
    return unavailable(
        f"chromium not found: apt-get install chromium (Debian) to run the {page} test"
        if CHROMIUM is None
        else None
    )


class Capture(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


async def chromium(test: TestCase, *args: str) -> Capture:
    """Run headless Chromium with ARGS; fails TEST unless it exits 0."""
    assert CHROMIUM is not None
    profile = os.path.abspath(test.mktemp())
    os.makedirs(profile)
    capture = Capture()
    argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    env = {**os.environ, "HOME": profile}
    process = reactor.spawnProcess(capture, CHROMIUM, argv, env=env)
    add_async_cleanup(test, _reap, process, capture)
    code = await capture.ended
    test.assertEqual(code, 0, capture.err.decode("utf-8", "replace")[-2000:])
    return capture


async def _reap(process: object, capture: Capture) -> None:
    if not capture.ended.called:
        process.signalProcess("KILL")  # type: ignore[attr-defined]
        await capture.ended
