"""glibc malloc settings for the long-running nbbridge processes (client, relay, agent).

Every hop reads its sockets with ``bufferSize`` reads (``_tuning.BUFFER_SIZE``, 1 MiB): each
read allocates a buffer of that size, and Twisted joins queued writes into buffers of
several MiB. glibc serves blocks above its mmap threshold (128 KiB at start) with mmap, and
each time such a block is freed it raises the threshold (up to 32 MiB) to the block's size,
and the trim threshold to twice that. So what is mmapped, and how much free memory the
heap keeps, depends on what the process happened to free before; with a trim threshold of
a few reads the heap's top is given back and faulted in again as read buffers come and go.

Measured with ``bench/tunnel.py`` (alternating runs on the same tree): with the settings
below 8 streams moved some 490 MB/s against 310; single stream was about as fast, except
that the first run was no longer slower than the later ones. The price is RSS after the
throughput runs some 10-20 MiB higher in sum over the three processes (free memory kept
at the top of each heap). A trim threshold of 2 reads gave back the old throughput.
Keeping the read buffers out of the heap (an mmap threshold below the read size) is no
option: each read then costs an mmap, a mremap and a munmap, and throughput fell to 40 %.

What these settings do not cure is the slow growth of RSS over repeated transfers (run 1
to run 3: 2-8 % with them, 6-7 % without; the figure is noisy): mallinfo2 shows the
memory in use flat near 10 MiB per process while free memory inside the heap grows, which
is fragmentation no threshold returns.

So each process also gives its heap's free memory back once it goes idle (``IdleTrim``):
right after a 1 GiB transfer each heap held 17-22 MiB of which some 10 MiB were in use, and
``malloc_trim(0)`` brought every one back to 9-10 MiB, run after run, with no effect on the
next transfer's speed (measured by signalling the three processes between five runs). A
trim on a timer regardless of activity (every 2 s) did not help: it ran mid-transfer,
and the heap was refilled before anyone looked.
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime

from nbbridge._tuning import BUFFER_SIZE

# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def tune_malloc(read_size: int = BUFFER_SIZE) -> bool:
    """Fix glibc's mmap and trim thresholds for a process whose reads are ``read_size``.

    Blocks up to a little above one read come from the heap, where a freed read buffer is
    reused at once; anything bigger is mmapped and so returned to the system when freed.
    Up to eight reads' worth of free memory at the top of the heap is kept for reuse rather
    than trimmed and faulted in again on the next read.

    Returns whether the settings were applied: False, and nothing done, on anything but
    glibc (musl, macOS, Windows). Never raises; call it once at process start.
    """
    libc = _glibc()
    if libc is None:
        return False  # not glibc (musl, macOS, Windows): its mallopt means something else
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_threshold = read_size + read_size // 8
    trim_threshold = 8 * read_size
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


#: Seconds between looks at the process's CPU time.
IDLE_CHECK_INTERVAL = 1.0
#: A process that used less CPU than this share of the interval is idle.
IDLE_CPU_SHARE = 0.02


class IdleTrim(TimerService):
    """Gives the heap's free memory back to the system when the process goes idle.

    Once per idle period, not on every tick: after a busy interval (the process used at
    least ``IDLE_CPU_SHARE`` of a core), the first quiet one calls ``trim``.
    """

    def __init__(
        self,
        trim: Callable[[], object],
        interval: float = IDLE_CHECK_INTERVAL,
        cpu_seconds: Callable[[], float] = time.process_time,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(interval, self.tick)  # type: ignore[no-untyped-call]
        if clock is not None:
            self.clock = clock
        self._trim = trim
        self._cpu_seconds = cpu_seconds
        self._last = cpu_seconds()
        self._busy_since_trim = False

    def tick(self) -> None:
        """Trim if the process was busy before and quiet since the last tick."""
        now = self._cpu_seconds()
        used, self._last = now - self._last, now
        if used >= IDLE_CPU_SHARE * self.step:
            self._busy_since_trim = True
        elif self._busy_since_trim:
            self._busy_since_trim = False
            self._trim()


def care_for_memory(service: MultiService, clock: IReactorTime | None = None) -> None:
    """Give free heap back whenever SERVICE's process idles (a child service of SERVICE).

    Call it from a daemon's ``makeService``: the trimming runs only while SERVICE runs. The
    process-wide thresholds (`tune_malloc`) are set by twistd's entry point, not here, so that
    building a service in a test or in another program changes nothing process-wide. Does
    nothing on other C libraries.
    """
    libc = _glibc()
    if libc is not None:
        IdleTrim(lambda: libc.malloc_trim(0), clock=clock).setServiceParent(service)
