"""Resumption: how soon a suspended connection carries bytes again, and what it costs to keep.

    .venv/bin/python bench/resume.py [--rounds 5] [--channels 300]

Relay, agent and client run in this process, built by their taps (as ``twistd`` would), on
loopback, with an echo service behind the agent. Each round: a user's connection through
the client's forward echoes a byte; the relay is killed (its port closed, every connection
dropped); the user writes one byte while it is away; the relay comes back on the same port.
Printed per round:

* relay back -> first resumed byte: from the relay listening again until the echo of the
  byte written while it was away reaches the user (includes the client's reconnect backoff);
* reconnect -> first resumed byte: from the start of the client's link attempt that
  resumed (after its backoff: TCP, WebSocket, the relay's dial to the agent, a fresh Noise
  handshake, RESUME/RESUMED, the re-sent byte and its echo). Target: 1 s at most;
* baseline, in the same run: a brand-new connection's first echo once the link is back.

Then memory: CHANNELS idle connections through the tunnel are suspended (relay killed), and
the memory Python holds (tracemalloc) is compared with CHANNELS connections made directly to
the echo service: the difference per connection is what a suspended channel costs, both
ends (client and agent) together.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from nbbridge.agent import tap as agent_tap
from nbbridge.client import tap as client_tap
from nbbridge.client._forward import ForwardService
from nbbridge.demo import free_port, write_tunnel_files
from nbbridge.relay import tap as relay_tap
from nbbridge.tunnel import AgentLink


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class User(Protocol):
    def __init__(self) -> None:
        self.waiting: tuple[int, defer.Deferred[float]] | None = None
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.waiting is not None and self.received >= self.waiting[0]:
            (_, d), self.waiting = self.waiting, None
            d.callback(time.perf_counter())

    def expect(self, total: int) -> defer.Deferred[float]:
        d: defer.Deferred[float] = defer.Deferred()
        self.waiting = (total, d)
        return d


async def connect(reactor: Any, port: int) -> User:
    user = User()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: user))
    return user


class Tunnel:
    def __init__(self, reactor: Any, work: Path, echo_port: int) -> None:
        self.reactor = reactor
        self.work = work
        self.port = free_port()
        self.echo_port = echo_port
        self.agent_key = write_tunnel_files(work, "gpu", "laptop")
        self.relay: Any = None

    async def start_relay(self) -> float:
        options = relay_tap.Options()
        options.parseOptions(
            ["--listen", str(self.port), "--config", str(self.work / "relay.toml")]
        )
        self.relay = relay_tap.makeService(options, self.reactor)
        self.relay.startService()
        self.listening = await self.relay.when_listening()
        return time.perf_counter()

    async def kill_relay(self) -> None:
        relay, self.relay = self.relay, None
        await self.listening.stopListening()
        relay.connections.abort_all()
        await relay.connections.when_idle()
        await relay.stopService()

    async def start(self) -> int:
        await self.start_relay()
        url = f"ws://127.0.0.1:{self.port}"
        w = self.work
        options = agent_tap.Options()
        options.parseOptions(
            [
                "--relay",
                url,
                "--name",
                "gpu",
                "--token-file",
                str(w / "agent.token"),
                "--key",
                str(w / "agent.key"),
                "--authorized-keys",
                str(w / "authorized_keys"),
                "--expose",
                f"echo={self.echo_port}",
            ]
        )
        self.agent = agent_tap.makeService(options, self.reactor)
        self.agent.startService()
        options = client_tap.Options()
        options.parseOptions(
            [
                "--relay",
                url,
                "--agent",
                "gpu",
                "--agent-key",
                self.agent_key.public_key.to_text(),
                "--token-file",
                str(w / "client.token"),
                "--key",
                str(w / "client.key"),
                "--forward",
                "echo=0",
                "--status",
                "off",
            ]
        )
        self.client = client_tap.makeService(options, self.reactor)
        self.client.startService()
        [forward] = [s for s in self.client if isinstance(s, ForwardService)]  # type: ignore[attr-defined]
        [self.link] = [s for s in self.client if isinstance(s, AgentLink)]  # type: ignore[attr-defined]
        port = (await forward.listening).getHost().port
        # The agent registers in its own time: retry a first echo until the link carries it.
        while True:
            user = await connect(self.reactor, port)
            d = user.expect(1)
            d.addTimeout(5, self.reactor)
            user.transport.write(b"x")  # type: ignore[union-attr]
            try:
                await d
                user.transport.loseConnection()  # type: ignore[union-attr]
                return int(port)
            except Exception:
                user.transport.abortConnection()  # type: ignore[union-attr]

    async def stop(self) -> None:
        await self.client.stopService()
        await self.agent.stopService()
        if self.relay is not None:
            await self.relay.stopService()


async def round_trip_after_restart(tunnel: Tunnel, port: int) -> tuple[float, float, float]:
    user = await connect(tunnel.reactor, port)
    first = user.expect(1)
    user.transport.write(b"a")  # type: ignore[union-attr]
    await first
    await tunnel.kill_relay()
    # The start of each link attempt (after the backoff): the last one before the byte is
    # the client's reconnect.
    attempts: list[float] = []
    link: Any = tunnel.link
    connect_once = link._connect
    link._connect = lambda: (attempts.append(time.perf_counter()), connect_once())
    resumed: defer.Deferred[float] = defer.Deferred()
    session = tunnel.link.current_session
    assert session is not None
    session.on_resumed = lambda _: resumed.callback(time.perf_counter())
    echoed = user.expect(2)
    user.transport.write(b"b")  # type: ignore[union-attr]
    back = await tunnel.start_relay()
    got = await echoed
    await resumed
    del link._connect
    reconnect = max(t for t in attempts if t <= got)
    # Baseline: a new connection's first echo on the link that just came back.
    fresh = await connect(tunnel.reactor, port)
    started = time.perf_counter()
    d = fresh.expect(1)
    fresh.transport.write(b"c")  # type: ignore[union-attr]
    baseline = await d - started
    fresh.transport.loseConnection()  # type: ignore[union-attr]
    user.transport.loseConnection()  # type: ignore[union-attr]
    return got - back, got - reconnect, baseline


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def memory_per_channel(tunnel: Tunnel, port: int, n: int) -> tuple[float, float]:
    """Bytes per suspended channel through the tunnel, and per direct connection (baseline)."""
    reactor = tunnel.reactor
    tracemalloc.start()
    before = _traced()
    direct = [await connect(reactor, tunnel.echo_port) for _ in range(n)]
    for user in direct:
        d = user.expect(1)
        user.transport.write(b"d")  # type: ignore[union-attr]
        await d
    per_direct = (_traced() - before) / n
    for user in direct:
        user.transport.loseConnection()  # type: ignore[union-attr]
    await task.deferLater(reactor, 0.5, lambda: None)
    before = _traced()
    users = [await connect(reactor, port) for _ in range(n)]
    for user in users:
        d = user.expect(1)
        user.transport.write(b"t")  # type: ignore[union-attr]
        await d
    await tunnel.kill_relay()
    session = tunnel.link.current_session
    assert session is not None and session.suspended_since is not None
    per_tunnel = (_traced() - before) / n
    tracemalloc.stop()
    await tunnel.start_relay()
    for user in users:
        user.transport.loseConnection()  # type: ignore[union-attr]
    return per_tunnel, per_direct


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--channels", type=int, default=300)
    args = parser.parse_args(argv)
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Echo)
    )
    with tempfile.TemporaryDirectory() as tmp:
        tunnel = Tunnel(reactor, Path(tmp), listening.getHost().port)
        port = await tunnel.start()
        rows = []
        for i in range(args.rounds):
            row = await round_trip_after_restart(tunnel, port)
            rows.append(row)
            print(
                f"round {i + 1}: relay back -> first resumed byte {row[0] * 1000:7.1f} ms; "
                f"reconnect -> first resumed byte {row[1] * 1000:6.1f} ms; "
                f"baseline (new connection, first echo) {row[2] * 1000:6.1f} ms",
                flush=True,
            )
        for label, k in (("relay back -> byte", 0), ("reconnect -> byte", 1), ("baseline", 2)):
            values = [r[k] * 1000 for r in rows]
            print(
                f"{label:20} median {statistics.median(values):7.1f} ms, max {max(values):7.1f} ms"
            )
        per_tunnel, per_direct = await memory_per_channel(tunnel, port, args.channels)
        print(
            f"memory, {args.channels} connections: {per_tunnel / 1024:.1f} KiB per suspended "
            f"tunnelled connection (client + agent + user ends), {per_direct / 1024:.1f} KiB per "
            f"direct connection (baseline); a suspended channel costs "
            f"{(per_tunnel - per_direct) / 1024:.1f} KiB"
        )
        await tunnel.stop()
    await listening.stopListening()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
