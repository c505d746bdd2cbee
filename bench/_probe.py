"""``twistd`` with a debug hook: on SIGUSR1, append this process's live Deferreds to a file.

    python bench/_probe.py [twistd options] nbbridge-relay|agent|client ...

Runs ``twistd`` exactly as the ``twistd`` script does (same plug-ins, same options), after
installing a SIGUSR1 handler that walks ``gc.get_objects()`` and appends one JSON line
``{"t": ..., "deferreds": N, "pending": N, "objects": N, "settled_kib": N, "gc_ms": {...}}``
to the file named by ``$NBBRIDGE_BENCH_PROBE`` ("pending" = not yet called; "gc_ms": per
generation, the collector's runs since start, their total and longest pause in ms, up to
the sample: the full collection the sample itself makes is counted in the next one). The
handler runs on the reactor's thread between bytecodes, so the count is consistent; nothing
in nbbridge changes.

It first runs a full collection, so "objects" counts what is reachable, not garbage that
the next collection would free (without it the agent's count swung between 2 and 7 thousand
from sample to sample). Then it gives the heap's free memory back (``malloc_trim(0)``, what
the daemons' own idle trim does after a second of quiet) and reads VmRSS: "settled_kib" is
the memory the process keeps, whatever the moment of the sample. The raw VmRSS, read from
outside before the signal, moves by megabytes with whether the idle trim happened to run.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import time
from types import FrameType

#: per generation: [collections, total seconds, longest seconds] since start (`_gc_timer`)
GC_PAUSES: dict[int, list[float]] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
_gc_started = 0.0


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    """Times each of the collector's runs: they stop the reactor thread while they walk."""
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started
    entry = GC_PAUSES[info["generation"]]
    entry[0] += 1
    entry[1] += took
    entry[2] = max(entry[2], took)


def count_deferreds() -> dict[str, object]:
    """Live Deferreds in this process, and how many of them have not fired yet."""
    from twisted.internet.defer import Deferred

    pauses = {str(g): [int(n), 1000 * t, 1000 * m] for g, (n, t, m) in GC_PAUSES.items()}
    gc.collect()
    objects = gc.get_objects()
    deferreds = [o for o in objects if isinstance(o, Deferred)]
    pending = sum(1 for d in deferreds if not d.called)
    return {
        "t": time.time(),
        "deferreds": len(deferreds),
        "pending": pending,
        "objects": len(objects),
        "settled_kib": settled_rss_kib(),
        "gc_ms": pauses,
    }


def settled_rss_kib() -> int | None:
    """VmRSS after the heap's free memory is given back (glibc only; else the plain VmRSS)."""
    try:
        libc = ctypes.CDLL(None)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def _on_usr1(signum: int, frame: FrameType | None) -> None:
    path = os.environ.get("NBBRIDGE_BENCH_PROBE")
    if not path:
        return
    line = json.dumps(count_deferreds())
    with open(path, "a") as f:
        f.write(line + "\n")


def main() -> None:
    signal.signal(signal.SIGUSR1, _on_usr1)
    gc.callbacks.append(_gc_timer)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
