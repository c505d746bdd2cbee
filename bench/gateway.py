"""Gateway benchmark: nbbridge-gateway beside websockify (Debian's or PyPI's) in the same run.

    PYTHONPATH=src .venv/bin/python bench/gateway.py [--rounds 5] [--megabytes 256]
        [--round-trips 2000] [--connections 1000] [--websockify PATH]
        [--figures down,up,rtt,conn] [--py-spy DIR]

Starts on 127.0.0.1: a target process with four TCP services (a source that sends until the
client leaves, an echo, a sink that answers one byte once the whole upload is in, a greeter
that says the RFB greeting and holds the connection), and for each figure one proxy at a time
in its own process, in front of the service it needs: ``twistd -n nbbridge-gateway ... PORT``
and ``websockify PORT HOST:PORT``. The client is the same for both, in this process: blocking
sockets for the one-connection figures (frames sent from one pre-masked buffer, received into
one reused buffer and parsed in place), asyncio for the many, so that the client is not what
is measured; each run prints the CPU share of the proxy (with its children), the target and
the client, to show who was busy.

* throughput, MB/s of payload: service -> browser (the VNC direction): read ``--megabytes`` MB
  from the source, and browser -> service: send ``--megabytes`` MB in 64 KiB binary messages
  to the sink, until its receipt for the last byte; and the proxy's CPU ms per MB;
* round trip, us: 100-byte binary messages echoed, one at a time, p50 and p99; and the
  proxy's CPU us per round trip;
* concurrent connections: open ``--connections`` WebSockets at once, each must receive the
  greeting; count those that did (and hold them all open until the count is done).

Each figure is taken ``--rounds`` times, alternating nbbridge and websockify; min/median/max.
With ``--py-spy DIR`` each nbbridge run is recorded as raw stacks (py-spy beside this Python).
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
    # One byte back once the whole upload (argv[1] MiB) is in: the client's clock stops there.
    def handle(self):
        want, got = int(sys.argv[1]) << 20, 0
        try:
            while data := self.request.recv(1 << 20):
                got += len(data)
                if got >= want:
                    self.request.sendall(b"!")
                    want = float("inf")
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


def fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


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

    def __init__(
        self, kind: str, target_port: int, websockify: str, log: str, cpus: set[int] | None = None
    ) -> None:
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
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=pin
        )
        wait_port(self.port, self.proc)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# -- CPU use of the processes in a figure ----------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float]:
    """(parent pid, user CPU seconds, system CPU seconds) of PID, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # After the name: state ppid ... utime (14th field overall) stime (15th).
    return int(fields[1]), int(fields[11]) / _TICK, int(fields[12]) / _TICK


Procs = dict[int, tuple[int, float, float]]


def snapshot() -> Procs:
    """{pid: (parent pid, user CPU s, system CPU s)} of every process."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                procs[int(name)] = _stat(int(name))
            except OSError:
                continue
    return procs


def tree_cpu(procs: Procs, root: int) -> tuple[float, float]:
    """CPU seconds (user, system) of ROOT and its live descendants (websockify forks one
    process per connection)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    user = system = 0.0
    todo = [root]
    while todo:
        pid = todo.pop()
        _, u, s = procs.get(pid, (0, 0.0, 0.0))
        user, system = user + u, system + s
        todo.extend(children.get(pid, ()))
    return user, system


class Meter:
    """CPU share (of one core) of the proxy, the target and this client over a figure's run,
    and how much of it was in the kernel (sys).

    A process near 100% is the bottleneck of that run: if it is the client or the target,
    the figure compares them rather than the proxies. (The /proc scans are outside the
    window, and the client's own time is its process time, so they are not counted.)
    """

    def __init__(self, proxy: int, target: int) -> None:
        self.pids = {"proxy": proxy, "target": target}
        self.shares: dict[str, tuple[float, float]] = {}

    def start(self) -> None:
        procs = snapshot()
        self._cpu = {k: tree_cpu(procs, p) for k, p in self.pids.items()}
        self._own = os.times()
        self._wall = time.perf_counter()

    def stop(self) -> None:
        """Call before the connection closes (a websockify child's time ends with it)."""
        wall = time.perf_counter() - self._wall
        own = os.times()
        procs = snapshot()
        for k, pid in self.pids.items():
            (u0, s0), (u1, s1) = self._cpu[k], tree_cpu(procs, pid)
            self.shares[k] = ((u1 - u0) / wall, (s1 - s0) / wall)
        #: CPU seconds the proxy used in the window (what it costs, whatever the waits)
        self.proxy_seconds = sum(self.shares["proxy"]) * wall
        self.shares["client"] = (
            (own.user - self._own.user) / wall,
            (own.system - self._own.system) / wall,
        )

    def __str__(self) -> str:
        return " ".join(
            f"{k} {(u + s) * 100:3.0f}% (sys {s * 100:2.0f}%)" for k, (u, s) in self.shares.items()
        )


