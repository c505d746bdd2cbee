"""Short transfers to and from a real Jupyter: direct beside client -> relay -> agent.

    PYTHONPATH=src .venv/bin/python bench/jupyter_transfer.py [--rounds 15] [--mb 10]
        [--baseline DIR]

What a user feels when a notebook's data moves: the first megabytes on a new connection,
not a steady stream. Starts on 127.0.0.1, in a temporary directory, one ``jupyter-server``
(token in its environment, as ``web_proxy.py`` starts it) and the tunnel's three real
daemons in front of it (``_chains.Nbbridge``, keys made fresh, encryption as shipped). Each
round, for each path (direct, then the tunnel; the order alternates round by round so a
noisy machine hurts both alike), on a new TCP connection, so a new channel through the
tunnel:

* download: ``GET /files/big.bin`` of a ``--mb`` MB file, read to the end;
* upload: ``PUT /api/contents/up.bin`` with the file base64-encoded in JSON, as the
  contents API takes it (JupyterLab's upload of a file under 15 MB is one such PUT).

Each is timed from the connect to the last byte of the response. Prints the medians, the
tunnel's median as a fraction of direct, the CPU each nbbridge process spent per transfer,
and the RSS of the client, relay and agent after the warm-up, after the first round and at
the end (windows are credit, not buffers: an idle tunnel must not keep what a transfer
used). ``--baseline DIR`` adds a second tunnel running the nbbridge package found in DIR
(say ``git archive main src | tar -x -C /tmp/main``, then ``--baseline /tmp/main/src``),
taking its turn in every round, so a change is compared with its base in the same run.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baseline import add_baseline_option, check_baseline, start_tunnels, stop_all
from _chains import Nbbridge
from _procs import Child, cpu_seconds, rss_kib
from web_proxy import start_jupyter

FILE = "big.bin"


def request(port: int, method: str, path: str, token: str, body: bytes | None = None) -> int:
    """One request on a new connection; the response body's size. Raises on a non-2xx."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"token {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if not 200 <= response.status < 300:
            raise SystemExit(f"{method} {path} on {port}: {response.status} {data[:200]!r}")
        return len(data)
    finally:
        conn.close()


def download(port: int, token: str, size: int) -> float:
    start = time.perf_counter()
    got = request(port, "GET", f"/files/{FILE}", token)
    elapsed = time.perf_counter() - start
    if got != size:
        raise SystemExit(f"download on {port}: {got} bytes, not {size}")
    return elapsed


def upload(port: int, token: str, body: bytes) -> float:
    start = time.perf_counter()
    request(port, "PUT", "/api/contents/up.bin", token, body)
    return time.perf_counter() - start


def rss_line(tunnels: dict[str, Nbbridge]) -> str:
    return "; ".join(
        f"{name}: "
        + ", ".join(f"{role} {(rss_kib(pid) or 0) / 1024:.1f}" for role, pid in t.pids.items())
        + " MiB"
        for name, t in tunnels.items()
    )


def cpu(tunnels: dict[str, Nbbridge]) -> dict[tuple[str, str], float]:
    """CPU seconds so far of each tunnel's processes, by (tunnel, role)."""
    return {
        (name, role): cpu_seconds(pid) or 0.0
        for name, t in tunnels.items()
        for role, pid in t.pids.items()
    }


def transfer(kind: str, port: int, token: str, size: int, body: bytes) -> float:
    return download(port, token, size) if kind == "download" else upload(port, token, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--mb", type=int, default=10, help="file size, MB (10**6 bytes)")
    add_baseline_option(parser)
    args = parser.parse_args()
    check_baseline(args.baseline)
    size = args.mb * 1000 * 1000
    payload = os.urandom(size)
    body = json.dumps(
        {"type": "file", "format": "base64", "content": base64.b64encode(payload).decode()}
    ).encode()
    token = secrets.token_hex(24)
    children: list[Child] = []
    tunnels: dict[str, Nbbridge] = {}
    times: dict[tuple[str, str], list[float]] = {}
    spent: dict[tuple[str, str, str], float] = {}
    print(f"# load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nbbridge-transfer-bench-") as tmp:
        work = Path(tmp)
        try:
            jupyter, jport = start_jupyter(work, token)
            children.append(jupyter)
            (work / "jupyter" / "root" / FILE).write_bytes(payload)
            start_tunnels(work, jport, args.baseline, tunnels)
            ports = {"direct": jport} | {name: t.port for name, t in tunnels.items()}
            # Warm-up: Jupyter's first request of each kind compiles and caches things.
            for port in ports.values():
                for kind in ("download", "upload"):
                    transfer(kind, port, token, size, body)
            print(f"# nbbridge RSS after the warm-up: {rss_line(tunnels)}", flush=True)
            for r in range(args.rounds):
                order = list(ports) if r % 2 == 0 else list(reversed(ports))
                for kind in ("download", "upload"):
                    for name in order:
                        before = cpu(tunnels)
                        seconds = transfer(kind, ports[name], token, size, body)
                        times.setdefault((kind, name), []).append(seconds)
                        for (tunnel, role), used in cpu(tunnels).items():
                            if tunnel == name:
                                key = (kind, name, role)
                                spent[key] = spent.get(key, 0.0) + used - before[(name, role)]
                if r == 0:
                    print(f"# nbbridge RSS after round 1: {rss_line(tunnels)}", flush=True)
            print(f"# nbbridge RSS at the end: {rss_line(tunnels)}", flush=True)
        finally:
            stop_all(tunnels, children)
    print(f"# load average {os.getloadavg()}")
    report(args, ports, tunnels, times, spent, size, len(body))


def report(
    args: argparse.Namespace,
    ports: dict[str, int],
    tunnels: dict[str, Nbbridge],
    times: dict[tuple[str, str], list[float]],
    spent: dict[tuple[str, str, str], float],
    size: int,
    body: int,
) -> None:
    print(f"{args.mb} MB, {args.rounds} rounds, each on a new connection (medians; min-max)")
    for kind in ("download", "upload"):
        moved = size if kind == "download" else body
        medians = {}
        for name in ports:
            values = times[(kind, name)]
            medians[name] = statistics.median(values)
            print(
                f"{kind:8} {name:8} {medians[name] * 1000:7.1f} ms"
                f" ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"
                f"  {moved / medians[name] / 1e6:6.0f} MB/s"
            )
        for name in tunnels:
            pairs = zip(times[(kind, "direct")], times[(kind, name)], strict=True)
            per_round = [d / t for d, t in pairs]
            used = ", ".join(
                f"{role} {spent[(kind, name, role)] / args.rounds * 1000:.1f}"
                for role in tunnels[name].pids
            )
            print(
                f"{kind:8} {name} at {medians['direct'] / medians[name]:.0%} of direct"
                f" (median of the per-round ratios {statistics.median(per_round):.0%});"
                f" CPU ms per transfer: {used}"
            )


if __name__ == "__main__":
    main()
