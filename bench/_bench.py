"""The measurements of the tunnel benchmark: one ``Bench`` runs every test on a chain.

Per run and chain: round trips, then 1000 connections at once (with the RSS they cost, in
the first run), then the single stream (with each process's CPU), then 8 streams, then
the RSS after throughput. ``profile`` repeats a single stream and round trips under py-spy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _profile
from _chains import Chain
from _load import LoadError, open_many, parallel_streams, round_trips, stream
from _procs import Child, cpu_seconds, machine_cpu, rss_kib, tcp_counters

MiB = 1024 * 1024
GB = 1e9
#: Seconds of quiet after the throughput runs before "RSS after throughput" is read.
SETTLE_SECONDS = 3.0


class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        self.runs = args.runs or (1 if args.quick else 3)
        self.single = (args.single_mib or (256 if args.quick else 1024)) * MiB
        self.parallel = (args.parallel_mib or (128 if args.quick else 512)) * MiB
        self.streams = 8
        self.rtt_count = args.round_trips or (1000 if args.quick else 2000)
        self.rtt_warmup = 200
        self.conns = args.conns
        self.timeout = args.timeout

    def describe(self) -> str:
        return (
            f"{self.runs} run(s); single stream {self.single // MiB} MiB, {self.streams} "
            f"streams {self.parallel // MiB} MiB in total, {self.rtt_count} round trips, "
            f"{self.conns} connections"
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    """Runs the chains and keeps every figure, per chain, per run."""

    def __init__(self, settings: Settings, chains: list[Chain], target: Child) -> None:
        self.s = settings
        self.chains = chains
        self.target = target
        self.results: dict[str, Any] = {
            c.name: {"title": c.title, "metrics": {}, "roles": {}, "errors": [], "info": {}}
            for c in chains
        }
        self.dead: set[str] = set()

    # --- bookkeeping ---------------------------------------------------------------------

    def put(self, chain: Chain, key: str, value: float | None) -> None:
        self.results[chain.name]["metrics"].setdefault(key, []).append(value)

    def put_role(self, chain: Chain, role: str, key: str, value: float | None) -> None:
        roles = self.results[chain.name]["roles"]
        roles.setdefault(role, {}).setdefault(key, []).append(value)

    def error(self, chain: Chain, what: str, e: BaseException) -> None:
        text = f"{what}: {e}"
        self.results[chain.name]["errors"].append(text)
        log(f"  {chain.name}: {text}")

    def attempt(self, chain: Chain, what: str, f: Callable[[], Any]) -> Any:
        try:
            return f()
        except (LoadError, OSError, TimeoutError) as e:
            self.error(chain, what, e)
            return None

    # --- the measurements ------------------------------------------------------------------

    def warm_up(self, chain: Chain) -> None:
        """Open the link (nbbridge opens it on first use), then take the idle RSS."""
        self.attempt(chain, "warm-up", lambda: round_trips(chain.port, 50, 0, 100, 30))
        time.sleep(0.5)
        rss = {role: rss_kib(pid) for role, pid in chain.pids.items()}
        for role, kib in rss.items():
            self.put_role(chain, role, "rss_idle_MiB", _mib(kib))
        if rss:
            self.put(chain, "rss_idle_MiB", _mib(_sum(rss.values())))

    def run(self, chain: Chain, run: int) -> None:
        s = self.s
        name = chain.name
        try:
            chain.check_alive()
        except RuntimeError as e:
            self.dead.add(name)
            self.error(chain, f"run {run + 1}", e)
            return
        notes = []

        times = self.attempt(
            chain,
            "round trips",
            lambda: round_trips(chain.port, s.rtt_count, s.rtt_warmup, 100, s.timeout),
        )
        if times:
            ordered = sorted(times)
            p50 = statistics.median(ordered) * 1e6
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6
            self.put(chain, "rtt_p50_us", p50)
            self.put(chain, "rtt_p99_us", p99)
            notes.append(f"rtt p50 {p50:.0f} us p99 {p99:.0f} us")

        before = {role: rss_kib(pid) for role, pid in chain.pids.items()}
        held: dict[str, int | None] = {}

        def while_open() -> None:
            held.update({role: rss_kib(pid) for role, pid in chain.pids.items()})

        tcp0 = tcp_counters()
        elapsed = self.attempt(
            chain, f"open {s.conns}", lambda: open_many(chain.port, s.conns, s.timeout, while_open)
        )
        tcp1 = tcp_counters()
        self.put(chain, "open_s", elapsed)
        # Connections refused by a full accept queue are retried by the kernel after 1 s, 3 s...
        self.put(
            chain,
            "listen_overflows",
            tcp1.get("ListenOverflows", 0) - tcp0.get("ListenOverflows", 0),
        )
        if elapsed is not None:
            notes.append(f"open {s.conns} {elapsed:.3f} s")
        # Memory per connection only in the first run: after a throughput run the processes
        # hold freed heap that new connections reuse, and the difference means nothing.
        if held and run == 0:
            self.put(chain, "rss_conns_MiB", _mib(_sum(held.values())))
            deltas = [(held[r] or 0) - (before.get(r) or 0) for r in held if held[r] is not None]
            self.put(chain, "conn_KiB", sum(deltas) / s.conns)
            for role in held:
                self.put_role(
                    chain, role, "conn_KiB", ((held[role] or 0) - (before[role] or 0)) / s.conns
                )
        # Let the chain close the connections before the next test runs beside it.
        time.sleep(1.0)

        pids = dict(chain.pids, sink=self.target.pid)
        cpu0 = {role: cpu_seconds(pid) for role, pid in pids.items()}
        all0 = machine_cpu()
        seconds = self.attempt(
            chain, "single stream", lambda: stream(chain.port, s.single, s.timeout)
        )
        all1 = machine_cpu()
        cpu1 = {role: cpu_seconds(pid) for role, pid in pids.items()}
        if seconds is not None and all1[1] > all0[1]:
            self.put(chain, "machine_cpu_pct", 100 * (all1[0] - all0[0]) / (all1[1] - all0[1]))
        if seconds is not None:
            mbps = s.single / seconds / 1e6
            self.put(chain, "single_MBps", mbps)
            notes.append(f"single {mbps:.0f} MB/s")
            for role in pids:
                c0, c1 = cpu0[role], cpu1[role]
                if c0 is None or c1 is None:
                    continue
                self.put_role(chain, role, "cpu_s_per_GB", (c1 - c0) / (s.single / GB))
                self.put_role(chain, role, "cpu_pct", 100 * (c1 - c0) / seconds)

        seconds = self.attempt(
            chain,
            f"{s.streams} streams",
            lambda: parallel_streams(chain.port, s.parallel, s.streams, s.timeout),
        )
        if seconds is not None:
            mbps = s.parallel / seconds / 1e6
            self.put(chain, "parallel_MBps", mbps)
            notes.append(f"{s.streams} streams {mbps:.0f} MB/s")

        # Read at idle: nbbridge gives its heap's free memory back within ~2 s of going
        # quiet (nbbridge._memory.IdleTrim); every chain gets the same pause.
        time.sleep(SETTLE_SECONDS)
        after = {role: rss_kib(pid) for role, pid in chain.pids.items()}
        if after:
            self.put(chain, "rss_after_MiB", _mib(_sum(after.values())))
            for role, kib in after.items():
                self.put_role(chain, role, "rss_after_MiB", _mib(kib))
        log(f"  run {run + 1} {name}: " + ", ".join(notes))

    def finish(self) -> None:
        for chain in self.chains:
            after = [v for v in self.results[chain.name]["metrics"].get("rss_after_MiB", []) if v]
            if len(after) >= 2:
                self.put(chain, "rss_drift_pct", 100 * (after[-1] - after[0]) / after[0])

    def profile(self, chain: Chain, out: Path) -> dict[str, Any]:
        """Sample each nbbridge process with py-spy during one more single stream, then
        during round trips (not counted in the table: the sampler perturbs them)."""
        out.mkdir(parents=True, exist_ok=True)
        s = self.s
        phases: dict[str, Any] = {}
        for phase, work in (
            ("stream", lambda: stream(chain.port, s.single, s.timeout)),
            ("round_trips", lambda: round_trips(chain.port, 5 * s.rtt_count, 0, 100, s.timeout)),
        ):
            pids = {r: chain.pids[r] for r in ("client", "relay", "agent") if r in chain.pids}
            samplers = {
                r: _profile.Sampler(pid, out / f"{chain.name}-{phase}-{r}.txt")
                for r, pid in pids.items()
            }
            time.sleep(1.0)  # let py-spy attach
            cpu0 = {r: cpu_seconds(p) for r, p in pids.items()}
            start = time.monotonic()
            result = self.attempt(chain, f"profiled {phase}", work)
            wall = time.monotonic() - start
            cpu1 = {r: cpu_seconds(p) for r, p in pids.items()}
            for sampler in samplers.values():
                sampler.stop()
            profiles: dict[str, Any] = {}
            for role, sampler in samplers.items():
                # Sampling began 1 s before the work: count only the work's share.
                summary = _profile.summarize(sampler.out, wall)
                c0, c1 = cpu0[role], cpu1[role]
                summary["cpu_pct"] = 100 * (c1 - c0) / wall if c0 is not None and c1 else None
                profiles[role] = summary
            if phase == "stream":
                figure = f"{s.single / result / 1e6:.0f} MB/s" if result else "failed"
            else:
                figure = f"p50 {statistics.median(result) * 1e6:.0f} us" if result else "failed"
            log(f"  profiled {phase}: {figure} (py-spy attached)")
            phases[phase] = {"figure": figure, "processes": profiles}
        return phases


def _mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024


def _sum(values: Any) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) if got else None
