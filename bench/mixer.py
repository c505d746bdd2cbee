"""Kernel execute round trips through nbbridge-mixer vs straight to the Jupyter.

    .venv/bin/python bench/mixer.py [--executes 300]

Starts a jupyter-server and ``twistd -n nbbridge-mixer`` in front of it (both on loopback,
child processes), starts one kernel *through the mixer*, and times ``1+1`` ->
``execute_reply`` over the kernel's channels WebSocket, direct and through the mixer, in
interleaved blocks in one client reactor (so both paths see the same machine load).
Target (issue 12): the mixer adds <= 2 ms at p50. The remote half (remote-through-mixer vs
remote-through-client-forward) is not measured by this script yet.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _procs import Child, child_env, free_port
from web_proxy import execute_round_trips, pct, start_jupyter


def start_kernel(port: int, token: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/kernels",
        data=b'{"name": "python3"}',
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(json.load(response)["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executes", type=int, default=300)
    args = parser.parse_args()
    token = secrets.token_hex(24)
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="nbbridge-mixer-bench-") as tmp:
        work = Path(tmp)
        try:
            jupyter, jport = start_jupyter(work, token)
            children.append(jupyter)
            mport = free_port()
            twistd = str(Path(sys.executable).parent / "twistd")
            mixer = Child(
                "nbbridge-mixer",
                [twistd, "-n", "--pidfile=", "nbbridge-mixer", "--port", str(mport),
                 "--jupyter-port", str(jport)],
                work,
                child_env() | {"JUPYTER_TOKEN": token},
            )  # fmt: skip
            children.append(mixer)
            mixer.wait_listening(mport)
            kernel = start_kernel(mport, token)
            trips = execute_round_trips(
                {"direct": jport, "nbbridge-mixer": mport}, token, kernel, args.executes, 5
            )
        finally:
            for child in reversed(children):
                child.stop()
    print(f"kernel execute round trip (1+1 -> execute_reply), {args.executes} each, ms")
    print(f"{'path':26} {'p50':>8} {'p90':>8} {'p99':>8}")
    for name, values in trips.items():
        print(f"{name:26} {pct(values, 0.5):8.2f} {pct(values, 0.9):8.2f} {pct(values, 0.99):8.2f}")
    added = pct(trips["nbbridge-mixer"], 0.5) - pct(trips["direct"], 0.5)
    print(f"nbbridge-mixer adds {added:+.2f} ms at p50 (target <= +2 ms)")


if __name__ == "__main__":
    main()
