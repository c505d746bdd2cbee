"""Capturing twisted.logger events during a test, and waiting for a given line to be logged.

Tests wait on log lines instead of sleeping: "agent gpu online" means the relay registered
the agent, "link to agent gpu ... is up" means the client's link is open, and so on.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

#: Seconds a wait for a log line may take before the test fails with the lines seen so far.
WAIT_TIMEOUT = 30.0

#: Where each part logs from (the start of each event's namespace).
RELAY = "nbbridge.relay"
AGENT = "nbbridge.agent"
#: the client daemon, and the tunnel-client API it runs its link with
CLIENT = ("nbbridge.client", "nbbridge.tunnel")
MUX = "nbbridge.mux"
CRYPTO = "nbbridge.crypto"


class LogLineMissing(AssertionError):
    """A log line a test waited for did not come."""


def text_of(event: LogEvent) -> str:
    """The event's message as a person reads it."""
    return formatEvent(event)


def matches(
    event: LogEvent, text: str | tuple[str, ...], namespace: str | tuple[str, ...] | None
) -> bool:
    """Whether EVENT's message contains TEXT (or one of several), and it was logged under
    NAMESPACE (a prefix, or one of several)."""
    if namespace is not None and not str(event.get("log_namespace", "")).startswith(namespace):
        return False
    message = text_of(event)
    return any(t in message for t in ((text,) if isinstance(text, str) else text))


class LogCapture:
    """Every event logged while installed, in order; ``wait_for`` fires on a matching one."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self._waiters: list[tuple[Callable[[LogEvent], bool], Deferred[LogEvent]]] = []

    @classmethod
    def install(cls, test: TestCase) -> LogCapture:
        """Observe the global log publisher for the duration of TEST."""
        capture = cls()
        globalLogPublisher.addObserver(capture)
        test.addCleanup(globalLogPublisher.removeObserver, capture)
        return capture

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(event):
                self._waiters.remove(waiter)
                # A later turn: the test must not resume inside the code that is logging.
                reactor.callLater(0, d.callback, event)  # type: ignore[attr-defined]

    def mark(self) -> int:
        """A position in the log; pass it as ``since`` to look only at what comes after."""
        return len(self.events)

    def lines(
        self,
        text: str | tuple[str, ...] = "",
        namespace: str | tuple[str, ...] | None = None,
        since: int = 0,
    ) -> list[str]:
        """Messages logged since SINCE under NAMESPACE that contain TEXT."""
        return [text_of(e) for e in self.events[since:] if matches(e, text, namespace)]

    def wait_for(
        self,
        text: str | tuple[str, ...],
        namespace: str | tuple[str, ...] | None = None,
        since: int | None = None,
        timeout: float = WAIT_TIMEOUT,
    ) -> Deferred[LogEvent]:
        """Fires with the first event since SINCE (default: from now on) matching TEXT
        (a tuple: any of its strings).

        A wait that is not satisfied within TIMEOUT seconds fails the test with the lines seen,
        rather than hanging until trial's own timeout.
        """
        start = self.mark() if since is None else since
        d: Deferred[LogEvent] = Deferred()
        for event in self.events[start:]:
            if matches(event, text, namespace):
                reactor.callLater(0, d.callback, event)  # type: ignore[attr-defined]
                return d
        waiter = (lambda e: matches(e, text, namespace), d)
        self._waiters.append(waiter)

        def gave_up(failure: object) -> object:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(getattr(failure, "value", None), TimeoutError | CancelledError):
                seen = "\n  ".join(self.lines(since=start)[-40:])
                where = f" from {namespace}" if namespace else ""
                raise LogLineMissing(
                    f"no log line containing {text!r}{where} within {timeout:g} s; "
                    f"logged since:\n  {seen}"
                )
            return failure

        d.addTimeout(timeout, reactor)
        d.addErrback(gave_up)
        return d