# -- a raw WebSocket client --------------------------------------------------------------------
#
# Blocking sockets for the one-connection figures: the client then costs little more than its
# system calls (frames sent from one pre-masked buffer, received into one reused buffer and
# parsed in place), so that it is not what the figures measure. asyncio for the 1000.


def _handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
    ).encode()


def _check_answer(head: bytes) -> None:
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())


def client_frame(payload: bytes) -> bytes:
    """A masked binary frame of PAYLOAD (with a random key, as a browser masks)."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )
    return head + key + masked


class Payload:
    """Counts the payload bytes of a server's (unmasked) frames as they arrive, in place:
    only a header that straddles two reads is copied (a few bytes)."""

    def __init__(self) -> None:
        self.total = 0
        self._left = 0
        self._head = b""

    def feed(self, view: memoryview) -> None:
        pos, end = 0, len(view)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                self._left -= take
                self.total += take
                pos += take
                continue
            head = self._head + bytes(view[pos : pos + 14 - len(self._head)])
            size = self._header(head)
            if size < 0:
                self._head = head
                return
            pos += size - len(self._head)
            self._head = b""

    def _header(self, head: bytes) -> int:
        """The header's length (and its payload's, in ``_left``), or -1 if HEAD is short."""
        if len(head) < 2:
            return -1
        if head[1] & 0x80:
            raise RuntimeError("a masked frame from the server")
        n, size = head[1] & 0x7F, 2
        if n == 126:
            if len(head) < 4:
                return -1
            (n,) = struct.unpack_from("!H", head, 2)
            size = 4
        elif n == 127:
            if len(head) < 10:
                return -1
            (n,) = struct.unpack_from("!Q", head, 2)
            size = 10
        self._left = n
        return size


class Client:
    """One WebSocket, blocking."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(_handshake(port))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("closed during the handshake")
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        _check_answer(head)
        self.buffer = bytearray(1 << 20)
        self.view = memoryview(self.buffer)
        self.payload = Payload()
        self.payload.feed(memoryview(rest))

    def receive(self, total: int) -> None:
        """Read frames until TOTAL payload bytes (since the start) have come."""
        payload, recv_into, view = self.payload, self.sock.recv_into, self.view
        while payload.total < total:
            n = recv_into(self.buffer)
            if not n:
                raise RuntimeError(f"closed after {payload.total} of {total} bytes")
            payload.feed(view[:n])

    def close(self) -> None:
        self.sock.close()


