"""Socket tuning shared by every hop of the data path."""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.internet.tcp import Connection

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


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, but sent at once when nothing is queued before it.

    Twisted only queues a write and sends it on the next reactor turn, once epoll says the
    socket is writable: two more epoll calls and a turn per message on every hop, which is
    most of the round-trip time of a small request through three processes. When the
    transport's buffer is empty, sending now keeps the byte order and changes nothing else;
    whatever the socket does not take is queued by ``transport.write`` as usual, and with it
    the producer pause and the error handling. Only plain TCP connections qualify (not one
    that started TLS, whose bytes must go through the TLS layer).
    """
    if (
        isinstance(transport, Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN, or an error Twisted will find and report itself
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
