"""Load: hostile slow connections beside honest links, 10 000 channels, 1 000 connections/s.

    .venv/bin/python bench/load.py [--hostile 2000] [--links 100] [--channels 10000]
                                   [--rate 1000] [--seconds 60] [--only hostile,channels,short]

(with ``PYTHONPATH=src`` in a checkout without an editable install). Starts on 127.0.0.1
one target (``_target.py``: sink + echo) and the nbbridge chain of bench/tunnel.py
(``twistd -n nbbridge-relay``, ``-agent``, ``-client`` with a forward to the target, run
under ``_probe.py``, which is twistd itself plus a SIGUSR1 Deferred counter), then:

1. **Hostile load.** ``_honest.py`` (a child process, one reactor) opens ``--links``
   links to the agent through the relay, ``--concurrency`` at a time, timing each link's
   set-up (``--setup-rounds`` times, the times pooled), then keeps one channel per link
   sinking 256 KiB blocks for ``--traffic`` seconds: honest throughput. First on a quiet
   relay (the reference), then again while ``--hostile`` connections, from
   ``--hostile-addresses`` loopback source addresses (127.0.1.1, 127.0.1.2, ...; honest
   links come from 127.0.0.1), each send an unfinished HTTP upgrade request one byte
   every ``--drip`` seconds (slowloris); one the relay closes is opened again 1 s later.
   The flood is ``_slowloris.py``, a lean process of its own (its CPU, shown beside the
   figures, is not the relay's cost). The figures are the ratios hostile / quiet; the
   target is within 20 %. Beside them, the SYNs the kernel dropped at full accept queues
   during each run (TcpExt ListenOverflows: machine-wide, so other processes' count too).
   ``--relay-first`` (nice -10 for the relay) with ``--attacker-idle`` stands in for a
   relay on a machine of its own and an attacker elsewhere: on these two shared cores, at
   equal priority, the relay otherwise waits for a core behind the honest client, the agent
   and the attacker after each of the flood's wake-ups.
   With ``--decoy``, the honest links also run once while the same flood knocks at a
   second, idle relay on this machine: what the flood's processes take from the shared
   cores, told apart from what the flood costs inside the honest relay.
2. **Idle channels.** ``--channels`` connections to the client's forward, all held open,
   each a channel over the client's one link (opened ``--batch`` at a time, each echoing a
   byte); time, and RSS / fds of each daemon per channel. Reference: the same count
   straight to the target. A link carries at most 4096 channels unless told otherwise,
   so the agent and the client get ``--max-channels`` (default 12000; 0 keeps theirs).
3. **Short connections.** ``--rate`` connections a second for ``--seconds`` to the forward,
   each connect, echo one byte, close (at most ``--in-flight`` at once); reference: the same
   straight to the target. RSS and fds of each daemon before and after (a leak check).

Prints each figure with its reference from the same run and the load average at start and
end. The soft fd limit is raised to the hard limit (``resource.setrlimit``) first; the
daemons inherit it. Every phase is bounded in time and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _chains import ROLES, Nbbridge
from _load import open_many, round_trips, short_connections
from _procs import (
    Child,
    child_env,
    cpu_seconds,
    fd_count,
    free_port,
    machine_cpu,
    raise_fd_limit,
    rss_kib,
    tcp_counters,
)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class LoadChain(Nbbridge):
    """The tunnel chain, daemons under _probe.py, the relay letting 100+ links reach one agent."""

    name = "load"
    probe = True
    relay_extra = "[limits]\nlinks_per_agent = 1000\nlinks_per_client = 1000\n"


@contextlib.contextmanager
def running_chain(prefix: str) -> Iterator[LoadChain]:
    """A target and a `LoadChain` to it in a fresh work directory (PREFIX), up and with the
    client's link open; stopped, and the directory removed, on leaving."""
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    target_port = free_port()
    target = Child(
        "target",
        [sys.executable, str(Path(__file__).with_name("_target.py")), str(target_port)],
        work,
    )
    chain = LoadChain(work, target_port)
    try:
        target.wait_listening(target_port)
        chain.start()
        round_trips(chain.port, 20, 0, 100, 30)  # the client opens its link on first use
        yield chain
    finally:
        chain.stop()
        target.stop()
        shutil.rmtree(work, ignore_errors=True)


