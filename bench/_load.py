"""The load the benchmark puts on a chain, from the benchmark's own process.

Bulk data goes out with blocking ``sendall`` of a large buffer (the GIL is released while
the kernel copies), one thread per stream; round trips use one blocking socket with
TCP_NODELAY; the 1000-connection test uses asyncio. See ``_target.py`` for the far end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

_BLOCK = memoryview(os.urandom(4 * 1024 * 1024))


class LoadError(Exception):
    """A test could not complete (timeout, reset, wrong reply); the message says which."""


def _connect(port: int, timeout: float) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _send_and_wait(s: socket.socket, nbytes: int) -> None:
    s.sendall(b"S" + struct.pack(">Q", nbytes))
    left = nbytes
    block = len(_BLOCK)
    while left:
        n = min(left, block)
        s.sendall(_BLOCK[:n])
        left -= n
    reply = s.recv(1)
    if reply != b"K":
        raise LoadError(f"sink answered {reply!r} instead of b'K' (connection closed?)")


def stream(port: int, nbytes: int, timeout: float) -> float:
    """Send NBYTES through the chain on one connection; seconds until the sink had them all."""
    with _connect(port, timeout) as s:
        start = time.perf_counter()
        try:
            _send_and_wait(s, nbytes)
        except OSError as e:
            raise LoadError(f"single stream: {e}") from None
        return time.perf_counter() - start


def parallel_streams(port: int, nbytes: int, streams: int, timeout: float) -> float:
    """Send NBYTES in total over STREAMS connections at once; seconds until all arrived."""
    each = nbytes // streams
    sockets = [_connect(port, timeout) for _ in range(streams)]
    errors: list[BaseException] = []
    go = threading.Barrier(streams + 1)

    def run(s: socket.socket) -> None:
        go.wait()
        try:
            _send_and_wait(s, each)
        except (OSError, LoadError) as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in sockets]
    try:
        for t in threads:
            t.start()
        go.wait()
        start = time.perf_counter()
        for t in threads:
            t.join(timeout)
        elapsed = time.perf_counter() - start
    finally:
        for s in sockets:
            s.close()
    if errors:
        raise LoadError(f"{streams} streams: {errors[0]}")
    if any(t.is_alive() for t in threads):
        raise LoadError(f"{streams} streams: not done after {timeout:g} s")
    return elapsed


def round_trips(port: int, count: int, warmup: int, size: int, timeout: float) -> list[float]:
    """COUNT round trips of SIZE bytes over one connection, after WARMUP; seconds each."""
    message = b"e" * size
    times: list[float] = []
    with _connect(port, timeout) as s:
        for i in range(warmup + count):
            start = time.perf_counter()
            s.sendall(message)
            got = 0
            while got < size:
                chunk = s.recv(size - got)
                if not chunk:
                    raise LoadError(f"round trip: connection closed after {got} bytes")
                got += len(chunk)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def open_many(port: int, count: int, timeout: float, while_open: Callable[[], Any]) -> float:
    """Open COUNT connections at once, each echoing one byte; call WHILE_OPEN, then close.

    :returns: seconds from the first connect until every connection had its byte back.
    """
    return asyncio.run(_open_many(port, count, timeout, while_open))


async def _open_many(port: int, count: int, timeout: float, while_open: Callable[[], Any]) -> float:
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(b"x")
        if await reader.readexactly(1) != b"x":
            raise LoadError("echo answered another byte")

    start = time.perf_counter()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(one() for _ in range(count)), return_exceptions=True), timeout
        )
    except TimeoutError:
        await _close_all(writers)
        raise LoadError(f"{count} connections: not all echoed after {timeout:g} s") from None
    elapsed = time.perf_counter() - start
    failed = [r for r in results if isinstance(r, BaseException)]
    try:
        if failed:
            raise LoadError(f"{len(failed)} of {count} connections failed: {failed[0]!r}")
        while_open()
    finally:
        await _close_all(writers)
    return elapsed


async def _close_all(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        w.close()
    for w in writers:
        with contextlib.suppress(OSError):
            await w.wait_closed()
