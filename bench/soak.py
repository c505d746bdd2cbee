"""Soak: mixed tunnel and hub traffic through one relay for a long time; are the daemons flat?

    .venv/bin/python bench/soak.py [--minutes 60] [--warmup 5] [--every 60]
                                   [--png bench/soak.png] [--json soak.json]

(run by hand, about an hour; with ``PYTHONPATH=src`` in a checkout without an editable
install; the plot needs ``pip install matplotlib``). Starts on 127.0.0.1 one target
(``_target.py``: sink + echo) and the nbbridge chain of bench/tunnel.py (``twistd -n
nbbridge-relay``, ``-agent``, ``-client`` with a forward), each daemon under ``_probe.py``:
plain twistd plus a SIGUSR1 handler that appends the process's live and pending (not yet
fired) Deferreds, counted with ``gc.get_objects()``, to a file. Nothing in nbbridge changes.

Traffic, all at once and each bounded by the end time:

* tunnel bulk: 16 MiB through the forward to the sink, then a pause of 1 s, again and again;
* tunnel interactive: 200 round trips of 100 B on a fresh connection, a pause of 0.2 s;
* tunnel short connections: 50 opened at once, each echoes a byte, all closed; every 1 s;
* hub: one sender at ``--hub-rate`` messages/s of 1 KiB to ``--hub-readers`` readers on one
  topic (the Receiver and Sender of hub_soak.py), and every 5 s one more reader that joins,
  reads for 3 s and leaves (member churn).

Every ``--every`` seconds it samples, per daemon: RSS (VmRSS), RSS after a full collection
and ``malloc_trim(0)`` (SIGUSR1; what the process keeps), live Python objects (reachable
after that collection), open file descriptors (/proc/PID/fd) and pending Deferreds
(SIGUSR1), at a quiet moment: the tunnel threads are
held before their next operation and the sample taken 2 s after the last one ended (the
hub keeps going), so it shows what the daemons keep, not what is in flight. At the end it
prints, per daemon and figure, the change from the first sample after ``--warmup``
minutes to the last, and the spread (max - min) over that span, both in % of the first;
"flat" means both within 5 %. With ``--png`` it plots the four figures over time, warm-up marked.
The soft fd limit is raised to the hard limit (``resource.setrlimit``) before anything
starts; the daemons inherit it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor as _reactor
from twisted.internet.task import LoopingCall

from _chains import ROLES, Nbbridge
from _load import LoadError, open_many, round_trips, stream
from _procs import Child, fd_count, free_port, machine, raise_fd_limit, rss_kib
from hub_soak import HEADER, Receiver, Sender

reactor: Any = _reactor
MiB = 1024 * 1024
FIGURES = (
    ("rss_MiB", "RSS, MiB"),
    ("settled_MiB", "RSS after gc + trim, MiB"),
    ("objects", "live Python objects"),
    ("fds", "open fds"),
    ("pending", "pending Deferreds"),
)
#: a figure is flat when its change and its spread after the warm-up stay within this, %
FLAT_PCT = 5.0
#: seconds between pausing the tunnel traffic and sampling: closes travel through the chain
QUIET_SECONDS = 2.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class SoakChain(Nbbridge):
    """The tunnel chain with each daemon under _probe.py; the hub is on (its default)."""

    name = "soak"
    probe = True


class ChurnReader(Receiver):
    """A hub reader that leaves a few seconds after it joined."""


class Hub:
    """The hub's side of the traffic: the interface hub_soak's protocols call back into."""

    def __init__(self, port: int, readers: int, rate: float) -> None:
        self.port = port
        self.readers = readers
        self.rate = rate
        self.measuring = True
        self.latencies: list[float] = []
        self.delivered = 0
        self.sent = 0
        self.joined = 0
        self.unexpected_closes: list[tuple[int | None, str | None]] = []
        self.stopping = False
        self.sender: Sender | None = None
        self.members: list[WebSocketClientProtocol] = []
        self._loops: list[LoopingCall] = []
        self._started = 0.0
        self._padding = b"\x00" * (1024 - HEADER.size)

    def _connect(self, path: str, protocol: type[WebSocketClientProtocol]) -> None:
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{self.port}{path}")
        factory.protocol = protocol
        factory.setProtocolOptions(autoFragmentSize=0, failByDrop=False)
        protocol.soak = self  # type: ignore[attr-defined]
        reactor.connectTCP("127.0.0.1", self.port, factory)

    def start(self) -> None:
        for _ in range(self.readers):
            self._connect("/hub/out/soak", Receiver)
        self._connect("/hub/in/soak", Sender)
        self._started = time.monotonic()
        send = LoopingCall(self._send)
        send.start(0.05)
        churn = LoopingCall(self._connect, "/hub/out/soak", ChurnReader)
        churn.start(5.0, now=False)
        self._loops = [send, churn]

    def _send(self) -> None:
        if self.sender is None:
            return
        due = int((time.monotonic() - self._started) * self.rate) - self.sent
        for _ in range(max(0, due)):
            self.sender.sendMessage(HEADER.pack(self.sent, time.time()) + self._padding, True)
            self.sent += 1

    def opened(self, protocol: WebSocketClientProtocol) -> None:
        self.joined += 1
        if isinstance(protocol, Sender):
            self.sender = protocol
        elif isinstance(protocol, ChurnReader):
            reactor.callLater(3.0, protocol.sendClose, 1000)
            return
        self.members.append(protocol)

    def closed(
        self, protocol: WebSocketClientProtocol, code: int | None, reason: str | None
    ) -> None:
        if not self.stopping and not isinstance(protocol, ChurnReader):
            self.unexpected_closes.append((code, reason))
        if protocol is self.sender:
            self.sender = None

    def stop(self) -> None:
        self.stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for member in self.members:
            member.sendClose(1000)


class Traffic:
    """The tunnel's side: one thread per kind of load, each until the end time."""

    def __init__(self, port: int, end: float) -> None:
        self.port = port
        self.end = end
        self.done: dict[str, int] = {}
        self.errors: dict[str, list[str]] = {}
        self.threads: list[threading.Thread] = []
        self._go = threading.Event()
        self._go.set()
        self._busy = 0
        self._lock = threading.Condition()

    def _loop(self, kind: str, work: Callable[[], Any], pause: float) -> None:
        while time.monotonic() < self.end:
            self._go.wait(120)
            with self._lock:
                self._busy += 1
            try:
                work()
                self.done[kind] = self.done.get(kind, 0) + 1
            except (LoadError, OSError, TimeoutError) as e:
                self.errors.setdefault(kind, []).append(f"{time.strftime('%H:%M:%S')} {e}")
                time.sleep(1.0)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._lock.notify_all()
            time.sleep(pause)

    def pause(self, timeout: float = 90.0) -> None:
        """Hold every thread before its next operation; wait until none is mid-operation.

        Samples are taken at such a quiet moment (the hub keeps going), so that they show
        what the daemons keep, not what is in flight at that instant.
        """
        self._go.clear()
        with self._lock:
            self._lock.wait_for(lambda: self._busy == 0, timeout)

    def resume(self) -> None:
        self._go.set()

    def start(self) -> None:
        port = self.port
        kinds: list[tuple[str, Callable[[], Any], float]] = [
            ("bulk 16 MiB", lambda: stream(port, 16 * MiB, 60), 1.0),
            ("200 round trips", lambda: round_trips(port, 200, 0, 100, 60), 0.2),
            ("50 short conns", lambda: open_many(port, 50, 60, lambda: None), 1.0),
        ]
        for kind, work, pause in kinds:
            t = threading.Thread(target=self._loop, args=(kind, work, pause), daemon=True)
            t.start()
            self.threads.append(t)

    def join(self) -> None:
        for t in self.threads:
            t.join(90)


