"""What a proxy did, for tests, logs and /metrics: counts and the most it ever buffered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from nbbridge._internals import queued_bytes


@attrs.define
class ProxyStats:
    """Counters of one proxy resource (or of several sharing it).

    `peak_queued` is the largest number of bytes a body write of the proxy left waiting in a
    transport's buffer (downstream for responses, upstream for request bodies). With honest
    backpressure it stays near one read plus the transport's buffer size (64 KiB), however
    large the body; it is measured on plain TCP transports only.
    """

    requests: int = 0
    upgrades: int = 0
    refused: int = 0
    bad_gateway: int = 0
    cut: int = 0
    peak_queued: int = 0
    #: times a splice stopped reading one side because the other side's transport was full
    read_pauses: int = 0
    #: called at each of those (tests wait on it)
    on_read_paused: Callable[[], object] | None = None

    def note_read_paused(self) -> None:
        self.read_pauses += 1
        if self.on_read_paused is not None:
            self.on_read_paused()

    def note_queued(self, transport: Any) -> None:
        """Record how much TRANSPORT holds right after a write of ours."""
        queued = queued_bytes(transport)
        if queued is not None and queued > self.peak_queued:
            self.peak_queued = queued
