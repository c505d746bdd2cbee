"""Joining a client's link and an agent's data connection, frame by frame.

The ends read data frames as they arrive and hand the splice each piece already re-framed for
the other end (unmasked, as a server sends): the relay never holds a whole message, and never
decodes what a link carries.

Backpressure both ways: each end watches its own transport's write buffer (it is registered
as that transport's push producer); when it fills, the splice stops reading the other end's
transport, and resumes it when the buffer drains. So the relay never holds more than a
transport's high-water mark plus the message in flight per direction.
"""

from __future__ import annotations

from typing import Protocol

from twisted.logger import Logger

from nbbridge.contract import CloseCode

from ._core import ActiveLink, Relay

PEER_FULL = "peer-full"


class SpliceEnd(Protocol):
    """One WebSocket of a splice, as the splice sees it."""

    @property
    def write_full(self) -> bool:
        """Whether this end's transport asked its producer to pause."""

    @property
    def server_close(self) -> tuple[int, str] | None:
        """The code and reason the relay closed this end with, if it did."""

    @property
    def reading_paused(self) -> bool:
        """Whether the relay stopped reading this end's transport."""

    def send(self, frame: bytes) -> None:
        """Write FRAME, one or more whole WebSocket frames."""

    def close(self, code: int, reason: str) -> None:
        """Close with CODE and REASON."""

    def hold_reading(self, reason: str) -> None:
        """Stop reading this end's transport for REASON."""

    def release_reading(self, reason: str) -> None:
        """REASON no longer holds reading; read again when no reason is left."""


def onward_close(code: int | None, reason: str | None) -> tuple[int, str]:
    """How to close the other end when one end closed with CODE.

    Application codes (3000-4999) pass through with their reason, a normal close stays
    normal, anything else (1001, an abnormal drop) becomes 1001 "going away".
    """
    if code is not None and 3000 <= code <= 4999:
        return code, reason or ""
    if code == CloseCode.NORMAL:
        return CloseCode.NORMAL, reason or "peer closed the link"
    return CloseCode.GOING_AWAY, "peer connection lost"


class Splice:
    """A spliced link: frames from one end go to the other, their payload unchanged."""

    _log = Logger()

    def __init__(self, relay: Relay, link: ActiveLink, client: SpliceEnd, agent: SpliceEnd) -> None:
        self._relay = relay
        self.link = link
        self.client = client
        self.agent = agent
        self.ended = False

    def partner(self, end: SpliceEnd) -> SpliceEnd:
        """The other end of the splice than END."""
        return self.agent if end is self.client else self.client

    def start(self, early: list[tuple[bytes, int]]) -> None:
        """Forward what the client sent while waiting, then apply current backpressure."""
        for frame, size in early:
            self.forward(self.client, frame, size)
        if self.client.write_full:
            self.agent.hold_reading(PEER_FULL)
        if self.agent.write_full:
            self.client.hold_reading(PEER_FULL)

    def forward(self, source: SpliceEnd, frame: bytes, size: int) -> None:
        """SOURCE sent SIZE bytes of payload, re-framed as FRAME: send it to the other end."""
        if self.ended:
            return
        self.partner(source).send(frame)
        self._relay.carried(self.link, size)

    def write_full_changed(self, end: SpliceEnd, full: bool) -> None:
        """END's transport buffer filled (FULL) or drained: pause or resume the other end."""
        if self.ended:
            return
        if full:
            self.partner(end).hold_reading(PEER_FULL)
        else:
            self.partner(end).release_reading(PEER_FULL)

    def end_closed(self, end: SpliceEnd, code: int | None, reason: str | None) -> None:
        """END closed: close the other end the same way and end the link."""
        if self.ended:
            return
        self.ended = True
        self._relay.link_ended(self.link)
        if end.server_close is not None:
            code, reason = end.server_close
        onward_code, onward_reason = onward_close(code, reason)
        self.partner(end).close(onward_code, onward_reason)
