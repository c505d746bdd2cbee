"""What a server's connection tracker enforces before a connection has proved anything.

A connection that has not finished its HTTP/WebSocket handshake has shown no token and costs a
file descriptor. Twisted's own HTTP idle timer restarts on every byte, so a peer sending one
byte (or one header line) now and then would hold its socket for ever, and a few hundred such
peers exhaust the server's descriptors. `ConnectionLimits` bounds them: a deadline that does not
restart, caps on unfinished handshakes per source address and in total, a cap on connections per
source address, and an early look at the first bytes (`could_be_http`) so that a TLS ClientHello
or random bytes are closed at once rather than held until a timeout.

Each refusal names the limit it hit, and is logged through a `RefusalLog`, which aggregates so
that a flood of refused connections cannot fill the log.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: Addresses the per-address limits skip by default: a reverse proxy on this machine
#: (nginx) makes every connection come from loopback, and applies its own limits.
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1"})


@attrs.frozen
class ConnectionLimits:
    """Bounds on connections that have not finished their handshake (and on connections per IP).

    A connection has finished its handshake once a WebSocket took it over; a plain HTTP
    connection never has, and must complete each request within ``handshake_timeout`` of the
    connection opening or of the previous response.
    """

    #: seconds a connection may take to complete its (next) HTTP request or WebSocket handshake
    handshake_timeout: float = 15.0
    #: unfinished handshakes from one source address
    handshakes_per_ip: int = 32
    #: unfinished handshakes in all
    handshakes_total: int = 1024
    #: open connections (finished or not) from one source address
    connections_per_ip: int = 256
    #: seconds a connection refused at accept waits, unread, for its answer (0: at once)
    refusal_delay: float = 3.0
    #: source addresses the per-address limits do not apply to (a local reverse proxy)
    exempt: frozenset[str] = LOOPBACK_ADDRESSES


#: Longest method token `could_be_http` waits for ("OPTIONS" and "CONNECT" have seven).
_MAX_METHOD = 10


def could_be_http(start: bytes) -> bool | None:
    """Whether a connection that began with START may be an HTTP/1.x request.

    True once a plausible method token and its space arrived, False as soon as START cannot
    begin a request line, None while too little arrived to tell. An empty line before the
    request (which Twisted tolerates once) is allowed.
    """
    if start.startswith(b"\r\n"):
        start = start[2:]
    elif start == b"\r":
        return None
    for i, byte in enumerate(start[: _MAX_METHOD + 1]):
        if byte == 0x20:
            return i > 0
        if not 0x41 <= byte <= 0x5A:  # A-Z
            return False
    return None if len(start) <= _MAX_METHOD else False


class RefusalLog:
    """Logs refusals by limit: the first at once, then at most one summary per INTERVAL.

    A flood of refused connections therefore costs one line per limit and interval. `counts`
    keeps every refusal, by limit, for whoever reports them.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, interval: float = 60.0) -> None:
        self._clock = clock
        self._interval = interval
        self.counts: dict[str, int] = {}
        #: per limit: when it was last logged, and how many refusals went unlogged since
        self._last: dict[str, tuple[float, int]] = {}

    def refused(self, limit: str, peer: str, detail: str) -> None:
        """A connection from PEER was refused because of LIMIT (DETAIL says how)."""
        self.counts[limit] = self.counts.get(limit, 0) + 1
        now = self._clock.seconds()
        last = self._last.get(limit)
        if last is not None and now - last[0] < self._interval:
            self._last[limit] = (last[0], last[1] + 1)
            return
        unlogged = last[1] if last is not None else 0
        self._last[limit] = (now, 0)
        if unlogged:
            self._log.warn(
                "refused {peer}: {detail} ({unlogged} more refused for {limit} since the "
                "last such line)",
                peer=peer,
                detail=detail,
                unlogged=unlogged,
                limit=limit,
            )
        else:
            self._log.warn("refused {peer}: {detail}", peer=peer, detail=detail)
