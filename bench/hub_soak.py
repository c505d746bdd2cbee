"""Hub soak: 1 sender -> N receivers on one stream of a real relay, for minutes.

    .venv/bin/python bench/hub_soak.py [--receivers 100] [--rate 100] [--size 1024]
                                       [--minutes 1] [--warmup 10] [--queue-bytes N]
                                       [--stalled K]

(with ``PYTHONPATH=src`` in a checkout without an editable install). Starts
``twistd -n --pidfile= nbbridge-relay`` on 127.0.0.1 in a temporary directory (with a
relay.toml whose ``[hub]`` takes ``--queue-bytes``), connects the receivers to
``/hub/out/soak`` and one sender to ``/hub/in/soak`` (Autobahn clients in this process),
and sends ``--rate`` messages a second of ``--size`` bytes. Each message carries its
number and the time it was sent, so every receiver measures latency and counts the
messages it never got. ``--stalled K`` adds K readers that stop reading at once: the relay
must drop their oldest messages and hold at most ``--queue-bytes`` for each, while the
others still get everything.

Prints, for the measured part (after ``--warmup`` seconds): messages sent, delivered
messages/s against the ideal (rate x receivers), drops seen by the receivers and counted
by the relay, p50/p99/max latency, CPU use of the relay and of this process, and the
relay's RSS at start, after the warm-up, every minute and at the end (memory must not grow
after the warm-up).
"""

from __future__ import annotations

import argparse
import array
import json
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater

from _procs import Child, child_env, cpu_seconds, free_port, rss_kib

reactor: Any = _reactor
HEADER = struct.Struct("!Qd")  # message number, send time (time.time())


class Relay:
    """`twistd -n --pidfile= nbbridge-relay` on a free loopback port, its log in WORKDIR."""

    def __init__(self, workdir: Path, queue_bytes: int) -> None:
        self.port = free_port()
        config = workdir / "relay.toml"
        largest = min(queue_bytes, 2 * 1024 * 1024)
        # Every reader comes from 127.0.0.1, and the bench reads the per-topic figures: lift
        # the per-address and per-topic limits and show the stats on this loopback relay.
        config.write_text(
            f"[hub]\nqueue_bytes = {queue_bytes}\nmax_message_size = {largest}\n"
            f"max_queued_bytes = {max(64 * 2**20, 16 * queue_bytes)}\n"
            "max_members = 100000\nmax_members_per_topic = 100000\n"
            'max_members_per_address = 100000\nstats_anonymous = "full"\n'
        )
        twistd = Path(sys.executable).parent / "twistd"
        self.child = Child(
            "relay",
            [
                str(twistd),
                "-n",
                "--pidfile=",
                "nbbridge-relay",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--config",
                str(config),
            ],
            workdir,
            child_env(),
        )
        self.child.wait_for("nbbridge relay listening on")

    @property
    def pid(self) -> int:
        return self.child.pid

    def rss_mib(self) -> float:
        kib = rss_kib(self.pid)
        return float("nan") if kib is None else kib / 1024

    def cpu_seconds(self) -> float:
        seconds = cpu_seconds(self.pid)
        return float("nan") if seconds is None else seconds

    def stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/stats/json"
        with urllib.request.urlopen(url, timeout=30) as response:
            return dict(json.load(response))

    def stop(self) -> None:
        self.child.stop()


class Receiver(WebSocketClientProtocol):
    """Counts messages and gaps, and records latencies once measuring has begun."""

    soak: Soak

    def onOpen(self) -> None:
        self.next_seq: int | None = None
        self.received = 0
        self.missed = 0
        self.soak.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        seq, sent = HEADER.unpack_from(payload)
        if self.next_seq is not None and seq > self.next_seq:
            self.missed += seq - self.next_seq
        self.next_seq = seq + 1
        self.received += 1
        soak = self.soak
        if soak.measuring:
            soak.latencies.append(time.time() - sent)
            soak.delivered += 1

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.soak.closed(self, code, reason)