def probe(chain: SoakChain, role: str, pid: int, timeout: float = 10.0) -> dict[str, Any]:
    """Ask ROLE's daemon for its counts (SIGUSR1): pending Deferreds and live objects.

    The count of reachable objects tells a leak from the heap's level, and so does the RSS
    after a trim (``_probe.settled_rss_kib``): the raw RSS moves by megabytes with whether
    the idle trim ran before the sample, these do not.
    """
    path = chain.probe_file(role)
    before = path.stat().st_size if path.exists() else 0
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > before:
            text = path.read_text()
            if text.endswith("\n"):
                counts: dict[str, Any] = json.loads(text.splitlines()[-1])
                return counts
        time.sleep(0.05)
    return {}


def sample(chain: SoakChain, started: float) -> dict[str, Any]:
    row: dict[str, Any] = {"minute": round((time.monotonic() - started) / 60, 2)}
    for role in ROLES:
        pid = chain.pids[role]
        kib = rss_kib(pid)
        counts = probe(chain, role, pid)
        settled = counts.get("settled_kib")
        row[role] = {
            "rss_MiB": None if kib is None else round(kib / 1024, 2),
            "settled_MiB": None if settled is None else round(settled / 1024, 2),
            "objects": counts.get("objects"),
            "fds": fd_count(pid),
            "pending": counts.get("pending"),
        }
    return row


