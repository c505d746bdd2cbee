"""Honest links for bench/load.py: N links to one agent through the relay, then traffic.

    python bench/_honest.py WORKDIR RELAY_URL AGENT SERVICE LINKS CONCURRENCY SECONDS [ROUNDS]

One process, one Twisted reactor, LINKS ``AgentLink``s (what ``nbbridge-client`` uses), each
its own WebSocket to the relay with its own Noise session to the agent, all with the
client key and token in WORKDIR (client.key, client.token; the agent's public key in
agent.pub). Set-up: at most CONCURRENCY links opening at once; each link's time is from
asking for its session to the session being up (TCP, WebSocket upgrade, Noise handshake);
the time to the WebSocket's opening (TCP and upgrade at the relay) is kept beside it.
ROUNDS (default 1) times: all LINKS are opened, and closed again but for the last round's.
One round of 100 links takes half a second, too short a look at a relay under a flood that
comes and goes within each second: its set-up p50 varied x1.07-x1.66 between runs of the
same code. The set-up times of every round are pooled.
Traffic: then, for SECONDS, every link keeps one channel to SERVICE (the bench target)
busy sinking 256 KiB blocks (``S`` + length, wait for ``K``). Prints one JSON line:
set-up times, attempts that failed and were retried (AgentLink backs off about 1 s), links
that failed and why, bytes acknowledged by the sink per link.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from nbbridge._daemon import after_service, before_service
from nbbridge._secrets import read_secret
from nbbridge.crypto import load_private_key, parse_public_key
from nbbridge.transport import parse_relay_url
from nbbridge.tunnel import AgentLink, _link

reactor: Any = _reactor

#: when each link's WebSocket to the relay opened (by id of its AgentLink): a link's set-up
#: is the upgrade at the relay, then the dial, the agent's data connection and the Noise
#: handshake through the splice; timing the first part tells which of the two a flood slows.
_ws_open: dict[int, float] = {}
_make_inner = _link._LinkProtocol.make_inner


def _timed_make_inner(self: Any) -> Any:
    _ws_open.setdefault(id(self.owner), time.monotonic())
    return _make_inner(self)


_link._LinkProtocol.make_inner = _timed_make_inner  # type: ignore[method-assign]
BLOCK = 256 * 1024
_PAYLOAD = b"S" + struct.pack(">Q", BLOCK) + b"\0" * BLOCK


class SinkLoop(Protocol):
    """Sends a block, waits for the sink's ``K``, again, until the deadline."""

    def __init__(self, deadline: float, done: Deferred[int]) -> None:
        self.deadline = deadline
        self.done = done
        self.acked = 0

    def connectionMade(self) -> None:
        self.transport.write(_PAYLOAD)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for _ in range(data.count(b"K")):
            self.acked += BLOCK
            if time.monotonic() < self.deadline:
                self.transport.write(_PAYLOAD)  # type: ignore[union-attr]
            else:
                self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.acked)


async def run(argv: list[str]) -> dict[str, Any]:
    work, relay_url, agent, service = Path(argv[0]), argv[1], argv[2], argv[3]
    count, concurrency, seconds = int(argv[4]), int(argv[5]), float(argv[6])
    rounds = max(1, int(argv[7])) if len(argv) > 7 else 1
    key = load_private_key(str(work / "client.key"))
    token = read_secret(str(work / "client.token"), "NBBRIDGE_TOKEN")
    agent_key = parse_public_key((work / "agent.pub").read_text().strip())
    relay = parse_relay_url(relay_url)
    setup_times: list[float] = []
    upgrade_times: list[float] = []
    round_times: list[float] = []
    failed: list[str] = []
    gate = DeferredSemaphore(concurrency)

    async def open_one(links: list[AgentLink], setup: list[float | None], i: int) -> None:
        links[i].startService()
        start = time.monotonic()
        try:
            await links[i].session()
            setup[i] = time.monotonic() - start
            upgrade_times.append(_ws_open.pop(id(links[i]), start) - start)
        except Exception as e:  # every refusal is a figure
            failed.append(f"link {i}: {e}")

    retries: list[str] = []

    @provider(ILogObserver)
    def count_retries(event: dict[str, Any]) -> None:
        # AgentLink logs each failed attempt before it backs off and tries again.
        if str(event.get("log_format", "")).startswith("cannot open link"):
            retries.append(str(event.get("why")))

    globalLogPublisher.addObserver(count_retries)
    t0 = time.monotonic()
    for r in range(rounds):
        links = [AgentLink(reactor, relay, agent, agent_key, key, token) for _ in range(count)]
        setup: list[float | None] = [None] * count
        started = time.monotonic()
        await gatherResults([gate.run(open_one, links, setup, i) for i in range(count)])
        round_times.append(time.monotonic() - started)
        setup_times.extend(s for s in setup if s is not None)
        if r < rounds - 1:
            await gatherResults([link.stopService() for link in links])
    setup_all = time.monotonic() - t0
    up = [i for i in range(count) if setup[i] is not None]
    deadline = time.monotonic() + seconds
    results: list[Deferred[int]] = []

    def sink_loop(deadline: float, done: Deferred[int], addr: object) -> SinkLoop:
        return SinkLoop(deadline, done)

    def no_channel(failure: Failure, done: Deferred[int]) -> None:
        failed.append(f"channel: {failure.value}")
        if not done.called:
            done.callback(0)

    for i in up:
        done: Deferred[int] = Deferred()
        results.append(done)
        factory = Factory()
        factory.buildProtocol = partial(sink_loop, deadline, done)  # type: ignore[method-assign]
        connecting = links[i].endpoint(service).connect(factory)
        connecting.addErrback(no_channel, done)
    t1 = time.monotonic()
    acked = await gatherResults(results) if results else []
    traffic_s = time.monotonic() - t1
    for link in links:
        link.stopService()
    await deferLater(reactor, 0.5)
    return {
        "links": count,
        "up": len(up),
        "rounds": rounds,
        "setup_s": setup_times,
        "upgrade_s": upgrade_times,
        "setup_all_s": setup_all,
        "round_s": round_times,
        "retries": len(retries),
        "retry_reasons": sorted(set(retries))[:5],
        "failed": failed[:20],
        "failed_count": len(failed),
        "acked_bytes": list(acked),
        "traffic_s": traffic_s,
    }


def main() -> None:
    # As twistd runs nbbridge-client: the same process-wide tuning before the links, and the
    # start-up objects frozen out of the collector. Without it, this one process that
    # opens every honest link paid Twisted's per-event log context and Autobahn's debug
    # formatting, which the daemon does not, and was the slowest part of each set-up.
    before_service(reactor)
    after_service()
    out: dict[str, Any] = {}

    def go() -> None:
        d = Deferred.fromCoroutine(run(sys.argv[1:]))
        d.addCallback(out.update)
        d.addErrback(lambda f: out.update(error=f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
