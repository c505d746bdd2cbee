# twisted.protocols.policies is untyped.
# mypy: disable-error-code="no-untyped-call"
"""Knowing every open connection of a server's Site, so that stopping can close them and wait;
and bounding the connections that have not finished their handshake (`ConnectionLimits`).

A `WrappingFactory` puts a `TrackedConnection` between each transport and the Site's protocol.
The relay's WebSocket protocols talk to the transport underneath it directly (Autobahn needs to
see the TLS transport itself), but the wrapper still hears the connection end, and every byte
read, because Autobahn's `WebSocketResource` makes the WebSocket the wrapper's protocol.

With limits, the tracker refuses a connection at accept time when its source address or the
server has too many (429 or 503, one line naming the limit), checks that the first bytes can
start an HTTP request (400 at once otherwise), and closes a connection that has not finished
its handshake within the deadline (408). A connection has finished once a `ServerWebSocket`
took it over (`TrackedConnection.upgraded`); a plain HTTP connection gets a fresh deadline
after each response (`request_done`), so keep-alive works but dribbling bytes does not. On a
plain TCP port, a connection refused at accept is answered on its socket, ``refusal_delay``
seconds later (`answer_at_accept`, `HeldRefusals`).
"""

from __future__ import annotations

import contextlib
import socket
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from nbbridge._internals import take_at_accept, write_now
from nbbridge._observer import Waiters

if TYPE_CHECKING:
    _WrappingFactory = WrappingFactory[Any]
else:  # not subscriptable at run time before Twisted 24 (the lowest supported is 23.10)
    _WrappingFactory = WrappingFactory

from ._guard import ConnectionLimits, RefusalLog, could_be_http

#: How long a refused connection may take to read its one-line answer before it is dropped.
REFUSAL_LINGER = 1.0
#: Seconds within which held refusals' answers are gathered into one turn of the loop.
HELD_REFUSALS_TICK = 0.05

