"""The far end of every chain: a byte sink and an echo server in one asyncio process.

    python bench/_target.py        # prints the port it listens on (127.0.0.1), then serves

Per connection, the first byte says what it is:

* ``S`` + u64 N (big-endian): read and discard N bytes, then answer one byte ``K``; another
  command may follow on the same connection. The sender times from its first byte to ``K``,
  so no half-close has to travel through the chain.
* anything else: echo every byte back, that first byte included.

It reads into one preallocated buffer (``BufferedProtocol``: no allocation per read) and
runs in its own process, so it costs the chains under test nothing and is checked by the
direct figure, which must be far above every chain's.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys

_BUFFER = bytearray(4 * 1024 * 1024)
_VIEW = memoryview(_BUFFER)
_SINK = ord("S")
_HEADER = 9


class TargetProtocol(asyncio.BufferedProtocol):
    """One connection: a sink or an echo, decided by its first byte."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.echo = False
        self.header = bytearray()
        self.left = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)

    def get_buffer(self, sizehint: int) -> memoryview:
        # One buffer for every connection: each read is handled before the next one.
        return _VIEW

    def buffer_updated(self, nbytes: int) -> None:
        assert self.transport is not None
        data = _VIEW[:nbytes]
        while data:
            if self.echo:
                self.transport.write(bytes(data))
                return
            if self.left:
                take = min(self.left, len(data))
                self.left -= take
                data = data[take:]
                if not self.left:
                    self.transport.write(b"K")
                continue
            if not self.header and data[0] != _SINK:
                self.echo = True
                continue
            need = _HEADER - len(self.header)
            self.header += data[:need]
            data = data[need:]
            if len(self.header) == _HEADER:
                (self.left,) = struct.unpack(">Q", self.header[1:])
                self.header = bytearray()
                if not self.left:
                    self.transport.write(b"K")

    def pause_writing(self) -> None:
        # An echo whose reader is slow: stop reading until it catches up.
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(TargetProtocol, "127.0.0.1", port, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(port))


if __name__ == "__main__":
    main()
