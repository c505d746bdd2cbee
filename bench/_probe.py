"""``twistd`` with a debug hook: on SIGUSR1, append this process's live Deferreds to a file.

    python bench/_probe.py [twistd options] nbbridge-relay|agent|client ...

Runs ``twistd`` exactly as the ``twistd`` script does (same plug-ins, same options), after
installing a SIGUSR1 handler that walks ``gc.get_objects()`` and appends one JSON line
``{"t": ..., "deferreds": N, "pending": N, "objects": N, "settled_kib": N}`` to the file
named by ``$NBBRIDGE_BENCH_PROBE`` ("pending" = not yet called). The handler runs on the
reactor's thread between bytecodes, so the count is consistent; nothing in nbbridge changes.

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


def count_deferreds() -> dict[str, float]:
    """Live Deferreds in this process, and how many of them have not fired yet."""
    from twisted.internet.defer import Deferred

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
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
