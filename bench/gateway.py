"""Gateway benchmark: nbbridge-gateway beside websockify (Debian's or PyPI's) in the same run.

    PYTHONPATH=src .venv/bin/python bench/gateway.py [--rounds 3] [--megabytes 256]
        [--round-trips 2000] [--connections 1000] [--websockify PATH]

Starts on 127.0.0.1: a target process with three TCP services (a source that sends
until the client leaves, an echo, a greeter that says the RFB greeting and holds the
connection), and for each figure one proxy at a time in its own process, in front of the
service it needs: ``twistd -n nbbridge-gateway ... PORT`` and ``websockify PORT HOST:PORT``.
The client is the same for both: a raw asyncio WebSocket client in this process (frames
parsed with memoryviews, so it is not the bottleneck it would be with a full library).

* throughput, MB/s: service -> browser (the VNC direction): read ``--megabytes`` MB from the
  source, and browser -> service: send ``--megabytes`` MB in 64 KiB binary messages to a sink;
* round trip, us: 100-byte binary messages echoed, one at a time, p50 and p99;
* concurrent connections: open ``--connections`` WebSockets at once, each must receive the
  greeting; count those that did (and hold them all open until the count is done).

Each figure is taken ``--rounds`` times, alternating nbbridge and websockify; min/median/max.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

GREETING = b"RFB 003.008\n"
CHUNK = 64 * 1024

# -- the target process ------------------------------------------------------------------------

TARGET = r"""
import socket, socketserver, sys, threading
BLOCK = b"x" * (1 << 20)
class Source(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while True:
                self.request.sendall(BLOCK)
        except OSError:
            pass
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass
class Sink(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while self.request.recv(1 << 20):
                pass
        except OSError:
            pass
class Greeter(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            self.request.sendall(b"RFB 003.008\n")
            self.request.recv(1)
        except OSError:
            pass
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 4096
servers = [Server(("127.0.0.1", 0), h) for h in (Source, Echo, Sink, Greeter)]
for server in servers:
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
print(" ".join(str(s.server_address[1]) for s in servers), flush=True)
threading.Event().wait()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Proxy:
    """One proxy process in front of TARGET_PORT, listening on ``port``."""

    def __init__(self, kind: str, target_port: int, websockify: str, log: str) -> None:
        self.kind = kind
        self.port = free_port()
        if kind == "nbbridge":
            twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
            argv = [
                twistd,
                "-n",
                "--pidfile=",
                "nbbridge-gateway",
                "--client_hostname",
                "127.0.0.1",
                "--client_port",
                str(target_port),
                str(self.port),
            ]
        else:
            argv = [websockify, f"127.0.0.1:{self.port}", f"127.0.0.1:{target_port}"]
        self._log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# -- a raw WebSocket client --------------------------------------------------------------------


class WS:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int) -> WS:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(head.split(b"\r\n")[0].decode())
        return cls(reader, writer)

    async def frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame (servers do not mask)."""
        b0, b1 = await self.r.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.r.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.r.readexactly(8))
        return b0 & 0x0F, await self.r.readexactly(n)

    def send(self, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x82, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
        # A zero masking key leaves the payload as it is (RFC 6455 allows any key).
        self.w.write(head + b"\0\0\0\0" + payload)

    def close(self) -> None:
        self.w.transport.abort() if hasattr(self.w, "transport") else self.w.close()


# -- the figures -------------------------------------------------------------------------------


async def download(port: int, megabytes: int) -> float:
    """Bytes on the wire, frame headers included (about 10 per 64 KiB): counting, not
    parsing, keeps the client from being what is measured."""
    ws = await WS.open(port)
    total, start = 0, time.perf_counter()
    want = megabytes * 1024 * 1024
    while total < want:
        data = await ws.r.read(1 << 20)
        if not data:
            break
        total += len(data)
    elapsed = time.perf_counter() - start
    ws.close()
    if total < want:
        raise RuntimeError(f"got {total} of {want} bytes")
    return total / elapsed / 1e6


async def upload(port: int, megabytes: int) -> float:
    ws = await WS.open(port)
    block = b"y" * CHUNK
    start = time.perf_counter()
    for _ in range(megabytes * 1024 * 1024 // CHUNK):
        ws.send(block)
        await ws.w.drain()
    # An echo of a marker would mix directions; the sink only reads, so wait for the socket
    # to drain completely: what is in flight is at most the socket buffers.
    await ws.w.drain()
    elapsed = time.perf_counter() - start
    ws.close()
    return megabytes * 1024 * 1024 / elapsed / 1e6


async def round_trips(port: int, count: int) -> tuple[float, float]:
    ws = await WS.open(port)
    message = b"z" * 100
    times = []
    for _ in range(count):
        start = time.perf_counter()
        ws.send(message)
        got = b""
        while len(got) < 100:
            _, payload = await ws.frame()
            got += payload
        times.append(time.perf_counter() - start)
    ws.close()
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


async def concurrent(port: int, count: int, timeout: float) -> int:
    async def one() -> WS | None:
        try:
            ws = await WS.open(port)
            _, payload = await ws.frame()
            return ws if payload == GREETING else None
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            return None

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    held = [t.result() for t in done if not t.cancelled() and t.result() is not None]
    ok = len(held)
    for ws in held:
        ws.close()  # type: ignore[union-attr]
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--connect-timeout", type=float, default=60)
    parser.add_argument("--websockify", default=shutil.which("websockify"))
    parser.add_argument(
        "--figures", default="down,up,rtt,conn", help="which figures: down,up,rtt,conn"
    )
    args = parser.parse_args()
    if not args.websockify:
        sys.exit("websockify not found (Debian: apt-get install websockify)")
    workdir = tempfile.mkdtemp(prefix="bench-gateway-")
    target = subprocess.Popen(
        [sys.executable, "-c", TARGET, str(args.megabytes)], stdout=subprocess.PIPE
    )
    assert target.stdout is not None
    source, echo, sink, greeter = map(int, target.stdout.readline().split())
    results: dict[tuple[str, str], list[float]] = {}

    wanted = set(args.figures.split(","))
    keys = {"service->browser": "down", "browser->service": "up", "100 B": "rtt", "of ": "conn"}

    def measure(figure: str, port_of: int, run: Callable[[int], float]) -> None:
        if not any(figure.startswith(k) and v in wanted for k, v in keys.items()):
            return
        for _ in range(args.rounds):
            for kind in ("nbbridge", "websockify"):
                proxy = Proxy(kind, port_of, args.websockify, os.path.join(workdir, kind + ".log"))
                try:
                    value = run(proxy.port)
                finally:
                    proxy.close()
                results.setdefault((figure, kind), []).append(value)
                print(f"  {figure:28} {kind:10} {value:10.1f}", flush=True)

    try:
        measure("service->browser MB/s", source, lambda p: asyncio.run(download(p, args.megabytes)))
        measure("browser->service MB/s", sink, lambda p: asyncio.run(upload(p, args.megabytes)))
        p99s: list[float] = []

        def rtt(p: int) -> float:
            p50, p99 = asyncio.run(round_trips(p, args.round_trips))
            p99s.append(p99)
            print(f"  {'100 B round trip p99, us':28} {'(same run)':10} {p99:10.1f}", flush=True)
            return p50

        measure("100 B round trip p50, us", echo, rtt)
        measure(
            f"of {args.connections} connections held",
            greeter,
            lambda p: float(asyncio.run(concurrent(p, args.connections, args.connect_timeout))),
        )
    finally:
        target.terminate()
        target.wait()

    print()
    print(f"websockify: {args.websockify}; {args.rounds} rounds; logs in {workdir}")
    print("| figure | proxy | min | median | max | nbbridge / websockify (medians) |")
    print("|---|---|---:|---:|---:|---:|")
    figures = dict.fromkeys(f for f, _ in results)
    for figure in figures:
        medians = {}
        for kind in ("nbbridge", "websockify"):
            values = results[(figure, kind)]
            medians[kind] = statistics.median(values)
            ratio = ""
            if kind == "nbbridge" and medians.get(kind):
                other = statistics.median(results[(figure, "websockify")])
                ratio = f"x{medians[kind] / other:.2f}" if other else "n/a"
            print(
                f"| {figure} | {kind} | {min(values):.0f} | {medians[kind]:.0f} | "
                f"{max(values):.0f} | {ratio} |"
            )


if __name__ == "__main__":
    main()
