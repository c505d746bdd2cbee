"""Fuzz target: the relay's HTTP and WebSocket opening handshake, as bytes from a peer.

Each input is what one connection sends to the relay's Site (status page, the WebSocket
routes under `/v1/`, and the hub's mounts as `nbbridge-relay` assembles them), over a
StringTransport with a fake clock. No exception may escape, nothing may be logged as a
failure (twisted.web logs and answers 500 for an exception in a resource), and once the peer
has gone quiet past every deadline the connection must have been answered or closed.

All inputs share one relay, so an input must leave nothing behind in it or in the process (a
long run once stopped at libFuzzer's 2 GB limit after 5.5 million inputs, holding every
WebSocket it had opened). Two things make that so, as a real server has them: the loss of the
connection goes to whichever protocol holds the transport by then (after an upgrade, the
WebSocket, which lets go of its agent, link and timers), and Autobahn's timers (txaio's, on
its global loop, not the reactor its factory is given) run on the fake clock for the input.
On the global reactor, which never runs here, even cancelled timers were kept for ever.
"""

from __future__ import annotations

from typing import Any

import txaio

from ._harness import instrumented, main, split

with instrumented():
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.logger import globalLogBeginner, globalLogPublisher
    from twisted.python.failure import Failure

    from nbbridge.relay._auth import Authority
    from nbbridge.relay._config import Limits
    from nbbridge.relay._core import Relay
    from nbbridge.relay._protocol import make_factories
    from nbbridge.relay._web import build_site
    from nbbridge.relay.tap import mounts

#: Longer than any deadline of the HTTP server (its idle timeout is 12 hours by default).
_QUIET = 13 * 3600.0

_failures: list[dict[str, Any]] = []
_GONE = Failure(ConnectionDone())


class _Transport(StringTransport):
    """A StringTransport that, like a real one, lets a producer be unregistered twice.

    (twisted.web's channel unregisters its producer again when it times out; StringTransport
    alone raises there, where a TCP transport does not.)
    """

    def unregisterProducer(self) -> None:
        self.producer = None


def _watch(event: dict[str, Any]) -> None:
    if "log_failure" in event:
        _failures.append(event)


def _site(clock: Clock) -> Any:
    relay = Relay(Authority(None), Limits(), clock)
    return build_site(relay, make_factories(relay, clock), None, clock, mounts(None))


#: One relay for all inputs (building one takes milliseconds); each input's connection is
#: closed before the next, so an agent one registers is gone again. The mounts' periodic jobs
#: (hub statistics) are not started: they are no part of a handshake.
_clock = Clock()
_relay_site = _site(_clock)


def TestOneInput(data: bytes) -> None:
    _, pieces = split(data)
    clock, site = _clock, _relay_site
    transport = _Transport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
    protocol = site.buildProtocol(transport.getPeer())
    # As a real transport has: an upgrade hands it to the WebSocket protocol, which from then
    # on hears the reads and, at the end, the loss.
    transport.protocol = protocol  # type: ignore[attr-defined]
    _failures.clear()
    outside, txaio.config.loop = txaio.config.loop, clock
    try:
        protocol.makeConnection(transport)
        for piece in pieces:
            if transport.disconnecting:
                break
            transport.protocol.dataReceived(piece)  # type: ignore[attr-defined]
        for _ in range(4):
            clock.advance(_QUIET)
        answered = transport.value() != b""
        assert answered or transport.disconnecting, "a silent peer's connection was held"
        assert not _failures, _failures[0].get("log_failure")
    finally:
        transport.protocol.connectionLost(_GONE)  # type: ignore[attr-defined]
        txaio.config.loop = outside


def seeds() -> list[bytes]:
    """A status request, an upgrade on each route, a hub page, and a POST with a body."""
    upgrade = (
        "GET {path} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Authorization: Bearer token-0123456789\r\n\r\n"
    )
    link = "A" * 32
    out = [b"\x00GET /status HTTP/1.1\r\nHost: relay\r\n\r\n"]
    for path in ("/v1/agents/gpu/control", "/v1/agents/gpu/link", f"/v1/agents/gpu/data/{link}"):
        out.append(b"\x00" + upgrade.format(path=path).encode())
    out.append(b"\x00" + upgrade.format(path="/hub/ws/news").encode() + b"\x81\x85abcd" + b"x" * 5)
    out.append(b"\x03GET /stats/json HTTP/1.0\r\n\r\n")
    out.append(b"\x05POST /status HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody")
    return out


if __name__ == "__main__":
    # The only observer: nothing else formats or keeps the events of a hundred thousand inputs.
    globalLogBeginner.beginLoggingTo([_watch], redirectStandardIO=False)  # type: ignore[list-item]
    main(TestOneInput)
else:
    globalLogPublisher.addObserver(_watch)  # type: ignore[arg-type]
