"""What the slow-connection flood alone costs the relay: its CPU, quiet and under the flood.

    PYTHONPATH=src .venv/bin/python bench/flood_cost.py [--seconds 10] [--profile FILE]

Starts bench/load.py's chain (relay, agent, client under ``_probe.py``), takes the relay's
CPU over SECONDS quiet, starts the flood of ``bench/_slowloris.py`` (2 000 connections from
100 addresses, a byte a second, reopened 1 s after the relay closes them), lets it build up,
and takes the relay's and the attacker's CPU over SECONDS again, with the flood's reconnects
a second. No honest traffic: the figure is the relay's cost per refused connection, which
bench/load.py's honest links then share the cores with. ``--profile FILE`` records the
relay meanwhile with py-spy (raw format).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import load
from _procs import cpu_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--profile", help="py-spy raw profile of the relay under the flood")
    args = parser.parse_args()
    flood_args = argparse.Namespace(
        hostile=2000, hostile_addresses=100, drip=1.0, attacker_idle=False
    )
    with load.running_chain("nbbridge-flood-") as chain:
        relay = chain.pids["relay"]
        c0 = cpu_seconds(relay) or 0.0
        time.sleep(args.seconds)
        quiet = 100 * ((cpu_seconds(relay) or 0.0) - c0) / args.seconds
        flood = load.Flood(chain.work, chain.relay_port, flood_args)
        try:
            flood.build_up(flood_args.hostile)
            c0, a0 = cpu_seconds(relay) or 0.0, cpu_seconds(flood.pid) or 0.0
            f0 = flood.figures()
            if args.profile:
                spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                subprocess.run(
                    [
                        spy,
                        "record",
                        "-p",
                        str(relay),
                        "-d",
                        str(int(args.seconds)),
                        "-r",
                        "200",
                        "-f",
                        "raw",
                        "-o",
                        args.profile,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
            else:
                time.sleep(args.seconds)
            c1, a1 = cpu_seconds(relay) or 0.0, cpu_seconds(flood.pid) or 0.0
            f1 = flood.figures()
        finally:
            flood.stop()
    rate = (f1["opened"] - f0["opened"]) / args.seconds
    relay_pct = 100 * (c1 - c0) / args.seconds
    print(f"relay CPU, % of a core: quiet {quiet:.1f}, under the flood {relay_pct:.1f}")
    print(
        f"flood: {rate:.0f} reconnects/s, {f1['open']} open; attacker "
        f"{100 * (a1 - a0) / args.seconds:.1f} % of a core"
    )
    if rate:
        print(
            f"relay CPU per refused connection: {1e4 * (relay_pct - quiet) / rate:.0f} us "
            "(drips of the held ones included)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
