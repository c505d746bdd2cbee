"""Throughput of MuxSessions joined by an in-memory pipe, against writing to the pipe directly.

    .venv/bin/python bench/mux_pipe.py [--megabytes 200] [--runs 3]

Prints MB/s (min/median/max over the runs) for: the pipe alone (direct), one channel and
8 channels, without and with the Noise encryption, each with its ratio to direct. Everything
runs in this one process on one core, with a synchronous pump, so the figures are the CPU
cost of the code paths, not of sockets.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from nbbridge.crypto import AuthorizedKeys, Initiator, PrivateKey, Responder, SecureProtocol
from nbbridge.mux import Channel, MuxSession

CHUNK = 64 * 1024


class _SinkTransport:
    """Stands for a local TCP connection that swallows everything instantly."""

    def __init__(self) -> None:
        self.received = 0

    def write(self, data: bytes) -> None:
        self.received += len(data)

    def writeSequence(self, data: list[bytes]) -> None:
        for d in data:
            self.write(d)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def getPeer(self) -> None:
        return None

    def getHost(self) -> None:
        return None


@implementer(IStreamClientEndpoint)
class _SinkEndpoint:
    def __init__(self) -> None:
        self.sinks: list[_SinkTransport] = []

    def connect(self, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        transport = _SinkTransport()
        self.sinks.append(transport)
        protocol.makeConnection(transport)
        return succeed(protocol)


class _Writer:
    """A push producer writing ``total`` bytes into a channel as fast as credit allows."""

    def __init__(self, channel: Channel, total: int) -> None:
        self.channel = channel
        self.left = total
        self.paused = False
        self.block = b"\x5a" * CHUNK
        channel.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.left = 0

    def step(self) -> None:
        while not self.paused and self.left > 0:
            n = min(CHUNK, self.left)
            self.left -= n
            self.channel.write(self.block if n == CHUNK else self.block[:n])


def _pair(encrypted: bool, clock: Clock) -> tuple[Protocol, Protocol, MuxSession, _SinkEndpoint]:
    sink = _SinkEndpoint()
    a = MuxSession(initiator=True)
    b = MuxSession(initiator=False, acceptor=lambda request: sink)
    if not encrypted:
        return a, b, a, sink
    client, agent = PrivateKey.generate(), PrivateKey.generate()
    sa = SecureProtocol(a, Initiator(client, agent.public_key), clock)
    sb = SecureProtocol(b, Responder(agent, AuthorizedKeys.from_keys([client.public_key])), clock)
    return sa, sb, a, sink


def run_mux(total: int, channels: int, encrypted: bool) -> float:
    clock = Clock()
    left, right, session, sink = _pair(encrypted, clock)
    pump = iosim.connect(
        right,
        iosim.makeFakeServer(right),
        left,
        iosim.makeFakeClient(left),
        greet=False,
        clock=clock,
    )

    def settle() -> None:
        for _ in range(10):
            pump.flush()
            clock.advance(0)

    settle()
    opens = [session.open("sink") for _ in range(channels)]
    settle()
    chans: list[Channel] = []
    for d in opens:
        d.addCallback(chans.append)
    writers = [_Writer(c, total // channels) for c in chans]
    start = time.perf_counter()
    while sum(s.received for s in sink.sinks) < total:
        for w in writers:
            w.step()
        clock.advance(0)
        pump.pump()
    return total / (time.perf_counter() - start) / 1e6


def run_direct(total: int) -> float:
    counter = _Counter()
    writer = Protocol()
    clock = Clock()
    pump = iosim.connect(
        counter,
        iosim.makeFakeServer(counter),
        writer,
        iosim.makeFakeClient(writer),
        greet=False,
        clock=clock,
    )
    block = b"\x5a" * CHUNK
    start = time.perf_counter()
    sent = 0
    while counter.received < total:
        # Write as much per pump as the mux runs do per pump: one window's worth.
        for _ in range(4):
            if sent < total:
                writer.transport.write(block)  # type: ignore[union-attr]
                sent += CHUNK
        pump.pump()
    return total / (time.perf_counter() - start) / 1e6


class _Counter(Protocol):
    received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)


def _stats(f: Callable[[], float], runs: int) -> tuple[float, float, float]:
    values = sorted(f() for _ in range(runs))
    return values[0], statistics.median(values), values[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    total = args.megabytes * 1024 * 1024
    direct = _stats(lambda: run_direct(total), args.runs)
    rows = [("direct (pipe alone)", direct)]
    for encrypted in (False, True):
        for channels in (1, 8):
            label = f"mux, {channels} channel{'s' if channels > 1 else ''}, " + (
                "encrypted" if encrypted else "plain"
            )
            rows.append(
                (label, _stats(lambda c=channels, e=encrypted: run_mux(total, c, e), args.runs))
            )
    print(
        f"{args.megabytes} MiB per run, {args.runs} runs; MB/s min / median / max; "
        "ratio = median / direct median"
    )
    for label, (lo, med, hi) in rows:
        print(f"  {label:32} {lo:8.0f} {med:8.0f} {hi:8.0f}   x{med / direct[1]:.2f}")


if __name__ == "__main__":
    main()
