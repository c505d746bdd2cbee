"""``twistd`` with a debug hook: on SIGUSR1, append this process's live Deferreds to a file.

    python bench/_probe.py [twistd options] nbbridge-relay|agent|client ...

Runs ``twistd`` exactly as the ``twistd`` script does (same plug-ins, same options), after
installing a SIGUSR1 handler that walks ``gc.get_objects()`` and appends one JSON line
``{"t": ..., "deferreds": N, "pending": N, "objects": N}`` to the file named by
``$NBBRIDGE_BENCH_PROBE`` ("pending" = not yet called). The handler runs on the reactor's
thread between bytecodes, so the count is consistent; nothing in nbbridge changes.
"""

from __future__ import annotations

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

    objects = gc.get_objects()
    deferreds = [o for o in objects if isinstance(o, Deferred)]
    pending = sum(1 for d in deferreds if not d.called)
    return {
        "t": time.time(),
        "deferreds": len(deferreds),
        "pending": pending,
        "objects": len(objects),
    }


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
