"""Sampling the nbbridge processes with py-spy during a transfer, and summing up the samples.

``py-spy record --format raw --function`` writes one line per distinct stack,
``frame;frame;...;leaf COUNT``; the leaf is where the sample was taken, so summing counts by
leaf gives self time per function. Samples over rate x duration tell how much of the time
the reactor thread was working (py-spy leaves most idle samples out).
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _chains import BIN
from _procs import Child

RATE = 200
#: Leaf frames where the reactor thread waits for events rather than works.
IDLE_LEAVES = frozenset({"EPollReactor.doPoll", "PollReactor.doPoll", "SelectReactor.doSelect"})
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


class Sampler:
    """py-spy recording one process until stopped; its own output in OUT.pyspy.log."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.started = time.monotonic()
        self._child = Child(
            f"{out.stem}.pyspy",
            [
                str(BIN / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE),
                "--format",
                "raw",
                "--function",
                "--output",
                str(out.resolve()),
            ],
            out.parent,
        )
        self.duration = 0.0

    def stop(self) -> None:
        self.duration = time.monotonic() - self.started
        self._child.stop(signal.SIGINT)


def available() -> bool:
    return (BIN / "py-spy").exists()


def summarize(raw: Path, duration: float, top: int = 10) -> dict[str, Any]:
    """Self time per function (leaf frame) of the reactor thread, from py-spy's raw output.

    DURATION is how long the sampled work ran: the working share is taken over it.

    Stacks rooted in ``Thread._bootstrap`` are other threads (twistd's idle thread pool) and
    are left out. py-spy does not always see a thread blocked in ``epoll_wait`` as idle, so
    samples whose leaf is the reactor's poll are counted as waiting, not as work.
    """
    leaves: Counter[tuple[str, str]] = Counter()
    reactor = waiting = 0
    try:
        text = raw.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[0].split(" ", 1)[0].endswith("_bootstrap"):
            continue
        reactor += n
        m = _FRAME.match(frames[-1])
        key = (m["function"], _short(m["file"])) if m else (frames[-1], "")
        if key[0] in IDLE_LEAVES:
            waiting += n
            continue
        leaves[key] += n
    expected = max(1.0, duration * RATE)
    working = reactor - waiting
    return {
        "samples": reactor,
        "rate": RATE,
        "duration_s": round(duration, 2),
        "working_pct": min(100.0, 100.0 * working / expected),
        "waiting_pct": min(100.0, 100.0 * waiting / expected),
        "top": [
            {
                "function": f,
                "file": file,
                "samples": n,
                "self_pct": 100.0 * n / max(1, working),
            }
            for (f, file), n in leaves.most_common(top)
        ],
        "raw": str(raw),
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path
