"""Socket tuning shared by every hop of the data path."""

from __future__ import annotations

#: Read size and pause level of the connections on the data path. Twisted's default, 64 KiB,
#: makes every hop stop and go several times per window on a fast link.
BUFFER_SIZE = 1024 * 1024


def set_buffer_size(transport: object, size: int = BUFFER_SIZE) -> None:
    """Use bigger reads and a higher pause level on a Twisted socket transport."""
    if transport is not None and hasattr(transport, "bufferSize"):
        transport.bufferSize = size
