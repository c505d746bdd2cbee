"""Tunnel benchmark: nbbridge beside direct TCP, websocat, nbbridge behind nginx, bare Twisted.

    .venv/bin/python bench/tunnel.py [--quick] [--runs N] [--json out.json] [--only CHAIN]
                                     [--profile DIR] [--markdown bench/RESULTS.md]

(with ``PYTHONPATH=src`` in a checkout without an editable install). Starts everything on
127.0.0.1 in a temporary directory: one target process (sink + echo, ``_target.py``), then
each chain's real processes (``_chains.py``; "twisted" is three bare Twisted TCP forwarders,
``_forward.py``, the floor for any three-process chain on Twisted), and measures per chain,
``--runs`` times, with the runs of the chains interleaved so that a noisy machine hurts them
alike:

* single-stream throughput (1 GiB; 256 MiB with --quick) and 8 parallel streams, MB/s;
* 100-byte round trips over one connection, p50 and p99 (after a warm-up);
* time to open 1000 connections at once, each echoing one byte, all held open;
* RSS of each chain process idle, with the 1000 connections open, after the throughput
  runs; memory per extra idle connection; CPU seconds per GB and CPU % per process during
  the single stream.

Prints one table: min / median / max over the runs, and the median as a ratio to direct
TCP and to websocat measured in the same run. ``--only`` keeps direct (the reference, a
few seconds) unless ``--only direct``. ``--profile DIR`` then samples the three nbbridge
processes with py-spy during one more single-stream run and prints where each spends it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _notes
import _profile
import _report
from _bench import Bench, Settings, log
from _chains import CHAINS, Chain, Nbbridge, tool_versions
from _procs import Child, free_port, machine


def versions() -> dict[str, Any]:
    import autobahn
    import cryptography
    from autobahn.websocket import USES_NVX

    import twisted

    return {
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "autobahn": autobahn.__version__,
        "autobahn_nvx": USES_NVX,
        "cryptography": cryptography.__version__,
        **tool_versions(),
        **_source(),
    }


def _command(argv: list[str] | None) -> str:
    """This run's command line as one could type it again from the repository root."""
    python = (
        os.path.relpath(sys.executable)
        if sys.executable.startswith(os.getcwd())
        else sys.executable
    )
    here = os.path.relpath(__file__)
    words = shlex.join([python, here, *(sys.argv[1:] if argv is None else argv)])
    path = os.environ.get("PYTHONPATH")
    return f"PYTHONPATH={shlex.quote(path)} {words}" if path else words


def _source() -> dict[str, str | None]:
    """Which nbbridge the chains run: where it is imported from, and the git commit there."""
    import subprocess

    import nbbridge

    where = str(Path(nbbridge.__file__).resolve().parent)
    try:
        head = (
            subprocess.run(
                ["git", "-C", where, "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
            or None
        )
    except OSError:
        head = None
    return {"nbbridge": nbbridge.__version__, "nbbridge_path": where, "git": head}


def select_chains(only: str | None) -> list[str]:
    if not only:
        return list(CHAINS)
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in CHAINS]
    if unknown:
        raise SystemExit(f"--only: unknown chain {unknown[0]!r} (known: {', '.join(CHAINS)})")
    if "direct" not in wanted:
        wanted.insert(0, "direct")
    return [n for n in CHAINS if n in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the nbbridge tunnel against direct TCP, websocat, nginx and"
        " bare Twisted forwarders.",
    )
    parser.add_argument("--quick", action="store_true", help="1 run, 256 MiB: under a minute")
    parser.add_argument("--runs", type=int, help="runs per chain (default 3; 1 with --quick)")
    parser.add_argument("--json", type=Path, help="write every measurement here as JSON")
    parser.add_argument("--only", help="chains to run, comma-separated: " + ", ".join(CHAINS))
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="then profile the nbbridge processes with py-spy into DIR",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="FILE",
        help="update the generated part of FILE (e.g. bench/RESULTS.md)",
    )
    parser.add_argument("--single-mib", type=int, help="single-stream size, MiB")
    parser.add_argument("--parallel-mib", type=int, help="8-stream total size, MiB")
    parser.add_argument("--round-trips", type=int, help="round trips measured (>= 1000)")
    parser.add_argument("--conns", type=int, default=1000, help="concurrent connections")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per test")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    settings = Settings(args)
    names = select_chains(args.only)
    if args.profile and "nbbridge" not in names:
        raise SystemExit("--profile needs the nbbridge chain")
    if args.profile and not _profile.available():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")

    started = time.time()
    info: dict[str, Any] = {
        "command": _command(argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
        "machine": machine(),
        "versions": versions(),
        "settings": settings.as_dict(),
        "skipped": {},
    }
    work = Path(tempfile.mkdtemp(prefix="nbbridge-bench-"))
    log(f"bench: work directory {work}")
    target_port = free_port()
    target = Child(
        "target",
        [sys.executable, str(Path(__file__).with_name("_target.py")), str(target_port)],
        work,
    )
    chains: list[Chain] = []
    profile: dict[str, Any] | None = None
    try:
        target.wait_listening(target_port)
        for name in names:
            chain = CHAINS[name](work, target_port)
            why = chain.unavailable()
            if why:
                info["skipped"][name] = why
                log(f"bench: skipping {name}: {why}")
                continue
            chains.append(chain)
        log("bench: starting " + ", ".join(c.title for c in chains))
        # The chains are independent: start them side by side (twistd takes a second or two).
        with ThreadPoolExecutor(len(chains)) as pool:
            for future in [pool.submit(c.start) for c in chains]:
                future.result()
        bench = Bench(settings, chains, target)
        for chain in chains:
            bench.warm_up(chain)
        for run in range(settings.runs):
            for chain in chains:
                if chain.name not in bench.dead:
                    bench.run(chain, run)
        bench.finish()
        if args.profile:
            nb = next(c for c in chains if isinstance(c, Nbbridge) and c.name == "nbbridge")
            profile = bench.profile(nb, args.profile)
        for chain in chains:
            bench.results[chain.name]["pids"] = chain.pids
    finally:
        for chain in chains:
            chain.stop()
        target.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    info["seconds"] = round(time.time() - started, 1)
    info["machine"]["loadavg_end"] = list(os.getloadavg())
    titles = {c.name: c.title for c in chains}
    table = _report.rows(bench.results, titles, settings.conns)
    text = _report.text_table(table)
    notes = _notes.notes(bench.results, settings.describe(), info)
    print(text)
    for note in notes:
        print(note)
    if profile:
        for phase, p in profile.items():
            print()
            print(
                f"Profile of nbbridge during {_notes.PHASES[phase]} under py-spy ({p['figure']}):"
            )
            print(_report.profile_text(p["processes"]))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    **info,
                    "results": bench.results,
                    "profile": profile,
                    "table": table,
                    "notes": notes,
                },
                indent=1,
            )
        )
    if args.markdown:
        _notes.write_markdown(args.markdown, _notes.markdown(info, table, notes, profile))
    return 0 if any(r["metrics"] for r in bench.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
