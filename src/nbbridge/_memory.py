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
is fragmentation no threshold returns; ``malloc_trim`` every 2 s did not stop it either.
"""

from __future__ import annotations

import ctypes
import sys

from nbbridge._tuning import BUFFER_SIZE

# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(read_size: int = BUFFER_SIZE) -> bool:
    """Fix glibc's mmap and trim thresholds for a process whose reads are ``read_size``.

    Blocks up to a little above one read come from the heap, where a freed read buffer is
    reused at once; anything bigger is mmapped and so returned to the system when freed.
    Up to eight reads' worth of free memory at the top of the heap is kept for reuse rather
    than trimmed and faulted in again on the next read.

    Returns whether the settings were applied: False, and nothing done, on anything but
    glibc (musl, macOS, Windows). Never raises; call it once at process start.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False  # another C library (musl): its mallopt means something else
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_threshold = read_size + read_size // 8
    trim_threshold = 8 * read_size
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
