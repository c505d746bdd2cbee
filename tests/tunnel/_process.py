"""Child processes for the tests that need a real one: twistd daemons and jupyter-server.

A ``ChildProcess`` is spawned through the reactor (so waiting never blocks), collects its
output, and lets a test wait for a line containing some text. The clean-up stops it with
SIGTERM (SIGKILL if it lingers) and waits until it has been reaped.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

import nbbridge
from tests._cleanup import add_async_cleanup

#: Where the nbbridge package in use lives: the child imports the same code (and plug-ins).
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nbbridge.__file__)))
BIN = os.path.dirname(sys.executable)
#: Seconds to wait for a line before failing with the output so far (never a sleep).
LINE_TIMEOUT = 60.0
#: Seconds a process may take to exit after SIGTERM before it gets SIGKILL.
TERM_GRACE = 20.0


def twistd_command(plugin: str, args: Sequence[str]) -> list[str]:
    """``twistd -n --pidfile= PLUGIN ARGS``, with the venv's twistd."""
    twistd = shutil.which("twistd", path=BIN) or shutil.which("twistd")
    if twistd is None:
        return [sys.executable, "-m", "twisted", "-n", "--pidfile=", plugin, *args]
    return [twistd, "-n", "--pidfile=", plugin, *args]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment, importing nbbridge from SOURCE_ROOT, without an inherited token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBBRIDGE_")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = SOURCE_ROOT + (os.pathsep + path if path else "")
    env.update(extra or {})
    return env


class ChildProcess(ProcessProtocol):
    """A running child; ``wait_for(text)`` fires with the first output line containing TEXT."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self._partial = b""
        self._waiters: list[tuple[re.Pattern[str], Deferred[re.Match[str]]]] = []
        #: fires (with None) once the process has exited and been reaped
        self.ended: Deferred[None] = Deferred()
        self.exit: Failure | None = None

    # -- ProcessProtocol ---------------------------------------------------------------------

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            for waiter in list(self._waiters):
                found = waiter[0].search(line)
                if found:
                    self._waiters.remove(waiter)
                    waiter[1].callback(found)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.exit = reason
        waiters, self._waiters = self._waiters, []
        for pattern, d in waiters:
            d.errback(
                AssertionError(
                    f"{self.name} exited ({reason.getErrorMessage()}) before logging "
                    f"{pattern.pattern!r}:\n{self.tail()}"
                )
            )
        self.ended.callback(None)

    # -- for tests -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.exit is None

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.lines[-n:])

    def wait_for(
        self, pattern: str, since: int = 0, timeout: float = LINE_TIMEOUT
    ) -> Deferred[re.Match[str]]:
        """Fires with the match of regular expression PATTERN in an output line after SINCE."""
        regex = re.compile(pattern)
        for line in self.lines[since:]:
            found = regex.search(line)
            if found:
                d: Deferred[re.Match[str]] = Deferred()
                d.callback(found)
                return d
        if not self.running:
            return Deferred.fromCoroutine(self._exited(regex))
        d = Deferred()
        waiter = (regex, d)
        self._waiters.append(waiter)

        def gave_up(failure: Failure) -> Failure:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if failure.check(TimeoutError):
                raise AssertionError(
                    f"{self.name}: no line matching {pattern!r} within {timeout:g} s:\n"
                    f"{self.tail()}"
                )
            return failure

        d.addTimeout(timeout, reactor)
        d.addErrback(gave_up)
        return d

    async def _exited(self, regex: re.Pattern[str]) -> re.Match[str]:
        raise AssertionError(f"{self.name} has exited; no line matching {regex.pattern!r}")

    def kill(self) -> Deferred[None]:
        """SIGKILL: the process dies at once, without closing anything itself."""
        if self.running and self.transport is not None:
            self.transport.signalProcess("KILL")
        return self.ended

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after TERM_GRACE seconds; returns once it has been reaped."""
        if self.running and self.transport is not None:
            self.transport.signalProcess("TERM")
            late = reactor.callLater(TERM_GRACE, self.kill)  # type: ignore[attr-defined]
            await self.ended
            if late.active():
                late.cancel()
        else:
            await self.ended

    def exited_cleanly(self) -> bool:
        return self.exit is not None and self.exit.check(ProcessDone) is not None

    def killed(self) -> bool:
        return self.exit is not None and self.exit.check(ProcessTerminated) is not None


def spawn(
    test: TestCase,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None = None,
) -> ChildProcess:
    """Start ARGV; the test's clean-up stops it (if still running) and waits until reaped."""
    child = ChildProcess(name)
    reactor.spawnProcess(  # type: ignore[attr-defined]
        child, argv[0], list(argv), env=dict(env), path=cwd, childFDs={0: "w", 1: "r", 2: "r"}
    )
    add_async_cleanup(test, child.stop)
    return child