def flatness(samples: list[dict[str, Any]], warmup: float) -> dict[str, dict[str, Any]]:
    """Per role and figure: first and last value after the warm-up, change and spread, %."""
    after = [s for s in samples if s["minute"] >= warmup]
    out: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        out[role] = {}
        for key, _label in FIGURES:
            values = [s[role][key] for s in after if s[role][key] is not None]
            if len(values) < 2:
                continue
            first, last = values[0], values[-1]
            base = first or 1
            change = 100 * (last - first) / base
            spread = 100 * (max(values) - min(values)) / base
            out[role][key] = {
                "first": first,
                "last": last,
                "min": min(values),
                "max": max(values),
                "change_pct": round(change, 1),
                "spread_pct": round(spread, 1),
                "flat": abs(change) <= FLAT_PCT and spread <= FLAT_PCT,
            }
    return out


def plot(samples: list[dict[str, Any]], warmup: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(FIGURES), 1, figsize=(9, 12), sharex=True)
    minutes = [s["minute"] for s in samples]
    for ax, (key, label) in zip(axes, FIGURES, strict=True):
        for role in ROLES:
            ax.plot(minutes, [s[role][key] for s in samples], marker="o", ms=3, label=role)
        ax.axvline(warmup, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="lower right", ncol=3)
    axes[0].set_title(title, fontsize=10)
    axes[-1].set_xlabel("minutes (dashed: end of warm-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long, in all")
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes not judged")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--hub-readers", type=int, default=20)
    parser.add_argument("--hub-rate", type=float, default=50.0, help="hub messages/s")
    parser.add_argument("--png", type=Path, help="plot the samples into this PNG")
    parser.add_argument("--json", type=Path, help="write the samples here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if args.warmup >= args.minutes:
        parser.error("--warmup must be shorter than --minutes")

    soft, now = raise_fd_limit()
    info: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine()}
    log(f"soak: fd soft limit {soft} -> {now}; load average {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix="nbbridge-soak-"))
    target_port = free_port()
    target = Child(
        "target",
        [sys.executable, str(Path(__file__).with_name("_target.py")), str(target_port)],
        work,
    )
    chain = SoakChain(work, target_port)
    samples: list[dict[str, Any]] = []
    failure: list[BaseException] = []
    hub: Hub | None = None
    traffic: Traffic | None = None
    try:
        target.wait_listening(target_port)
        chain.start()
        round_trips(chain.port, 20, 0, 100, 30)  # the client opens its link on first use
        started = time.monotonic()
        end = started + args.minutes * 60
        hub = Hub(chain.relay_port, args.hub_readers, args.hub_rate)
        traffic = Traffic(chain.port, end)

        def sampler() -> None:
            try:
                next_at = started
                while True:
                    now = time.monotonic()
                    if now >= next_at:
                        chain.check_alive()
                        traffic.pause()
                        time.sleep(QUIET_SECONDS)
                        row = sample(chain, started)
                        traffic.resume()
                        samples.append(row)
                        log(
                            f"  {row['minute']:6.1f} min  "
                            + "  ".join(
                                f"{r} {row[r]['rss_MiB']} MiB ({row[r]['settled_MiB']} settled) "
                                f"{row[r]['objects']} objects "
                                f"{row[r]['fds']} fds {row[r]['pending']} pending"
                                for r in ROLES
                            )
                        )
                        next_at += args.every
                        if next_at > end + 1:
                            break
                    time.sleep(min(1.0, max(0.0, next_at - time.monotonic())))
            except BaseException as e:  # reported after the reactor stops
                failure.append(e)
            finally:
                reactor.callFromThread(finish)

        def finish() -> None:
            # Close the hub members first, so the reactor's stop does not drop them.
            if hub is not None:
                hub.stop()
            reactor.callLater(2.0, reactor.stop)

        def begin() -> None:
            assert hub is not None and traffic is not None
            hub.start()
            traffic.start()
            threading.Thread(target=sampler, daemon=True).start()

        reactor.callWhenRunning(begin)
        reactor.run()
        traffic.end = 0.0  # ended early (Ctrl-C): the threads stop after their operation
        traffic.join()
    finally:
        chain.stop()
        target.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    if failure:
        raise SystemExit(f"soak stopped early: {failure[0]}")

    assert hub is not None and traffic is not None
    ran = samples[-1]["minute"] if samples else 0.0
    flat = flatness(samples, args.warmup)
    info["loadavg_end"] = list(os.getloadavg())
    print(
        f"soak: {ran:.1f} min of mixed traffic, sampled every {args.every:g} s, warm-up "
        f"{args.warmup:g} min; load average {info['machine']['loadavg'][0]:.2f} at start, "
        f"{info['loadavg_end'][0]:.2f} at end"
    )
    print(
        "  tunnel done: "
        + ", ".join(f"{n} x {kind}" for kind, n in traffic.done.items())
        + f"; hub: {hub.sent} messages sent, {hub.delivered} delivered to readers, "
        f"{hub.joined} members joined (churn included)"
    )
    for kind, errors in traffic.errors.items():
        print(f"  errors in {kind}: {len(errors)}, first: {errors[0]}")
    if hub.unexpected_closes:
        print(f"  hub members closed unexpectedly: {hub.unexpected_closes[:5]}")
    print(
        "  after warm-up (first -> last; change, spread in % of first; "
        f"flat = both <= {FLAT_PCT:g} %):"
    )
    for role in ROLES:
        for key, label in FIGURES:
            f = flat[role].get(key)
            if f is None:
                continue
            print(
                f"    {role:6} {label:18} {f['first']:>8} -> {f['last']:>8}  "
                f"change {f['change_pct']:+6.1f} %  spread {f['spread_pct']:5.1f} %  "
                f"min {f['min']} max {f['max']}  {'flat' if f['flat'] else 'NOT FLAT'}"
            )
    if args.png:
        title = (
            f"nbbridge soak: {ran:.0f} min, tunnel bulk + round trips + short connections, "
            f"hub 1 -> {args.hub_readers} at {args.hub_rate:g}/s + churn"
        )
        plot(samples, args.warmup, args.png, title)
        print(f"  plot: {args.png}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    **info,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "samples": samples,
                    "flatness": flat,
                    "done": traffic.done,
                    "errors": traffic.errors,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
