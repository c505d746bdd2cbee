"""Integration: the relay's limits on connections that have not proved anything yet.

Real sockets on 127.0.0.1. Deadlines run on a `Clock` the test advances (the relay's own
clock, which its connection tracker keeps), except for the byte-at-a-time test, which
dribbles on the real reactor against a short real deadline.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nbbridge.contract import CloseCode, link_path
from nbbridge.relay._config import ConfigError, Limits, parse_config
from nbbridge.websocket import RefusalLog, could_be_http
from tests._cleanup import add_async_cleanup

from ..transport._certs import write_server_files
from ._harness import (
    CLIENT_TOKEN,
    LIMITED_CLIENT_TOKEN,
    OTHER_AGENT_TOKEN,
    RelayTestCase,
    make_config,
)

#: How long a test waits for what should happen at once (before the fix: 60 s or never).
PROMPTLY = 5.0

UPGRADE = (
    b"GET /v1/agents/gpu/control HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
STATUS = b"GET /status HTTP/1.1\r\nHost: relay\r\n\r\n"
# The start of a TLS 1.2 ClientHello record, as a browser sends to https://.
CLIENT_HELLO = bytes.fromhex("16030100f8010000f40303") + bytes(32) + b"\x20" + bytes(32)


class RawClient(Protocol):
    """A TCP client that sends what the test says and keeps what the relay answers."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Deferred[None] = Deferred()
        self.gone = False
        self._waiting: list[tuple[bytes, int, Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for waiter in list(self._waiting):
            marker, count, d = waiter
            if self.data.count(marker) >= count:
                self._waiting.remove(waiter)
                d.callback(self.data)

    def until(self, marker: bytes, count: int = 1) -> Deferred[bytes]:
        """Fires with everything received once MARKER is in it COUNT times."""
        d: Deferred[bytes] = Deferred()
        if self.data.count(marker) >= count:
            d.callback(self.data)
        else:
            self._waiting.append((marker, count, d))
        return _within(d, PROMPTLY, f"{count} x {marker!r}")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.gone = True
        self.lost.callback(None)


def _within(d: Deferred[Any], seconds: float, what: str) -> Deferred[Any]:
    """D, failed with a clear message if it has not fired within SECONDS (real time)."""
    timer = reactor.callLater(seconds, d.cancel)  # type: ignore[attr-defined]

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        elif isinstance(result, Failure):
            raise AssertionError(f"{what}: not within {seconds} s")
        return result

    return d.addBoth(done)


def _status_line(response: bytes) -> bytes:
    return response.split(b"\r\n", 1)[0]


class GuardTestCase(RelayTestCase):
    """Raw TCP connections to a relay whose deadlines run on SELF.clock."""

    async def start(self, **limits: Any) -> None:
        """A relay with LIMITS; refusals at accept are answered at once unless a
        ``refusal_delay`` is given (the delay runs on SELF.clock)."""
        self.clock = Clock()
        limits.setdefault("refusal_delay", 0)
        await self.start_relay(make_config(limits), clock=self.clock)

    async def raw(self, first: bytes = b"") -> RawClient:
        """A TCP connection to the relay that has sent FIRST."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.connector.port)
        client = await connectProtocol(endpoint, RawClient())
        add_async_cleanup(self, self._drop, client)
        if first:
            client.transport.write(first)  # type: ignore[union-attr]
        return client

    async def raw_from(self, source: str, first: bytes) -> RawClient:
        """A TCP connection from SOURCE (a loopback address) that has sent FIRST."""
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.connector.port, bindAddress=(source, 0)
        )
        client = await connectProtocol(endpoint, RawClient())
        add_async_cleanup(self, self._drop, client)
        client.transport.write(first)  # type: ignore[union-attr]
        return client

    async def _drop(self, client: RawClient) -> None:
        if not client.gone:
            client.transport.abortConnection()  # type: ignore[union-attr]
        await client.lost

    async def closed_with(self, client: RawClient, what: str) -> bytes:
        """What the relay answered CLIENT before closing it (promptly)."""
        await _within(client.lost, PROMPTLY, what)
        return client.data


class DeadlineTests(GuardTestCase):
    """A connection must finish its handshake within handshake_timeout, however it dribbles."""

    async def test_header_lines_do_not_restart_the_deadline(self) -> None:
        await self.start(handshake_timeout=2)
        client = await self.raw(b"GET /v1/agents/gpu/control HTTP/1.1\r\n")
        # The relay has seen the connection once it answers a status request on another one.
        probe = await self.raw(STATUS)
        await probe.until(b"\r\n\r\n")
        self.clock.advance(1.5)
        client.transport.write(b"Host: relay\r\n")  # type: ignore[union-attr]
        self.clock.advance(0.6)
        answer = await self.closed_with(client, "slow handshake closed at its deadline")
        self.assertEqual(_status_line(answer), b"HTTP/1.1 408 Request Timeout")
        self.assertIn(b"handshake not finished within 2 s (handshake_timeout)", answer)

    async def test_keep_alive_gets_a_deadline_per_request(self) -> None:
        await self.start(handshake_timeout=2)
        client = await self.raw(STATUS)
        await client.until(b"}\n")
        self.clock.advance(1.5)
        client.transport.write(STATUS)  # type: ignore[union-attr]
        await client.until(b"HTTP/1.1 200 OK", 2)
        self.clock.advance(1.5)  # 3 s after the connection opened, 1.5 s after its response
        self.assertFalse(client.gone)
        self.clock.advance(0.6)
        answer = await self.closed_with(client, "idle keep-alive closed at its deadline")
        self.assertIn(b"408 Request Timeout", answer)

    async def test_open_websocket_has_no_deadline(self) -> None:
        await self.start(handshake_timeout=1)
        control = await self.agent()
        self.clock.advance(10)
        # Still registered and reachable: a link gets its dial.
        await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        payload, _ = await control.messages.get()
        self.assertIn("dial", payload.decode())

    async def test_byte_at_a_time_closed_in_real_time(self) -> None:
        # The slowloris of the report, on the real clock: one byte every 50 ms.
        await self.start_relay(make_config({"handshake_timeout": 0.5}))
        client = await self.raw()
        pending = iter(UPGRADE)
        dribble = LoopingCall(lambda: client.transport.write(bytes([next(pending, 32)])))  # type: ignore[union-attr]
        dribble.clock = reactor  # type: ignore[assignment]
        dribble.start(0.05)
        self.addCleanup(lambda: dribble.stop() if dribble.running else None)
        started = time.monotonic()
        answer = await self.closed_with(client, "byte-at-a-time handshake closed")
        elapsed = time.monotonic() - started
        self.assertEqual(_status_line(answer), b"HTTP/1.1 408 Request Timeout")
        self.assertLess(elapsed, 3.0)


class TlsDeadlineTests(GuardTestCase):
    """On a TLS port, the deadline also covers a TLS handshake that never finishes."""

    async def test_stalled_tls_handshake(self) -> None:
        files = write_server_files(os.path.abspath(self.mktemp()))
        self.clock = Clock()
        config = make_config({"handshake_timeout": 2})
        await self.start_relay(
            config, clock=self.clock, endpoint=files.ssl_endpoint(), ca_pem=files.ca_pem
        )
        client = await self.raw(CLIENT_HELLO[:20])
        silent = await self.raw()
        # An agent accepted after both: the relay counts them by the time it is registered.
        control = await self.agent()
        self.assertEqual(self.service.connections.handshakes, 2)
        self.clock.advance(2)  # the deadline
        self.clock.advance(1)  # the refusal's linger: nobody reads the 408 through TLS
        await self.closed_with(client, "stalled TLS handshake closed")
        await self.closed_with(silent, "silent TLS connection closed")
        self.assertFalse(control.lost.called)


class NotHttpTests(GuardTestCase):
    """Bytes that cannot start an HTTP request are answered 400 and closed at once."""

    async def test_tls_client_hello_and_random_bytes(self) -> None:
        await self.start(handshake_timeout=60)
        for first in (CLIENT_HELLO, b"\x00\x9f\xe3\x10garbage", b"get / HTTP/1.1\r\n", b"GETX\r\n"):
            client = await self.raw(first)
            answer = await self.closed_with(client, f"{first[:8]!r} closed at once")
            self.assertEqual(_status_line(answer), b"HTTP/1.1 400 Bad Request", first)
            self.assertIn(b"not an HTTP request", answer)
        # An HTTP request still works.
        client = await self.raw(STATUS)
        self.assertIn(b"200 OK", await client.until(b"}\n"))


class CapTests(GuardTestCase):
    """Unfinished handshakes per address and in all, and connections per address, are capped."""

    async def test_unfinished_handshakes_per_address(self) -> None:
        await self.start(handshakes_per_ip=2, handshake_timeout=5, per_ip_exempt=[])
        await self.raw(b"GET /status HTTP/1.1\r\n")
        await self.raw()
        third = await self.raw()
        answer = await self.closed_with(third, "third unfinished handshake refused")
        self.assertEqual(_status_line(answer), b"HTTP/1.1 429 Too Many Requests")
        self.assertIn(b"(handshakes_per_ip = 2)", answer)
        # An honest agent from the same address is turned away too, until the two expire.
        self.clock.advance(5)
        await self.agent()
        await self.agent("cpu", OTHER_AGENT_TOKEN)  # an open WebSocket does not count

    async def test_unfinished_handshakes_in_all(self) -> None:
        """At the total, the oldest unfinished handshake is closed to make room (503)."""
        await self.start(handshakes_total=2, handshake_timeout=5)
        first = await self.raw()
        second = await self.raw()
        third = await self.raw()
        answer = await self.closed_with(first, "the oldest unfinished handshake closed")
        self.assertEqual(_status_line(answer), b"HTTP/1.1 503 Service Unavailable")
        self.assertIn(b"(handshakes_total = 2)", answer)
        # An honest agent gets in at once, though every slot is held: the oldest goes again.
        await self.agent()
        await self.closed_with(second, "the next oldest closed for the agent")
        await self.agent("cpu", OTHER_AGENT_TOKEN)
        self.clock.advance(5)
        answer = await self.closed_with(third, "the last one closed at its deadline")
        self.assertEqual(_status_line(answer), b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(self.service.connections.handshakes, 0)

    async def test_flood_of_slow_handshakes(self) -> None:
        # The report's slowloris, scaled down: every one is closed, to make room or at the
        # deadline, the closures are counted by limit, and honest requests get through.
        await self.start(handshakes_total=16, handshakes_per_ip=8, handshake_timeout=3)
        addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
        clients = []
        for i in range(40):
            client = await self.raw_from(addresses[i % 5], b"GET /v1/agents/gpu/control HT")
            clients.append(client)
        # Every slot is held by the flood, yet an honest request is answered.
        probe = await self.raw(STATUS)
        await probe.until(b"200 OK")
        refusals = self.service.connections.refusals
        self.assertEqual(refusals.counts, {"handshakes_total": 25})
        self.clock.advance(3)
        answers = [await self.closed_with(c, "slow handshake closed") for c in clients]
        self.assertEqual(
            Counter(_status_line(a) for a in answers),
            {b"HTTP/1.1 503 Service Unavailable": 25, b"HTTP/1.1 408 Request Timeout": 15},
        )
        self.assertEqual(refusals.counts, {"handshakes_total": 25, "handshake_timeout": 16})
        await self.agent()

    async def test_flood_address_refused_at_accept_when_full(self) -> None:
        """With every slot taken, an address holding its share is turned away at once, and
        the slots stay as they are; a newcomer from another address still gets in."""
        await self.start(handshakes_total=4, handshakes_per_ip=100, per_ip_exempt=[])
        flood = [
            await self.raw_from("127.0.0.2", b"GET /v1/agents/gpu/control HT") for _ in range(4)
        ]
        fifth = await self.raw_from("127.0.0.2", b"GET /v1/agents/gpu/control HT")
        answer = await self.closed_with(fifth, "the flood's newcomer refused at accept")
        self.assertEqual(_status_line(answer), b"HTTP/1.1 503 Service Unavailable")
        self.assertIn(b"(handshakes_total = 4); 127.0.0.2 holds its share of them", answer)
        self.assertEqual(self.service.connections.handshakes, 4)
        # Another address gets in, and the oldest of the flood (still open) makes room.
        honest = await self.raw_from("127.0.0.3", STATUS)
        await honest.until(b"200 OK")
        answer = await self.closed_with(flood[0], "the oldest closed for the newcomer")
        self.assertIn(b"the oldest is closed to make room", answer)
        self.assertFalse(any(c.gone for c in flood[1:]))
        # The honest address holds one (its keep-alive connection), the flood three: the
        # flood still holds half its share (half the mean of two) or more.
        sixth = await self.raw_from("127.0.0.2", b"GET /v1/agents/gpu/control HT")
        await self.closed_with(sixth, "the flood's newcomer refused again")
        await self.agent()
        self.assertEqual(self.service.connections.refusals.counts, {"handshakes_total": 4})

    async def test_connections_per_address(self) -> None:
        await self.start(connections_per_ip=2, per_ip_exempt=[])
        await self.agent()
        await self.agent("cpu", OTHER_AGENT_TOKEN)
        third = await self.raw()
        answer = await self.closed_with(third, "third connection refused")
        self.assertEqual(_status_line(answer), b"HTTP/1.1 429 Too Many Requests")
        self.assertIn(b"(connections_per_ip = 2)", answer)

    async def test_refusal_held_for_its_delay(self) -> None:
        """A connection refused at accept gets its 429 only after ``refusal_delay``,
        unread meanwhile, so a flood reconnecting what is refused comes back less often;
        the refusal is counted at once."""
        await self.start(connections_per_ip=2, per_ip_exempt=[], refusal_delay=2)
        await self.agent()
        await self.agent("cpu", OTHER_AGENT_TOKEN)
        held = self.service.connections.held_refusals
        taken: Deferred[None] = Deferred()
        hold = held.hold

        def held_now(skt: Any, refused: Any) -> None:
            hold(skt, refused)
            taken.callback(None)

        held.hold = held_now  # type: ignore[method-assign]
        third = await self.raw(b"GET /status HTTP/1.1\r\n")
        await _within(taken, PROMPTLY, "third connection taken at accept")
        self.assertEqual(self.service.connections.refusals.counts, {"connections_per_ip": 1})
        self.clock.advance(1.9)
        self.assertEqual((len(held), third.gone, third.data), (1, False, b""))
        self.clock.advance(0.1)
        self.assertEqual(len(held), 0)
        answer = await self.closed_with(third, "third connection answered after the delay")
        self.assertEqual(_status_line(answer), b"HTTP/1.1 429 Too Many Requests")
        self.assertIn(b"(connections_per_ip = 2)", answer)

    async def test_loopback_is_exempt_by_default(self) -> None:
        # A reverse proxy on the relay's machine makes every peer 127.0.0.1.
        await self.start(connections_per_ip=1, handshakes_per_ip=1)
        await self.agent()
        await self.agent("cpu", OTHER_AGENT_TOKEN)


class LinkQuotaTests(RelayTestCase):
    """One client cannot hold all of an agent's links."""

    async def test_links_per_client(self) -> None:
        await self.start_relay(make_config({"links_per_client": 2, "pending_dials_per_agent": 8}))
        control = await self.agent("cpu", OTHER_AGENT_TOKEN)
        # One link spliced, one waiting for its dial: both count.
        await self.link(control, "cpu", agent_token=OTHER_AGENT_TOKEN)
        await self.connector.connect(link_path("cpu"), CLIENT_TOKEN)
        third = await self.connector.connect(link_path("cpu"), CLIENT_TOKEN)
        code, reason = await third.closed
        self.assertEqual(code, CloseCode.LIMIT)
        self.assertIn("(links_per_client)", reason)
        # Another client still gets a link to the same agent.
        other = await self.connector.connect(link_path("cpu"), LIMITED_CLIENT_TOKEN)
        self.assertFalse(other.lost.called)
        await control.messages.get()  # the waiting link's dial
        payload, _ = await control.messages.get()
        self.assertIn("dial", payload.decode())


class StatusRateTests(GuardTestCase):
    """GET /status beyond status_per_second gets 429 naming the limit."""

    async def test_status_rate(self) -> None:
        await self.start(status_per_second=2)
        client = await self.raw(STATUS + STATUS + STATUS)
        answer = await client.until(b"status_per_second")
        self.assertEqual(answer.count(b"HTTP/1.1 200 OK"), 2)
        self.assertIn(b"HTTP/1.1 429 Too Many Requests", answer)
        self.assertIn(b"too many /status requests (status_per_second = 2)", answer)
        self.clock.advance(1)
        client.transport.write(STATUS)  # type: ignore[union-attr]
        await client.until(b"HTTP/1.1 200 OK", 3)


class ConfigTests(SynchronousTestCase):
    """The [limits] keys of the guard parse and are checked."""

    def test_parse(self) -> None:
        config = parse_config(
            {
                "limits": {
                    "handshake_timeout": 5,
                    "handshakes_per_ip": 4,
                    "handshakes_total": 100,
                    "connections_per_ip": 50,
                    "per_ip_exempt": ["10.0.0.1"],
                    "links_per_client": 3,
                    "status_per_second": 0.5,
                    "refusal_delay": 0,
                }
            },
            "relay.toml",
        )
        limits = config.limits
        self.assertEqual(limits.links_per_client, 3)
        guard = limits.connection_limits()
        self.assertEqual(
            (guard.handshake_timeout, guard.handshakes_per_ip, guard.handshakes_total),
            (5.0, 4, 100),
        )
        self.assertEqual((guard.connections_per_ip, guard.exempt), (50, frozenset({"10.0.0.1"})))
        self.assertEqual(guard.refusal_delay, 0.0)
        self.assertLessEqual(Limits().handshake_timeout, 30.0)
        self.assertEqual(Limits().connection_limits().refusal_delay, 3.0)

    def test_exempt_addresses_are_written_as_peers_are(self) -> None:
        """Written another way, an exempt address never matched a peer's."""
        limits = {"per_ip_exempt": ["0:0:0:0:0:0:0:1", "::FFFF:127.0.0.2", "2001:DB8::1"]}
        config = parse_config({"limits": limits}, "relay.toml")
        self.assertEqual(config.limits.per_ip_exempt, ("::1", "127.0.0.2", "2001:db8::1"))

    def test_errors(self) -> None:
        for limits, message in [
            ({"per_ip_exempt": "127.0.0.1"}, "limits.per_ip_exempt: must be a list"),
            ({"per_ip_exempt": ["nginx"]}, "limits.per_ip_exempt: 'nginx' is not an IP address"),
            ({"handshake_timeout": 0}, "limits.handshake_timeout: must be between"),
            ({"handshakes_total": "9"}, "limits.handshakes_total: must be an integer"),
            ({"refusal_delay": -1}, "limits.refusal_delay: must be between 0.0 and 60.0"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                parse_config({"limits": limits}, "relay.toml")
            self.assertIn(message, str(caught.exception))


class CouldBeHttpTests(SynchronousTestCase):
    def test_verdicts(self) -> None:
        for start, verdict in [
            (b"", None),
            (b"G", None),
            (b"GET", None),
            (b"GET ", True),
            (b"OPTIONS /", True),
            (b"\r\nGET ", True),
            (b"\r", None),
            (b"\x16\x03\x01", False),
            (b"get ", False),
            (b" GET", False),
            (b"ABCDEFGHIJK", False),
            (b"GET/", False),
        ]:
            self.assertEqual(could_be_http(start), verdict, start)


class RefusalLogTests(SynchronousTestCase):
    """A flood of refusals costs one log line per limit and interval."""

    def test_aggregates(self) -> None:
        clock = Clock()
        events: list[dict[str, Any]] = []
        log = RefusalLog(clock, interval=60)
        log._log = Logger(observer=events.append)  # type: ignore[misc]
        for _ in range(1000):
            log.refused("handshakes_per_ip", "192.0.2.1", "too many")
        log.refused("handshakes_total", "192.0.2.2", "busy")
        self.assertEqual(len(events), 2)
        clock.advance(61)
        log.refused("handshakes_per_ip", "192.0.2.1", "too many")
        self.assertEqual(len(events), 3)
        self.assertEqual(events[-1]["unlogged"], 999)
        self.assertEqual(log.counts, {"handshakes_per_ip": 1001, "handshakes_total": 1})
