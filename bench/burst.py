"""1000 connections opened at once, to a service with an ordinary listen backlog.

    PYTHONPATH=src .venv/bin/python bench/burst.py [--rounds 5] [--conns 1000]
        [--backlog N] [--baseline DIR]

``bench/tunnel.py`` opens its 1000 connections to a target listening with a backlog of 4096;
a real service listens with its framework's default: 100 for an asyncio server (what this
one is, ``--backlog`` to change it), 128 for Tornado (Jupyter), 5 for ``socketserver``. When
more connects arrive at once than the service's accept queue holds, Linux drops the SYNs
beyond it (TcpExt ListenOverflows) and each dropped connect is retried only after the SYN
timeout, one second. Starts on 127.0.0.1, in a temporary directory, such an echo service and
the tunnel's three real daemons in front of it (``_chains.Nbbridge``); after one connection
has warmed the link, each round opens ``--conns`` connections at once directly and through
the tunnel (the order alternating round by round), each echoing one byte, all held open
until the last has its byte back (``_load.open_many``). Prints the time per round and path,
their medians, the ListenOverflows each caused, and the memory each held connection costs
the three nbbridge processes (their RSS while all are open, less before, in the first round:
a channel's window is credit, not a buffer, so an idle channel must cost no more for it).
``--baseline DIR`` adds a tunnel running the nbbridge package in DIR (e.g. ``git archive
main src | tar -x -C /tmp/main``, then ``--baseline /tmp/main/src``), measured in the same
rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baseline import add_baseline_option, check_baseline, start_tunnels, stop_all
from _chains import Nbbridge
from _load import LoadError, open_many
from _procs import Child, child_env, free_port, rss_kib, tcp_counters


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve_echo(port: int, backlog: int | None) -> None:
    """An asyncio echo server on 127.0.0.1:PORT, with asyncio's default backlog unless told."""
    loop = asyncio.get_running_loop()
    extra = {} if backlog is None else {"backlog": backlog}
    server = await loop.create_server(Echo, "127.0.0.1", port, **extra)  # type: ignore[arg-type]
    print(f"echo listening on {port}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conns", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per round")
    parser.add_argument(
        "--backlog", type=int, help="the echo service's listen backlog (default: asyncio's)"
    )
    add_baseline_option(parser)
    args = parser.parse_args()
    if args.serve_echo:
        asyncio.run(serve_echo(args.serve_echo, args.backlog))
        return
    check_baseline(args.baseline)
    print(f"# load average {os.getloadavg()}", flush=True)
    children: list[Child] = []
    tunnels: dict[str, Nbbridge] = {}
    seconds: dict[str, list[float]] = {}
    overflows: dict[str, list[int]] = {}
    per_conn: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="nbbridge-burst-bench-") as tmp:
        work = Path(tmp)
        try:
            port = free_port()
            backlog = [] if args.backlog is None else ["--backlog", str(args.backlog)]
            echo = Child(
                "echo",
                [sys.executable, __file__, "--serve-echo", str(port), *backlog],
                work,
                child_env(),
            )
            children.append(echo)
            echo.wait_listening(port)
            start_tunnels(work, port, args.baseline, tunnels)
            ports = {"direct": port} | {name: t.port for name, t in tunnels.items()}
            for p in ports.values():  # the link is up and each process has run its data path
                open_many(p, 1, args.timeout, lambda: None)
            for r in range(args.rounds):
                for name in list(ports) if r % 2 == 0 else list(reversed(ports)):
                    before = tcp_counters().get("ListenOverflows", 0)
                    pids = list(tunnels[name].pids.values()) if name in tunnels else []
                    rss = [sum(rss_kib(pid) or 0 for pid in pids)]

                    def held(pids: list[int] = pids, rss: list[int] = rss) -> None:
                        rss.append(sum(rss_kib(pid) or 0 for pid in pids))

                    try:
                        elapsed = open_many(ports[name], args.conns, args.timeout, held)
                    except LoadError as e:
                        raise SystemExit(f"round {r + 1}, {name}: {e}") from None
                    dropped = tcp_counters().get("ListenOverflows", 0) - before
                    seconds.setdefault(name, []).append(elapsed)
                    if pids and name not in per_conn:
                        per_conn[name] = (rss[1] - rss[0]) / args.conns
                    overflows.setdefault(name, []).append(dropped)
                    print(
                        f"round {r + 1} {name:8} {elapsed:6.3f} s, ListenOverflows +{dropped}",
                        flush=True,
                    )
                    # Let every process close the connections before the next burst.
                    time.sleep(1.0)
        finally:
            stop_all(tunnels, children)
    print(f"# load average {os.getloadavg()}")
    print(
        f"{args.conns} connections at once to an asyncio echo service"
        f" (backlog {args.backlog or 'default: 100'}), {args.rounds} rounds: median (min-max)"
    )
    for name, values in seconds.items():
        print(
            f"{name:8} {statistics.median(values):6.3f} s ({min(values):.3f}-{max(values):.3f}),"
            f" ListenOverflows per round: {statistics.median(overflows[name]):g}"
            f" (max {max(overflows[name])})"
            + (
                f"; {per_conn[name]:.1f} KiB per held connection (client + relay + agent)"
                if name in per_conn
                else ""
            )
        )


if __name__ == "__main__":
    main()