def daemons(chain: Nbbridge) -> dict[str, dict[str, float | None]]:
    """RSS (MiB), open fds and CPU seconds of each daemon, now."""
    out: dict[str, dict[str, float | None]] = {}
    for role in ROLES:
        pid = chain.pids[role]
        kib = rss_kib(pid)
        out[role] = {
            "rss_MiB": None if kib is None else kib / 1024,
            "fds": fd_count(pid),
            "cpu_s": cpu_seconds(pid),
        }
    return out


# --- 1. hostile slow connections beside honest links -------------------------------------


class Flood:
    """``_slowloris.py`` in a process of its own; its figures are its last JSON line."""

    def __init__(self, work: Path, port: int, args: argparse.Namespace) -> None:
        self.child = Child(
            "slowloris",
            [
                sys.executable,
                str(Path(__file__).with_name("_slowloris.py")),
                str(port),
                str(args.hostile),
                str(args.hostile_addresses),
                str(args.drip),
                *(["idle"] if args.attacker_idle else []),
            ],
            work,
        )

    @property
    def pid(self) -> int:
        return self.child.pid

    def build_up(self, count: int) -> None:
        """Wait until COUNT connections have all been started (500 a second), then a few drips."""
        time.sleep(count / 500 + 10)

    def figures(self) -> dict[str, Any]:
        lines = [ln for ln in self.child.log_path.read_text().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {"open": 0}

    def stop(self) -> dict[str, Any]:
        """Stop the flood; its final figures."""
        self.child.stop()
        return self.figures()


def honest_command(
    chain: Nbbridge, links: int, concurrency: int, traffic: float, rounds: int
) -> list[str]:
    """_honest.py's command line: LINKS links to CHAIN's agent, CONCURRENCY opening at a time,
    set up ROUNDS times, then TRAFFIC seconds of sink blocks on each."""
    return [
        sys.executable,
        str(Path(__file__).with_name("_honest.py")),
        str(chain.work),
        f"ws://127.0.0.1:{chain.relay_port}",
        "bench",
        "bench",
        str(links),
        str(concurrency),
        str(traffic),
        str(rounds),
    ]


def honest(
    chain: Nbbridge,
    args: argparse.Namespace,
    label: str,
    traffic: float | None = None,
    attacker: int | None = None,
    setup_rounds: int | None = None,
) -> dict[str, Any]:
    """Run _honest.py once (blocking); its JSON result, with the relay's figures.

    ATTACKER: the pid of the flood running meanwhile, whose CPU is reported too."""
    traffic = args.traffic if traffic is None else traffic
    before = daemons(chain)
    all0 = machine_cpu()
    own0 = cpu_seconds(attacker) if attacker else None
    overflows0 = tcp_counters().get("ListenOverflows", 0)
    rounds = args.setup_rounds if setup_rounds is None else setup_rounds
    child = Child(
        f"honest-{label}",
        honest_command(chain, args.links, args.concurrency, traffic, rounds),
        chain.work,
        child_env(),
    )
    try:
        child.popen.wait(traffic + 240)
    finally:
        child.stop()
    after = daemons(chain)
    all1 = machine_cpu()
    own1 = cpu_seconds(attacker) if attacker else None
    overflows = tcp_counters().get("ListenOverflows", 0) - overflows0
    lines = [ln for ln in child.log_path.read_text().splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"_honest.py printed no result; see {child.log_path}")
    result: dict[str, Any] = json.loads(lines[-1])
    if "error" in result:
        raise SystemExit(f"_honest.py failed:\n{result['error']}")
    result["relay_fds_after"] = after["relay"]["fds"]
    result["listen_overflows"] = overflows
    result["relay_cpu_s"] = (after["relay"]["cpu_s"] or 0) - (before["relay"]["cpu_s"] or 0)
    result["relay_rss_MiB"] = after["relay"]["rss_MiB"]
    wall = result["setup_all_s"] + result["traffic_s"]
    # The attacker's CPU is taken from the machine the honest links share: shown beside.
    result["attacker_cpu_pct"] = (
        100 * (own1 - own0) / wall if wall and own0 is not None and own1 is not None else None
    )
    busy, total = all1[0] - all0[0], all1[1] - all0[1]
    result["machine_cpu_pct"] = 100 * busy / total if total else None
    return result


def hostile_phase(
    chain: Nbbridge, args: argparse.Namespace, at: Nbbridge | None = None
) -> dict[str, Any]:
    """The honest run while the flood knocks at AT's relay (default: CHAIN's own)."""
    at = at or chain
    flood = Flood(at.work, at.relay_port, args)
    try:
        flood.build_up(args.hostile)
        relay_fds = fd_count(at.pids["relay"])
        now = flood.figures()
        log(
            f"  hostile: {now['open']} open ({now.get('opened')} opened, "
            f"{now.get('closed_by_relay')} closed by the relay, {now.get('connect_failed')} "
            f"connects failed); relay fds {relay_fds}"
        )
        label = "hostile" if at is chain else "decoy"
        result = honest(chain, args, label, attacker=flood.pid)
        at_end = flood.figures()
    finally:
        final = flood.stop()
    result["hostile"] = {
        "open_when_honest_started": now["open"],
        "open_at_end": at_end["open"],
        "peak_open": final["peak_open"],
        "opened": final["opened"],
        "closed_by_relay": final["closed_by_relay"],
        "connect_failed": final["connect_failed"],
        "errors": final["errors"],
        "lifetime_p50_s": final["lifetime_p50_s"],
        "lifetime_max_s": final["lifetime_max_s"],
        "relay_fds_during": relay_fds,
    }
    return result


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several honest runs as one: set-up times pooled, bytes and traffic seconds summed (so
    throughput is over all of them), refusals and SYN drops summed, CPU figures averaged."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[-1])
    for key in ("setup_s", "upgrade_s", "round_s", "acked_bytes", "failed", "retry_reasons"):
        out[key] = [x for r in runs for x in r.get(key) or []]
    for key in ("traffic_s", "retries", "failed_count", "listen_overflows"):
        out[key] = sum(r[key] for r in runs)
    for key in ("relay_cpu_s", "attacker_cpu_pct", "machine_cpu_pct"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.mean(values) if values else None
    out["up"] = min(r["up"] for r in runs)
    if "hostile" in out:
        out["hostile"] = dict(out["hostile"])
        for key in ("opened", "closed_by_relay", "connect_failed"):
            out["hostile"][key] = sum(r["hostile"][key] for r in runs)
    return out


def link_figures(r: dict[str, Any]) -> dict[str, float | None]:
    setup = sorted(r["setup_s"])
    upgrade = r.get("upgrade_s") or []
    acked = sum(r["acked_bytes"])
    return {
        "up": r["up"],
        "throughput_MBps": acked / r["traffic_s"] / 1e6 if r["traffic_s"] else None,
        "setup_p50_ms": 1000 * statistics.median(setup) if setup else None,
        "setup_p95_ms": 1000 * setup[int(0.95 * (len(setup) - 1))] if setup else None,
        "setup_max_ms": 1000 * setup[-1] if setup else None,
        "upgrade_p50_ms": 1000 * statistics.median(upgrade) if upgrade else None,
        "setup_all_s": statistics.median(r["round_s"]),
        "relay_cpu_s": r["relay_cpu_s"],
        "retries": r["retries"],
        "attacker_cpu_pct": r["attacker_cpu_pct"],
        "machine_cpu_pct": r["machine_cpu_pct"],
        "listen_overflows": r["listen_overflows"],
    }


def report_hostile(
    quiets: list[dict[str, Any]],
    louds: list[dict[str, Any]],
    args: argparse.Namespace,
    decoy: dict[str, Any] | None = None,
) -> None:
    """The table: QUIETS alternate with LOUDS (hostile runs), one more quiet than hostile;
    DECOY (``--decoy``): the run with the flood at another relay, beside."""
    quiet, again, loud = pool(quiets[0::2]), pool(quiets[1::2]), pool(louds)
    q1, h, q2 = link_figures(quiet), link_figures(loud), link_figures(again)
    q = {k: _mean(q1[k], q2[k]) for k in q1}
    d = link_figures(decoy) if decoy is not None else None
    print(
        f"\n1. {args.links} honest links ({args.concurrency} opening at a time, then "
        f"{args.traffic:g} s of 256 KiB sink blocks on each), quiet relay vs {args.hostile} "
        f"hostile slow connections from {args.hostile_addresses} addresses (a byte every "
        f"{args.drip:g} s; the attacker at the "
        f"{'idle' if args.attacker_idle else 'normal'} scheduling class"
        f"{', the relay at nice -10' if args.relay_first else ''})"
    )
    if len(louds) == 1:
        print(
            "   quiet = mean of a quiet run before and one after the hostile run (after a warm-up"
            " run not counted); ratio = hostile / quiet"
        )
    else:
        print(
            f"   {len(louds)} hostile runs, each between two quiet ones (after a warm-up run not"
            " counted), pooled; quiet 1 = the 1st, 3rd, ... quiet runs, quiet 2 = the 2nd,"
            " 4th, ...; quiet = their mean; ratio = hostile / quiet"
        )
    if d is not None:
        print(
            "   decoy = the same flood at another relay on this machine, the honest relay quiet:"
            " what the flood's processes take from the shared cores; hostile / decoy is what"
            " the flood costs inside the honest relay"
        )
    extra = f" {'decoy':>9} {'/quiet':>7} {'h/decoy':>7}" if d is not None else ""
    print(
        f"   {'figure':34} {'quiet 1':>9} {'quiet 2':>9} {'quiet':>9} {'hostile':>9} {'ratio':>7}"
        + extra
    )
    for key, label, fmt in (
        ("up", "links up", "{:.0f}"),
        ("throughput_MBps", "honest throughput, MB/s (sum)", "{:.1f}"),
        ("setup_p50_ms", "link set-up p50, ms", "{:.0f}"),
        ("setup_p95_ms", "link set-up p95, ms", "{:.0f}"),
        ("setup_max_ms", "link set-up max, ms", "{:.0f}"),
        ("upgrade_p50_ms", "  of which WebSocket open p50, ms", "{:.1f}"),
        ("setup_all_s", f"all {args.links} links up, s (median round)", "{:.2f}"),
        ("relay_cpu_s", "relay CPU during the run, s", "{:.1f}"),
        ("retries", "link attempts refused, retried", "{:.0f}"),
        ("attacker_cpu_pct", "attacker CPU, % of one core", "{:.0f}"),
        ("machine_cpu_pct", "machine CPU busy (2 cores), %", "{:.0f}"),
        ("listen_overflows", "SYNs dropped, full accept queues", "{:.0f}"),
    ):
        a, b = q[key], h[key]
        cells = [fmt.format(v) if v is not None else "-" for v in (q1[key], q2[key], a, b)]
        row = f"   {label:34} " + " ".join(f"{c:>9}" for c in cells) + f" {_ratio(key, b, a):>7}"
        if d is not None:
            c = d[key]
            row += f" {fmt.format(c) if c is not None else '-':>9}"
            row += f" {_ratio(key, c, a):>7} {_ratio(key, b, c):>7}"
        print(row)
    if len(louds) > 1:
        pairs = []
        for n, r in enumerate(louds):
            around = [link_figures(quiets[n]), link_figures(quiets[n + 1])]
            mid = link_figures(r)
            qp50 = _mean(around[0]["setup_p50_ms"], around[1]["setup_p50_ms"])
            qtp = _mean(around[0]["throughput_MBps"], around[1]["throughput_MBps"])
            pairs.append(
                f"set-up p50 {_ratio('', mid['setup_p50_ms'], qp50)}, "
                f"throughput {_ratio('', mid['throughput_MBps'], qtp)}"
            )
        print("   each hostile run against the quiet runs either side: " + "; ".join(pairs))
    hs = loud["hostile"]
    print(
        f"   hostile: {hs['open_when_honest_started']} open when the honest links started, "
        f"{hs['open_at_end']} at the end (peak {hs['peak_open']}); {hs['opened']} opened in all, "
        f"{hs['closed_by_relay']} closed by the relay (lifetime p50 "
        f"{_s(hs['lifetime_p50_s'])}, max {_s(hs['lifetime_max_s'])}), "
        f"{hs['connect_failed']} connects failed {hs['errors'] or ''}; relay fds "
        f"{hs['relay_fds_during']} during, {loud['relay_fds_after']} after"
    )
    for name, r in (("quiet 1", quiet), ("hostile", loud), ("quiet 2", again)):
        if r["retry_reasons"]:
            print(f"   {name}: honest link attempts refused: {r['retry_reasons']}")
        if r["failed_count"]:
            print(f"   {name}: {r['failed_count']} honest failures, first: {r['failed'][0]}")
    # The targets: every honest link up, the honest throughput at least 80 % of quiet, and
    # link set-up (p50 and p95) at most 120 % of quiet.
    checks = [
        ("every honest link up", h["up"] == args.links, f"{h['up']} of {args.links}"),
    ]
    for key, label, ok_if in (
        ("throughput_MBps", "honest throughput within 20 % of quiet", lambda r: r >= 0.8),
        ("setup_p50_ms", "link set-up p50 within 20 % of quiet", lambda r: r <= 1.2),
        ("setup_p95_ms", "link set-up p95 within 20 % of quiet", lambda r: r <= 1.2),
    ):
        a, b = q[key], h[key]
        if a and b is not None:
            checks.append((label, ok_if(b / a), f"x{b / a:.2f}"))
    for label, ok, shown in checks:
        print(f"   target: {label}: {shown} - {'met' if ok else 'MISSED'}")
    if d is not None:
        for key, label in (
            ("throughput_MBps", "honest throughput"),
            ("setup_p50_ms", "link set-up p50"),
            ("setup_p95_ms", "link set-up p95"),
        ):
            a, b, c = q[key], h[key], d[key]
            if a and b is not None and c:
                print(
                    f"   {label}: flood at the decoy {_ratio(key, c, a)} of quiet, at the honest"
                    f" relay {_ratio(key, b, a)}; the honest relay's own share {_ratio(key, b, c)}"
                )


def _ratio(key: str, b: float | None, a: float | None) -> str:
    """B / A as ``x1.23``; '-' where there is none (or for the attacker's own CPU)."""
    return f"x{b / a:.2f}" if a and b is not None and key != "attacker_cpu_pct" else "-"


def _mean(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a + b) / 2


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


# --- 2. idle channels ------------------------------------------------------------------


def channels_phase(chain: Nbbridge, target_port: int, args: argparse.Namespace) -> None:
    n = args.channels
    rows: dict[str, Any] = {}
    for name, port in (("direct", target_port), ("nbbridge", chain.port)):
        before = daemons(chain)
        held: dict[str, Any] = {}

        def while_open(held: dict[str, Any] = held) -> None:
            time.sleep(1.0)
            held.update(daemons(chain))

        try:
            seconds: float | None = open_many(port, n, 300, while_open, batch=args.batch)
            error = None
        except Exception as e:  # the refusal is the figure
            seconds, error = None, str(e)
        rows[name] = (seconds, error, before, held)
        time.sleep(3.0)
    print(
        f"\n2. {n} idle channels over one link ({args.batch} opened at a time, each echoes a "
        "byte, all held open), vs the same count straight to the target"
    )
    limit = "the default" if not args.max_channels else f"--max-channels {args.max_channels}"
    print(f"   agent and client run with {limit}")
    d_s = rows["direct"][0]
    for name, (seconds, error, before, held) in rows.items():
        if error:
            print(f"   {name}: FAILED: {error}")
            continue
        ratio = f" (x{seconds / d_s:.2f} direct)" if d_s and name != "direct" else ""
        print(f"   {name}: all {n} open and echoed in {seconds:.2f} s{ratio}")
        if name == "nbbridge":
            for role in ROLES:
                b, h = before[role], held.get(role, {})
                if h.get("rss_MiB") is None or b["rss_MiB"] is None:
                    continue
                per = (h["rss_MiB"] - b["rss_MiB"]) * 1024 / n
                print(
                    f"   {role:6}: RSS {b['rss_MiB']:.1f} -> {h['rss_MiB']:.1f} MiB "
                    f"({per:.2f} KiB per channel), fds {b['fds']} -> {h['fds']}"
                )
    # Closing 10 000 channels takes a while: wait (bounded) until the fds are back.
    baseline = rows["nbbridge"][2]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        after = daemons(chain)
        if all((after[r]["fds"] or 0) <= (baseline[r]["fds"] or 0) + 2 for r in ROLES):
            break
        time.sleep(0.5)
    print(
        f"   after closing them ({time.monotonic() - t0 + 3:.1f} s later): "
        + ", ".join(f"{r} {after[r]['fds']} fds {after[r]['rss_MiB']:.1f} MiB" for r in ROLES)
    )


# --- 3. short connections --------------------------------------------------------------


def short_phase(chain: Nbbridge, target_port: int, args: argparse.Namespace) -> None:
    results: dict[str, Any] = {}
    for name, port in (("direct", target_port), ("nbbridge", chain.port)):
        before = daemons(chain)
        seen = short_connections(port, args.rate, args.seconds, 10.0, args.in_flight)
        time.sleep(3.0)
        results[name] = (seen, before, daemons(chain))
        log(f"  short connections {name}: {seen.done} done, {seen.failed} failed")
    print(
        f"\n3. short connections: {args.rate:g}/s for {args.seconds:g} s (connect, echo a "
        f"byte, close; at most {args.in_flight} in flight), vs the same straight to the target"
    )
    ref = None
    for name, (seen, before, after) in results.items():
        lat = sorted(seen.seconds)
        p50 = 1000 * statistics.median(lat) if lat else float("nan")
        p99 = 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")
        rate = seen.done / seen.elapsed if seen.elapsed else 0.0
        if name == "direct":
            ref = (rate, p50, p99)
        vs = ""
        if ref and name != "direct":
            vs = f" (x{rate / ref[0]:.2f}, p50 x{p50 / ref[1]:.2f}, p99 x{p99 / ref[2]:.2f} direct)"
        print(
            f"   {name}: {seen.done} done ({rate:.0f}/s), {seen.failed} failed, {seen.skipped} "
            f"skipped (in-flight cap); connect-to-echo p50 {p50:.1f} ms p99 {p99:.1f} ms "
            f"max {1000 * lat[-1] if lat else float('nan'):.0f} ms{vs}"
        )
        if seen.errors:
            print(f"     first errors: {seen.errors[:3]}")
        if name == "nbbridge":
            print(
                "     daemons before -> after (+3 s): "
                + ", ".join(
                    f"{r} {before[r]['fds']}->{after[r]['fds']} fds "
                    f"{before[r]['rss_MiB']:.1f}->{after[r]['rss_MiB']:.1f} MiB"
                    for r in ROLES
                )
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="hostile,channels,short")
    parser.add_argument("--hostile", type=int, default=2000, help="slow connections")
    parser.add_argument("--hostile-addresses", type=int, default=100)
    parser.add_argument("--drip", type=float, default=1.0, help="seconds between their bytes")
    parser.add_argument(
        "--attacker-idle",
        action="store_true",
        help="run the flood at the idle scheduling class (as if on another machine)",
    )
    parser.add_argument(
        "--relay-first",
        action="store_true",
        help="run the relay at nice -10 (root): as if on a machine of its own",
    )
    parser.add_argument(
        "--decoy",
        action="store_true",
        help="also run the honest links while the flood knocks at a second, idle relay",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="hostile runs, each followed by a quiet one (all pooled)",
    )
    parser.add_argument("--links", type=int, default=100, help="honest links")
    parser.add_argument("--concurrency", type=int, default=10, help="links opening at once")
    parser.add_argument(
        "--setup-rounds", type=int, default=5, help="times the links are opened (pooled)"
    )
    parser.add_argument("--traffic", type=float, default=20.0, help="seconds of honest traffic")
    parser.add_argument("--channels", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=500, help="channels opened at a time")
    parser.add_argument("--max-channels", type=int, default=12000)
    parser.add_argument("--rate", type=float, default=1000.0, help="short connections/s")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--in-flight", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if args.setup_rounds < 1:
        parser.error("--setup-rounds must be at least 1")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    phases = {p.strip() for p in args.only.split(",") if p.strip()}

    soft, now = raise_fd_limit()
    load0 = os.getloadavg()
    log(f"load: fd soft limit {soft} -> {now} (the daemons inherit it)")
    work = Path(tempfile.mkdtemp(prefix="nbbridge-load-"))
    target_port = free_port()
    target = Child(
        "target",
        [sys.executable, str(Path(__file__).with_name("_target.py")), str(target_port)],
        work,
    )
    if args.max_channels:
        limit = ["--max-channels", str(args.max_channels)]
        LoadChain.daemon_args = {"agent": limit, "client": limit}
    chain = LoadChain(work, target_port)
    decoy = LoadChain(work / "decoy", target_port) if args.decoy else None
    started = time.monotonic()
    try:
        target.wait_listening(target_port)
        chain.start()
        if args.relay_first:
            # A relay on a machine of its own never waits for a core behind the honest
            # clients, the agent or the attacker, as it does on these two shared cores.
            os.setpriority(os.PRIO_PROCESS, chain.pids["relay"], -10)
        if decoy is not None:
            decoy.start()
        round_trips(chain.port, 20, 0, 100, 30)  # the client opens its link on first use
        print(
            f"load: relay, agent and client up; fd limit {now}; load average {load0[0]:.2f} "
            "at start"
        )
        if "hostile" in phases:
            log("load: honest links, warm-up run (not counted)")
            honest(chain, args, "warm-up", traffic=3.0, setup_rounds=1)
            log("load: honest links on a quiet relay")
            quiet = honest(chain, args, "quiet")
            log("load: honest links under the hostile flood")
            decoyed = None
            if decoy is not None:
                log("load: honest links while the flood knocks at a decoy relay")
                decoyed = hostile_phase(chain, args, at=decoy)
                time.sleep(5.0)
            quiets, louds = [quiet], []
            for n in range(args.pairs):
                louds.append(hostile_phase(chain, args))
                time.sleep(5.0)
                log(f"load: honest links on a quiet relay again ({n + 1} of {args.pairs})")
                quiets.append(honest(chain, args, f"quiet-{n + 2}"))
            report_hostile(quiets, louds, args, decoyed)
            chain.check_alive()
        if "channels" in phases:
            log(f"load: {args.channels} idle channels")
            channels_phase(chain, target_port, args)
            chain.check_alive()
        if "short" in phases:
            log(f"load: {args.rate:g} short connections a second")
            short_phase(chain, target_port, args)
            chain.check_alive()
    finally:
        chain.stop()
        if decoy is not None:
            decoy.stop()
        target.stop()
        if args.keep:
            log(f"load: logs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nload: took {time.monotonic() - started:.0f} s; load average {load0[0]:.2f} at "
        f"start, {os.getloadavg()[0]:.2f} at end (2 shared cores; other people's tests too)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