class StalledReceiver(WebSocketClientProtocol):
    """A reader that stops reading as soon as it is in: the hub must cap what it holds for it."""

    soak: Soak

    def onOpen(self) -> None:
        self.transport.pauseProducing()
        self.soak.opened(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.soak.closed(self, code, reason)


class Sender(WebSocketClientProtocol):
    soak: Soak

    def onOpen(self) -> None:
        self.soak.opened(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.soak.closed(self, code, reason)


class Soak:
    """The clients, the send schedule and the figures."""

    TICK = 0.01

    def __init__(self, args: argparse.Namespace, relay: Relay) -> None:
        self.args = args
        self.relay = relay
        self.measuring = False
        self.latencies = array.array("d")
        self.delivered = 0
        self.sent = 0
        self.sent_measured = 0
        self.late_ticks = 0
        self.receivers: list[Receiver] = []
        self.stalled: list[StalledReceiver] = []
        self.sender: Sender | None = None
        self._waiting = args.receivers + args.stalled + 1
        self.all_open: Deferred[None] = Deferred()
        self.unexpected_closes: list[tuple[int | None, str | None]] = []
        self.stopping = False
        self.rss: list[tuple[str, float]] = []
        self.padding = b"\x00" * max(0, args.size - HEADER.size)

    def connect(self) -> None:
        routes: list[tuple[str, Any]] = [("/hub/out/soak", Receiver)] * self.args.receivers
        routes += [("/hub/out/soak", StalledReceiver)] * self.args.stalled
        for path, protocol in [*routes, ("/hub/in/soak", Sender)]:
            factory = WebSocketClientFactory(f"ws://127.0.0.1:{self.relay.port}{path}")
            factory.protocol = protocol
            factory.setProtocolOptions(autoFragmentSize=0, failByDrop=False)
            protocol.soak = self
            reactor.connectTCP("127.0.0.1", self.relay.port, factory)

    def opened(self, protocol: WebSocketClientProtocol) -> None:
        if isinstance(protocol, Receiver):
            self.receivers.append(protocol)
        elif isinstance(protocol, StalledReceiver):
            self.stalled.append(protocol)
        else:
            self.sender = protocol  # type: ignore[assignment]
        self._waiting -= 1
        if self._waiting == 0:
            self.all_open.callback(None)

    def closed(
        self, protocol: WebSocketClientProtocol, code: int | None, reason: str | None
    ) -> None:
        if not self.stopping:
            self.unexpected_closes.append((code, reason))

    def sample_rss(self, label: str) -> None:
        self.rss.append((label, self.relay.rss_mib()))
        print(f"  relay RSS {label}: {self.rss[-1][1]:.1f} MiB", flush=True)

    async def run(self) -> None:
        args = self.args
        self.connect()
        await self.all_open
        print(
            f"{args.receivers} receivers, {args.stalled} stalled ones and the sender connected",
            flush=True,
        )
        self.sample_rss("at start")
        start = time.monotonic()
        warm_end = start + args.warmup
        end = warm_end + args.minutes * 60
        relay_cpu = {"start": self.relay.cpu_seconds()}
        own_cpu = {"start": time.process_time()}
        next_minute = warm_end + 60
        done: Deferred[None] = Deferred()
        assert self.sender is not None
        sender = self.sender

        def tick() -> None:
            nonlocal next_minute
            now = time.monotonic()
            if not self.measuring and now >= warm_end:
                self.measuring = True
                self.sent_measured = 0
                relay_cpu["warm"] = self.relay.cpu_seconds()
                own_cpu["warm"] = time.process_time()
                self.measure_start = now
                self.sample_rss("after warm-up")
            if now >= end:
                loop.stop()
                done.callback(None)
                return
            if self.measuring and now >= next_minute:
                self.sample_rss(f"after {round((now - warm_end) / 60)} min")
                next_minute += 60
            due = int((now - start) * args.rate) - self.sent
            if due > args.rate * self.TICK * 5:
                self.late_ticks += 1
            for _ in range(max(0, due)):
                sender.sendMessage(HEADER.pack(self.sent, time.time()) + self.padding, True)
                self.sent += 1
                if self.measuring:
                    self.sent_measured += 1

        loop = LoopingCall(tick)
        loop.start(self.TICK)
        await done
        measured = time.monotonic() - self.measure_start
        relay_cpu["end"] = self.relay.cpu_seconds()
        own_cpu["end"] = time.process_time()
        # Let what is in flight arrive (bounded), then read the relay's own counters.
        await deferLater(reactor, 1.0)
        self.sample_rss("at end")
        self.report(measured, relay_cpu, own_cpu)
        self.stopping = True
        for stalled in self.stalled:
            stalled.transport.resumeProducing()
        for protocol in [*self.receivers, *self.stalled, sender]:
            protocol.sendClose(1000)
        await deferLater(reactor, 2.0)

    def report(self, measured: float, relay_cpu: dict[str, float], own: dict[str, float]) -> None:
        args = self.args
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000 if lat else float("nan")

        stats = self.relay.stats()
        dropped_relay = stats["totals"]["dropped"]
        queued = stats["totals"]["queued_bytes"]
        missed = sum(r.missed for r in self.receivers)
        ideal = args.rate * args.receivers
        print()
        print(
            f"hub soak: 1 sender -> {args.receivers} receivers, {args.rate} msg/s of "
            f"{args.size} B, {args.minutes} min measured after {args.warmup} s warm-up"
        )
        print(
            f"  sent (measured)       {self.sent_measured} messages "
            f"({self.sent_measured / measured:.1f}/s; late sender ticks: {self.late_ticks})"
        )
        print(
            f"  delivered             {self.delivered / measured:,.0f} msg/s "
            f"(ideal {ideal:,}/s, {100 * self.delivered / measured / ideal:.1f}%)"
        )
        print(
            f"  drops                 seen by receivers {missed}, counted by relay {dropped_relay}"
        )
        if args.stalled:
            readers = sum(t["readers"] for t in stats["topics"])
            left = readers - args.receivers
            print(
                f"  stalled readers       {args.stalled}, {left} still connected (the relay's "
                f"heartbeat closes a peer silent for ping_interval + ping_timeout); the relay "
                f"holds {queued / 2**20:.2f} MiB queued (cap {args.queue_bytes / 2**20:.2f} MiB "
                f"each)"
            )
        print(
            f"  latency               p50 {pct(50):.2f} ms  p99 {pct(99):.2f} ms  "
            f"max {pct(100):.2f} ms  ({len(lat):,} samples)"
        )
        relay_pct = 100 * (relay_cpu["end"] - relay_cpu["warm"]) / measured
        own_pct = 100 * (own["end"] - own["warm"]) / measured
        print(f"  relay CPU             {relay_pct:.1f}% of one core; bench clients {own_pct:.1f}%")
        rss = dict(self.rss)
        print(
            f"  relay RSS             start {rss['at start']:.1f} MiB, after warm-up "
            f"{rss['after warm-up']:.1f} MiB, end {rss['at end']:.1f} MiB "
            f"(growth after warm-up {rss['at end'] - rss['after warm-up']:+.1f} MiB)"
        )
        if self.unexpected_closes:
            print(f"  UNEXPECTED CLOSES     {self.unexpected_closes[:5]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receivers", type=int, default=100)
    parser.add_argument(
        "--stalled", type=int, default=0, help="extra readers that never read (drops, capped)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second")
    parser.add_argument("--size", type=int, default=1024, help="bytes per message (>= 16)")
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--queue-bytes", type=int, default=4 * 1024 * 1024)
    args = parser.parse_args()
    if args.size < HEADER.size:
        parser.error(f"--size must be at least {HEADER.size}")

    with tempfile.TemporaryDirectory(prefix="hub-soak-") as tmp:
        relay = Relay(Path(tmp), args.queue_bytes)
        print(f"relay pid {relay.pid} on 127.0.0.1:{relay.port}", flush=True)
        soak = Soak(args, relay)
        failure: list[Any] = []

        def run() -> None:
            d = Deferred.fromCoroutine(soak.run())
            d.addErrback(failure.append)
            d.addBoth(lambda _: reactor.stop())

        try:
            reactor.callWhenRunning(run)
            reactor.run()
        finally:
            relay.stop()
        if failure:
            failure[0].raiseException()


if __name__ == "__main__":
    main()
