"""What can go wrong with a channel or a session, as exceptions an application can catch."""

from __future__ import annotations

from twisted.internet.error import ConnectError

from nbbridge.wire import Reason


class ChannelOpenFailed(ConnectError):
    """The peer refused to open a channel (OPEN_FAIL); ``code`` and ``reason`` say why.

    It is a ConnectError, so code written for endpoints handles it like any failed connect.
    Acceptors raise it (or a subclass) to refuse an open; the opener gets the same subclass.
    """

    code: int = Reason.REFUSED

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(string=reason)  # type: ignore[no-untyped-call]  # Twisted, untyped
        self.reason = reason
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.reason


class UnknownService(ChannelOpenFailed):
    """The peer does not expose the service that was asked for."""

    code = Reason.UNKNOWN_SERVICE


class ServiceUnavailable(ChannelOpenFailed):
    """The peer exposes the service but could not connect to it."""

    code = Reason.CONNECT_FAILED


class TooManyChannels(ChannelOpenFailed):
    """A limit on channels or pending opens was reached."""

    code = Reason.TOO_MANY_CHANNELS


_OPEN_FAILURES: dict[int, type[ChannelOpenFailed]] = {
    cls.code: cls for cls in (UnknownService, ServiceUnavailable, TooManyChannels)
}


def open_failure(code: int, reason: str) -> ChannelOpenFailed:
    """The most specific exception for an OPEN_FAIL ``code``."""
    cls = _OPEN_FAILURES.get(code, ChannelOpenFailed)
    return cls(reason, code)


class ChannelReset(Exception):
    """The channel was aborted (RESET), by the peer or by us; ``code`` and ``reason`` say why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"channel reset: {self.reason}"


class SessionClosed(Exception):
    """The mux session ended, taking its channels with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"session closed: {self.reason}"
