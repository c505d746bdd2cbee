"""A tunnel from this checkout, and with ``--baseline DIR`` a second one running the nbbridge
package in DIR, in front of the same target: a change measured beside its base, same run.

Make DIR from a commit with ``git archive main src | tar -x -C /tmp/main`` (then
``--baseline /tmp/main/src``): the daemons of that tunnel import nbbridge from there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _chains import Nbbridge
from _procs import Child


def add_baseline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also a tunnel running DIR/nbbridge (e.g. main's src), measured in the same rounds",
    )


def check_baseline(baseline: Path | None) -> None:
    if baseline is not None and not (baseline / "nbbridge" / "__init__.py").exists():
        raise SystemExit(f"--baseline: no nbbridge package in {baseline}")


def start_tunnels(
    work: Path, target_port: int, baseline: Path | None, tunnels: dict[str, Nbbridge]
) -> None:
    """Start "tunnel" (this checkout) and, with BASELINE, "baseline" into TUNNELS (filled as
    each starts, so the caller stops whatever started if a later one fails)."""
    for name in ("tunnel", "baseline") if baseline else ("tunnel",):
        (work / name).mkdir()
        tunnel = Nbbridge(work / name, target_port)
        if baseline is not None and name == "baseline":
            tunnel.extra_env = {"PYTHONPATH": str(baseline.resolve())}
        tunnels[name] = tunnel
        tunnel.start()


def stop_all(tunnels: dict[str, Nbbridge], children: list[Child]) -> None:
    """Stop the tunnels, then the other children (the service they lead to) in reverse."""
    for tunnel in tunnels.values():
        tunnel.stop()
    for child in reversed(children):
        child.stop()