_PHRASES = {
    400: "Bad Request",
    408: "Request Timeout",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def refusal_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response with STATUS and MESSAGE as its one-line body; closes."""
    body = f"{message}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Refused')}\r\n"
        "Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def peer_ip(addr: IAddress | None) -> str | None:
    """The source address of a TCP peer (None for a UNIX socket or anything else).

    An IPv6 listener takes IPv4 connections too (Linux's default), and reports each peer
    as an IPv4-mapped address (``::ffff:127.0.0.1``): it is the IPv4 address it maps, so
    that a local reverse proxy is exempt and an IPv4 peer is counted as one address."""
    if isinstance(addr, IPv4Address):
        return addr.host
    if isinstance(addr, IPv6Address):
        host = addr.host
        if host.startswith("::ffff:") and "." in host:
            return host[len("::ffff:") :]
        return host
    return None


def _send_and_close(transport: Any, clock: IReactorTime, response: bytes) -> IDelayedCall | None:
    """Write RESPONSE, close, and drop the connection if the peer has not read it in time.

    The response goes out at once (`write_now`): a fresh connection's socket takes a line
    whole, and then there is nothing to wait for, so no timer is set (None). A flood
    reconnects as fast as it is refused, a thousand times a second in bench/load.py, and
    the write queued for a later turn and the timer set and cancelled were a fifth of what
    each refusal cost the relay's loop besides the accept and the close themselves.
    """
    sent = write_now(transport, response)
    transport.loseConnection()
    if sent:
        return None
    return clock.callLater(REFUSAL_LINGER, transport.abortConnection)


class _Refused(Protocol):
    """A connection refused at accept time: answers with its one line and closes.

    On a port set up by `answer_at_accept` that happens on the accepted socket itself
    (`answer`), and the protocol never gets a transport; elsewhere (TLS, UNIX sockets)
    through the transport, as any protocol would.
    """

    def __init__(self, clock: IReactorTime, response: bytes) -> None:
        self._clock = clock
        self._response = response
        self._linger: IDelayedCall | None = None

    def answer(self, skt: socket.socket) -> None:
        """Send the line on the freshly accepted SKT and close it, without a transport.

        A fresh socket's send buffer takes the line whole; a peer gone already is no error.
        """
        with contextlib.suppress(OSError):
            skt.send(self._response, socket.MSG_DONTWAIT)
        skt.close()

    def makeConnection(self, transport: Any) -> None:
        if transport is not None:  # None: answered at accept (`answer_at_accept`)
            super().makeConnection(transport)

    def connectionMade(self) -> None:
        self._linger = _send_and_close(self.transport, self._clock, self._response)

    def dataReceived(self, data: bytes) -> None:
        """Whatever the peer sends is ignored."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()


class HeldRefusals:
    """Connections refused at accept, held unread until their answer is due (a tarpit).

    A flood that opens a new connection whenever one is closed makes a server refuse as
    many connections a second as it can answer: in bench/load.py the 976 connections of
    2 000 beyond the caps came back a thousand times a second, a third of what the flood
    cost the relay, and most of what the attacker's process took from the same two cores.
    Held for DELAY seconds first, each comes back at most once per DELAY + its own pause
    (bench/flood_cost.py: 976 -> ~340 a second). A held socket is neither read nor
    registered with the reactor: it costs a descriptor and nothing else until its answer is
    sent, and at most CAPACITY are held (beyond, a refusal is answered at once, as with a
    DELAY of 0). An honest peer refused (over its address's caps) learns it DELAY seconds
    later.
    Answers due within `HELD_REFUSALS_TICK` of each other go out in one turn of the loop
    (the later ones that much early): one timer wake-up per tick at most, however many.
    """

    def __init__(self, clock: IReactorTime, delay: float, capacity: int) -> None:
        self._clock = clock
        self._delay = delay
        self._capacity = capacity
        #: (due, socket, its refusal), in the order they fall due
        self._held: deque[tuple[float, socket.socket, _Refused]] = deque()
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, skt: socket.socket, refused: _Refused) -> None:
        """Answer REFUSED on SKT once the delay has passed (at once if none or full)."""
        if self._delay <= 0 or len(self._held) >= self._capacity:
            refused.answer(skt)
            return
        self._held.append((self._clock.seconds() + self._delay, skt, refused))
        if self._timer is None:
            self._timer = self._clock.callLater(self._delay, self._answer_due)

    def _answer_due(self) -> None:
        """Answer what is due, and what falls due within a tick (a little early)."""
        self._timer = None
        now = self._clock.seconds()
        held = self._held
        while held and held[0][0] <= now + HELD_REFUSALS_TICK:
            _, skt, refused = held.popleft()
            refused.answer(skt)
        if held:
            self._timer = self._clock.callLater(held[0][0] - now, self._answer_due)

    def answer_all(self) -> None:
        """Answer every held connection now (the server is stopping)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        while self._held:
            _, skt, refused = self._held.popleft()
            refused.answer(skt)


class TrackedConnection(ProtocolWrapper):
    """One connection the tracker knows about (and, with limits, guards until it upgrades)."""

    factory: ConnectionTracker

    def __init__(self, factory: ConnectionTracker, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self.peer_ip: str | None = None
        #: counted as an unfinished handshake (limits only)
        self.handshaking = False
        self._start: bytes | None = None
        self._deadline: IDelayedCall | None = None
        #: refused: answered and closing (nothing more is read)
        self.refused = False
        self._linger: IDelayedCall | None = None

    def connectionMade(self) -> None:
        limits = self.factory.limits
        if limits is not None:
            self.handshaking = True
            self._start = b""
            self.factory.handshake_started(self)
            self._deadline = self.factory.clock.callLater(
                limits.handshake_timeout, self._deadline_passed
            )

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return  # nothing more is read
        if self._start is not None:
            self._start += data[:16]
            verdict = could_be_http(self._start)
            if verdict is False:
                self.refuse(400, "not_http", "not an HTTP request (closed at once)")
                return
            if verdict:
                self._start = None
        super().dataReceived(data)

    def upgraded(self) -> None:
        """A WebSocket took this connection over: its handshake is finished."""
        self._start = None
        self._cancel_deadline()
        if self.handshaking:
            self.handshaking = False
            self.factory.handshake_finished(self)

    def request_done(self) -> None:
        """An HTTP response was sent: the next request gets a deadline of its own."""
        limits = self.factory.limits
        if self.handshaking and limits is not None and not self.refused:
            self._cancel_deadline()
            self._deadline = self.factory.clock.callLater(
                limits.handshake_timeout, self._deadline_passed
            )

    def _deadline_passed(self) -> None:
        self._deadline = None
        limits = self.factory.limits
        assert limits is not None
        self.refuse(
            408,
            "handshake_timeout",
            f"handshake not finished within {limits.handshake_timeout:g} s (handshake_timeout)",
        )

    def refuse(self, status: int, limit: str, message: str) -> None:
        """Answer STATUS with MESSAGE (naming LIMIT), log it (aggregated), and close."""
        if self.refused or self.transport is None:
            return
        self.refused = True
        self._cancel_deadline()
        self.factory.refusals.refused(limit, self.peer_ip or "peer", message)
        self._linger = _send_and_close(
            self.transport, self.factory.clock, refusal_response(status, message)
        )

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        # Unlike ProtocolWrapper, tell the protocol first: "idle" must mean "all cleaned up".
        wrapped: Any = self.wrappedProtocol
        try:
            wrapped.connectionLost(reason)
        finally:
            self.factory.unregisterProtocol(self)
            # Break the cycle, as ProtocolWrapper does.
            self.wrappedProtocol = None  # type: ignore[assignment]


class ConnectionTracker(_WrappingFactory):
    """Wraps the Site's factory and keeps its open connections; LIMITS guard the new ones."""

    protocol = TrackedConnection

    def __init__(
        self,
        wrapped: Any,
        clock: IReactorTime,
        limits: ConnectionLimits | None = None,
        *,
        timer: IReactorTime | None = None,
    ) -> None:
        """Track WRAPPED's connections; CLOCK runs the idle waiters (the reactor).

        TIMER (default CLOCK) keeps the handshake deadlines and the refusal log's intervals:
        the service's own clock, which tests may drive by hand.
        """
        super().__init__(wrapped)
        self.limits = limits
        #: the clock of deadlines and refusal intervals
        self.clock = timer or clock
        self.refusals = RefusalLog(self.clock)
        self._idle: Waiters[None] = Waiters(clock)
        self._connections_by_ip: Counter[str] = Counter()
        self._handshakes_by_ip: Counter[str] = Counter()
        #: connections that have not finished their handshake, oldest first
        self._unfinished: dict[TrackedConnection, None] = {}
        self.handshakes = 0
        #: refused at accept and not answered yet (`answer_at_accept` ports only)
        self.held_refusals = HeldRefusals(
            self.clock,
            limits.refusal_delay if limits is not None else 0.0,
            limits.handshakes_total if limits is not None else 0,
        )

    def buildProtocol(self, addr: IAddress | None) -> Any:
        ip = peer_ip(addr)
        refusal = self._admission(ip) if self.limits is not None else None
        if refusal is not None:
            status, limit, message = refusal
            self.refusals.refused(limit, ip or "peer", message)
            return _Refused(self.clock, refusal_response(status, message))
        wrapper = super().buildProtocol(addr)
        if isinstance(wrapper, TrackedConnection):
            wrapper.peer_ip = ip
        return wrapper

    def _limited(self, ip: str | None) -> bool:
        return ip is not None and self.limits is not None and ip not in self.limits.exempt

    def _admission(self, ip: str | None) -> tuple[int, str, str] | None:
        """Why a new connection from IP is refused: (status, limit, message), or None."""
        limits = self.limits
        assert limits is not None
        if self._limited(ip):
            assert ip is not None
            if self._connections_by_ip[ip] >= limits.connections_per_ip:
                n = limits.connections_per_ip
                why = f"too many connections from {ip} (connections_per_ip = {n})"
                return 429, "connections_per_ip", why
            if self._handshakes_by_ip[ip] >= limits.handshakes_per_ip:
                n = limits.handshakes_per_ip
                why = f"too many unfinished handshakes from {ip} (handshakes_per_ip = {n})"
                return 429, "handshakes_per_ip", why
        if self.handshakes >= limits.handshakes_total:
            n = limits.handshakes_total
            why = f"server busy: too many unfinished handshakes (handshakes_total = {n})"
            if self._holds_its_share(ip):
                return 503, "handshakes_total", f"{why}; {ip} holds its share of them"
            if not self._evict_oldest():
                return 503, "handshakes_total", why
        return None

    @property
    def _limited_handshakes(self) -> int:
        """The unfinished handshakes of limited (not exempt) addresses."""
        return sum(self._handshakes_by_ip.values())

    def _holds_its_share(self, ip: str | None) -> bool:
        """Whether IP (a limited address) holds at least half the mean number of unfinished
        handshakes per address holding any: then, with every slot taken, its newcomer is
        refused at once rather than admitted by closing the oldest.

        Closing the oldest to admit each newcomer keeps honest agents and clients from being
        locked out, but a flood that reconnects whatever is closed then costs a full HTTP
        connection and an eviction per reconnect. The addresses of a flood hold about the
        mean each; an honest peer's, the one handshake it is doing or none. So a newcomer
        from an address holding half the mean or more is turned away at accept (cheap, the
        slots stay as they are), and one from an address holding less still gets in.

        Half, not the mean itself: the mean of whole counts is rarely whole, so some of the
        flood's addresses always hold less than it; admitting those closed another address's
        oldest, which put that one below the mean in turn, and the flood evicted itself in a
        cycle, some 900 times a second in bench/load.py (every slot turned over each second).
        An address must now lose half its share to its deadlines before it evicts anyone.
        The price: an honest address already holding k unfinished handshakes (a keep-alive
        connection counts) is refused when a flood's mean is 2k or more, where before it
        took k; it gets in once it holds none, which its retry soon finds. A flood from
        about as many addresses as there are slots still turns itself over (an address
        holding none always gets in), as it did before. Behind a local reverse proxy every
        peer is the exempt loopback, and this cannot tell them apart: the oldest goes, as
        before.
        """
        if not self._limited(ip):
            return False
        assert ip is not None
        held = self._handshakes_by_ip.get(ip, 0)
        return held > 0 and 2 * held * len(self._handshakes_by_ip) >= self._limited_handshakes

    def _evict_oldest(self) -> bool:
        """Make room by closing the oldest unfinished handshake; whether there was one.

        When the total is reached, refusing the newest connection would let whoever holds the
        slots (slow, silent connections) keep every honest agent and client out until their
        deadlines pass. An honest handshake finishes in milliseconds, so the oldest unfinished
        one is almost always a slow one: it goes, and the newcomer gets its chance.
        """
        if not self._unfinished:
            return False
        oldest = next(iter(self._unfinished))
        n = self.limits.handshakes_total if self.limits is not None else 0
        why = (
            f"server busy: too many unfinished handshakes (handshakes_total = {n}); "
            "the oldest is closed to make room"
        )
        self.handshake_finished(oldest)
        oldest.handshaking = False
        oldest.refuse(503, "handshakes_total", why)
        return True

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        if self._limited(p.peer_ip):
            self._connections_by_ip[p.peer_ip] += 1

    def unregisterProtocol(self, p: Any) -> None:
        if p in self.protocols and self._limited(p.peer_ip):
            _decrement(self._connections_by_ip, p.peer_ip)
        if p.handshaking:
            p.handshaking = False
            self.handshake_finished(p)
        super().unregisterProtocol(p)
        if not self.protocols:
            self._idle.fire(None)

    def handshake_started(self, p: TrackedConnection) -> None:
        """P counts as an unfinished handshake."""
        self.handshakes += 1
        self._unfinished[p] = None
        if self._limited(p.peer_ip):
            assert p.peer_ip is not None
            self._handshakes_by_ip[p.peer_ip] += 1

    def handshake_finished(self, p: TrackedConnection) -> None:
        """P no longer counts as an unfinished handshake (upgraded or gone)."""
        self.handshakes -= 1
        self._unfinished.pop(p, None)
        if self._limited(p.peer_ip):
            assert p.peer_ip is not None
            _decrement(self._handshakes_by_ip, p.peer_ip)

    def open_protocols(self) -> list[Any]:
        """The protocols (HTTP channels, WebSockets) of the open connections."""
        return [w.wrappedProtocol for w in self.protocols if w.wrappedProtocol is not None]

    def when_idle(self) -> Deferred[None]:
        """Fires once no connection is open."""
        if not self.protocols:
            return succeed(None)
        return self._idle.wait()

    def close_all(self, reason: str) -> None:
        """Ask each WebSocket to close (it knows how), and drop plain HTTP connections; held
        refusals are answered now."""
        self.held_refusals.answer_all()
        for wrapper in list(self.protocols):
            shutdown = getattr(wrapper.wrappedProtocol, "shutdown", None)
            if shutdown is not None:
                shutdown(reason)
            else:
                wrapper.loseConnection()

    def abort_all(self) -> None:
        """Drop whatever is still open (held refusals are answered)."""
        self.held_refusals.answer_all()
        for wrapper in list(self.protocols):
            if wrapper.transport is not None:
                wrapper.transport.abortConnection()


def answer_at_accept(port: object) -> bool:
    """Let PORT answer the connections its tracker refuses on their sockets; whether it could.

    Twisted gives every accepted connection a transport, registers it with the reactor and
    tears all that down again when it closes; for a connection refused at once, that was
    most of what a refusal cost. A flood that reconnects as fast as it is refused (some
    1 000 a second in bench/load.py) made it a quarter of a core and slowed the honest
    links set up meanwhile. On a plain TCP port whose factory is a `ConnectionTracker`, the
    refused connection's line is sent on the accepted socket, which is then closed
    (`_Refused.answer`): no transport, nothing registered. The answer waits the limits'
    ``refusal_delay`` first (`HeldRefusals`), so that a flood reconnecting whatever is
    refused is refused less often. Other ports (TLS, whose answer has to go through the TLS
    layer, and UNIX sockets) are left as they are: answered at once through a transport.
    """
    tracker = getattr(port, "factory", None)
    if not isinstance(tracker, ConnectionTracker):
        return False
    held = tracker.held_refusals

    def take(skt: socket.socket, protocol: Any) -> bool:
        if isinstance(protocol, _Refused):
            held.hold(skt, protocol)
            return True
        return False

    return take_at_accept(port, take)


def request_done(transport: Any) -> None:
    """An HTTP response on TRANSPORT (a request's channel's) was sent; see `request_done`."""
    if isinstance(transport, TrackedConnection):
        transport.request_done()


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
