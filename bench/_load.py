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


def open_many(
    port: int,
    count: int,
    timeout: float,
    while_open: Callable[[], Any],
    batch: int | None = None,
) -> float:
    """Open COUNT connections at once, each echoing one byte; call WHILE_OPEN, then close.

    With BATCH, open them BATCH at a time (each batch echoed before the next starts), all
    held open until the end: more connections than a listen backlog without SYN retries.

    :returns: seconds from the first connect until every connection had its byte back.
    """
    return asyncio.run(_open_many(port, count, timeout, while_open, batch or count))


async def _open_many(
    port: int, count: int, timeout: float, while_open: Callable[[], Any], batch: int
) -> float:
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(b"x")
        if await reader.readexactly(1) != b"x":
            raise LoadError("echo answered another byte")

    async def all_of_them() -> list[Any]:
        results: list[Any] = []
        for first in range(0, count, batch):
            n = min(batch, count - first)
            results += await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        return results

    start = time.perf_counter()
    try:
        results = await asyncio.wait_for(all_of_them(), timeout)
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


class ShortConnections:
    """What ``short_connections`` saw: counts, per-connection seconds, the first errors."""

    def __init__(self) -> None:
        self.started = 0
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.errors: list[str] = []
        self.seconds: list[float] = []
        self.elapsed = 0.0


def short_connections(
    port: int, rate: float, duration: float, timeout: float, max_in_flight: int
) -> ShortConnections:
    """RATE connections a second for DURATION seconds: connect, echo a byte, close.

    Each is timed from its connect to its echo. At most MAX_IN_FLIGHT at once: a connection
    due while that many are open is skipped (counted), so a slow chain cannot pile up
    without bound; after DURATION, the ones in flight get TIMEOUT seconds to finish.
    """
    return asyncio.run(_short_connections(port, rate, duration, timeout, max_in_flight))


async def _short_connections(
    port: int, rate: float, duration: float, timeout: float, max_in_flight: int
) -> ShortConnections:
    seen = ShortConnections()
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        start = time.perf_counter()
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout
            )
            writer.write(b"x")
            if await asyncio.wait_for(reader.readexactly(1), timeout) != b"x":
                raise LoadError("echo answered another byte")
            seen.seconds.append(time.perf_counter() - start)
            seen.done += 1
        except (OSError, LoadError, TimeoutError, asyncio.IncompleteReadError) as e:
            seen.failed += 1
            if len(seen.errors) < 5:
                seen.errors.append(repr(e))
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    begin = time.perf_counter()
    while (now := time.perf_counter()) - begin < duration:
        due = int((now - begin) * rate) - seen.started - seen.skipped
        for _ in range(max(0, due)):
            if len(tasks) >= max_in_flight:
                seen.skipped += 1
                continue
            seen.started += 1
            task = asyncio.ensure_future(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.005)
    if tasks:
        await asyncio.wait(set(tasks), timeout=2 * timeout)
    seen.elapsed = time.perf_counter() - begin
    return seen