class WS:
    """One WebSocket, asyncio (for the 1000 at once)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int) -> WS:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_handshake(port))
        _check_answer(await reader.readuntil(b"\r\n\r\n"))
        return cls(reader, writer)

    async def frame(self) -> bytes:
        """The payload of the next frame (servers do not mask)."""
        _, b1 = await self.r.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.r.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.r.readexactly(8))
        return await self.r.readexactly(n)

    def close(self) -> None:
        self.w.transport.abort()


# -- the figures -------------------------------------------------------------------------------


def download(port: int, megabytes: int, meter: Meter) -> float:
    """Payload MB/s from the source, the frames parsed in place."""
    ws = Client(port)
    want = megabytes * 1024 * 1024
    meter.start()
    start = time.perf_counter()
    ws.receive(want)
    elapsed = time.perf_counter() - start
    meter.stop()
    ws.close()
    return want / elapsed / 1e6


def upload(port: int, megabytes: int, meter: Meter) -> float:
    """Payload MB/s to the sink, sent as 64 KiB messages from one pre-masked frame; the clock
    stops when the sink's one-byte receipt for the last byte comes back (nothing in flight)."""
    ws = Client(port)
    frame = client_frame(b"y" * CHUNK)
    meter.start()
    start = time.perf_counter()
    for _ in range(megabytes * 1024 * 1024 // CHUNK):
        ws.sock.sendall(frame)
    ws.receive(1)
    elapsed = time.perf_counter() - start
    meter.stop()
    ws.close()
    return megabytes * 1024 * 1024 / elapsed / 1e6


def round_trips(port: int, count: int, meter: Meter) -> tuple[float, float]:
    ws = Client(port)
    frame = client_frame(b"z" * 100)
    times = []
    sendall, receive, clock = ws.sock.sendall, ws.receive, time.perf_counter
    meter.start()
    for i in range(1, count + 1):
        start = clock()
        sendall(frame)
        receive(100 * i)
        times.append(clock() - start)
    meter.stop()
    ws.close()
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


async def concurrent(port: int, count: int, timeout: float) -> int:
    async def one() -> WS | None:
        try:
            ws = await WS.open(port)
            return ws if await ws.frame() == GREETING else None
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--connect-timeout", type=float, default=60)
    parser.add_argument("--websockify", default=shutil.which("websockify"))
    parser.add_argument(
        "--figures", default="down,up,rtt,conn", help="which figures: down,up,rtt,conn"
    )
    parser.add_argument(
        "--pin",
        metavar="PROXY_CPU:CPU",
        help="run the proxy on one CPU, the client and the target on another (e.g. 1:0)",
    )
    parser.add_argument(
        "--py-spy", metavar="DIR", help="record each nbbridge run with py-spy (raw stacks) here"
    )
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    parser.add_argument("--py-spy-bin", default=beside if os.path.exists(beside) else "py-spy")
    args = parser.parse_args()
    if args.py_spy:
        os.makedirs(args.py_spy, exist_ok=True)
    if not args.websockify:
        sys.exit("websockify not found (Debian: apt-get install websockify)")
    workdir = tempfile.mkdtemp(prefix="bench-gateway-")
    proxy_cpus = None
    if args.pin:
        proxy_cpu, other_cpu = (int(c) for c in args.pin.split(":"))
        proxy_cpus = {proxy_cpu}
        os.sched_setaffinity(0, {other_cpu})  # this client, and the target it starts
    target = subprocess.Popen(
        [sys.executable, "-c", TARGET, str(args.megabytes)], stdout=subprocess.PIPE
    )
    assert target.stdout is not None
    source, echo, sink, greeter = map(int, target.stdout.readline().split())
    results: dict[tuple[str, str], list[float]] = {}

    wanted = set(args.figures.split(","))
    keys = {"service->browser": "down", "browser->service": "up", "100 B": "rtt", "of ": "conn"}
    print(f"load average before: {load()}", flush=True)

    def measure(
        figure: str,
        port_of: int,
        run: Callable[[int, Meter], float],
        cost: tuple[str, float] | None = None,
    ) -> None:
        """FIGURE from RUN, rounds alternating the proxies; with COST (a label and a scale),
        the proxy's CPU time times the scale is a figure too (CPU per MB, per round trip)."""
        if not any(figure.startswith(k) and v in wanted for k, v in keys.items()):
            return
        for i in range(args.rounds):
            for kind in ("nbbridge", "websockify"):
                log = os.path.join(workdir, kind + ".log")
                proxy = Proxy(kind, port_of, args.websockify, log, proxy_cpus)
                spy = None
                if args.py_spy and kind == "nbbridge":
                    out = os.path.join(args.py_spy, f"{keys_of(figure)}-{i}.txt")
                    spy = subprocess.Popen(
                        [args.py_spy_bin, "record", "--nonblocking", "--format", "raw",
                         "--pid", str(proxy.proc.pid), "--output", out],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                meter = Meter(proxy.proc.pid, target.pid)
                try:
                    value = run(proxy.port, meter)
                finally:
                    proxy.close()
                    if spy is not None:
                        spy.wait()
                results.setdefault((figure, kind), []).append(value)
                print(f"  {figure:28} {kind:10} {value:10.1f}   cpu: {meter}", flush=True)
                if cost is not None:
                    label, scale = cost
                    results.setdefault((label, kind), []).append(meter.proxy_seconds * scale)

    def keys_of(figure: str) -> str:
        return next(v for k, v in keys.items() if figure.startswith(k))

    try:
        per_mb = ("proxy CPU ms per MB, {}", 1000 / (args.megabytes * 1.048576))
        measure(
            "service->browser MB/s",
            source,
            lambda p, m: download(p, args.megabytes, m),
            (per_mb[0].format("service->browser"), per_mb[1]),
        )
        measure(
            "browser->service MB/s",
            sink,
            lambda p, m: upload(p, args.megabytes, m),
            (per_mb[0].format("browser->service"), per_mb[1]),
        )

        def rtt(p: int, meter: Meter) -> float:
            p50, p99 = round_trips(p, args.round_trips, meter)
            print(f"  {'100 B round trip p99, us':28} {'(same run)':10} {p99:10.1f}", flush=True)
            return p50

        measure(
            "100 B round trip p50, us",
            echo,
            rtt,
            ("proxy CPU us per round trip", 1e6 / args.round_trips),
        )
        measure(
            f"of {args.connections} connections held",
            greeter,
            lambda p, _: float(asyncio.run(concurrent(p, args.connections, args.connect_timeout))),
        )
    finally:
        target.terminate()
        target.wait()
    print(f"load average after: {load()}")

    print()
    print(f"websockify: {args.websockify}; {args.rounds} rounds; logs in {workdir}")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    print(f"git commit: {commit.stdout.strip() or '?'}")
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
                f"| {figure} | {kind} | {fmt(min(values))} | {fmt(medians[kind])} | "
                f"{fmt(max(values))} | {ratio} |"
            )


if __name__ == "__main__":
    main()
