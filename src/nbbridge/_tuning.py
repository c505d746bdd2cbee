"""Socket tuning shared by every hop of the data path (its write fast path: `_internals`)."""

from __future__ import annotations

import contextlib
from typing import Any

#: Read size and pause level of the connections on the data path. Twisted's default, 64 KiB,
#: makes every hop stop and go several times per window on a fast link.
BUFFER_SIZE = 1024 * 1024


def tune(transport: Any, size: int = BUFFER_SIZE) -> None:
    """Bigger reads and a higher pause level; no Nagle delay for small request/replies."""
    if transport is None:
        return
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = size
    if hasattr(transport, "setTcpNoDelay"):
        with contextlib.suppress(OSError):  # not a TCP socket after all (a UNIX socket)
            transport.setTcpNoDelay(True)
