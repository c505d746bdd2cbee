"""Kernel execute round trips through nbbridge-mixer, beside the same kernel reached without it.

    .venv/bin/python bench/mixer.py [--executes 300]

Starts (all child processes on loopback) a local jupyter-server, a remote jupyter-server
behind a real relay and agent with a client forward to it (bench/_chains.py's
``Nbbridge`` chain), and ``twistd -n nbbridge-mixer`` with the local Jupyter and the remote
as ``agent:bench/bench``. One kernel is started on each side *through the mixer*; then
``1+1`` -> ``execute_reply`` is timed over the kernel's channels WebSocket:

* local: direct to the local Jupyter vs through the mixer;
* remote: through the client forward (client > relay > agent) vs through the mixer (whose
  own link goes mixer > relay > agent).

Each pair runs in interleaved blocks in one client reactor (bench/web_proxy.py's
``execute_round_trips``), so both paths of a pair see the same machine load.
Target (issue 12): the mixer adds <= 2 ms at p50 to either.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _chains import SERVICE, Nbbridge
from _procs import Child, child_env, free_port
from web_proxy import execute_round_trips, pct, start_jupyter


def start_kernel(port: int, token: str, name: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/kernels",
        data=json.dumps({"name": name}).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return str(json.load(response)["id"])


def measure(ports: dict[str, int], token: str, kernel: str, executes: int) -> dict[str, list]:
    """One pair, in a fresh process (a reactor runs once per process)."""
    out = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps([ports, kernel, executes])],
        env=child_env() | {"BENCH_TOKEN": token},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, list] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executes", type=int, default=300)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        ports, kernel, executes = json.loads(args.measure)
        trips = execute_round_trips(ports, os.environ["BENCH_TOKEN"], kernel, executes, 5)
        print(json.dumps(trips))
        return
    # One token for both Jupyters and the mixer: a pair's two paths then send the same one.
    token = secrets.token_hex(24)
    children: list[Child] = []
    chain: Nbbridge | None = None
    with tempfile.TemporaryDirectory(prefix="nbbridge-mixer-bench-") as tmp:
        work = Path(tmp)
        try:
            (work / "local").mkdir()
            (work / "remote").mkdir()
            local, lport = start_jupyter(work / "local", token)
            children.append(local)
            remote, rport = start_jupyter(work / "remote", token)
            children.append(remote)
            chain = Nbbridge(work, rport)
            chain.start()
            cwork = chain.work
            (cwork / "remote.token").write_text(token + "\n")
            (cwork / "remote.token").chmod(0o600)
            agent_key = (cwork / "agent.pub").read_text().strip()
            mport = free_port()
            twistd = str(Path(sys.executable).parent / "twistd")
            mixer = Child(
                "nbbridge-mixer",
                [twistd, "-n", "--pidfile=", "nbbridge-mixer", "--port", str(mport),
                 "--jupyter-port", str(lport),
                 "--remote", f"gpu=agent:bench/{SERVICE}",
                 "--remote-token-file", f"gpu={cwork / 'remote.token'}",
                 "--relay", f"ws://127.0.0.1:{chain.relay_port}",
                 "--token-file", "client.token", "--key", "client.key",
                 "--agent-key", f"bench={agent_key}"],
                cwork,
                child_env() | {"JUPYTER_TOKEN": token},
            )  # fmt: skip
            children.append(mixer)
            mixer.wait_listening(mport)
            local_kernel = start_kernel(mport, token, "python3")
            remote_kernel = start_kernel(mport, token, "gpu:python3")
            trips = measure(
                {"local direct": lport, "local through mixer": mport},
                token, local_kernel, args.executes,
            )  # fmt: skip
            trips |= measure(
                {"remote via client forward": chain.port, "remote through mixer": mport},
                token, remote_kernel, args.executes,
            )  # fmt: skip
        finally:
            for child in reversed(children):
                child.stop()
            if chain is not None:
                chain.stop()
    print(f"kernel execute round trip (1+1 -> execute_reply), {args.executes} each, ms")
    print(f"{'path':28} {'p50':>8} {'p90':>8} {'p99':>8}")
    for name, values in trips.items():
        print(f"{name:28} {pct(values, 0.5):8.2f} {pct(values, 0.9):8.2f} {pct(values, 0.99):8.2f}")
    for side, base in (("local", "local direct"), ("remote", "remote via client forward")):
        added = pct(trips[f"{side} through mixer"], 0.5) - pct(trips[base], 0.5)
        print(f"{side}: the mixer adds {added:+.2f} ms at p50 (target <= +2 ms)")


if __name__ == "__main__":
    main()
