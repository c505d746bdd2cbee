"""Reverse-proxy benchmark: nbbridge.web beside direct Jupyter and configurable-http-proxy.

    PYTHONPATH=src .venv/bin/python bench/web_proxy.py [--rounds 3] [--seconds 10]
        [--connections 8] [--executes 300] [--chp PATH] [--markdown]

Starts on 127.0.0.1, in a temporary directory: one jupyter-server (token in its environment),
an nbbridge.web proxy in its own process (``--serve``, below) and JupyterHub's
configurable-http-proxy (``--chp``: its script, e.g. from ``npm install
configurable-http-proxy@5.3.0`` in a temporary directory; skipped when absent), both in front
of that Jupyter. Then, in the same run:

* small GETs (``/api/status``, the token in a header that every path passes on) with ``wrk``
  (Debian's package): req/s and p99 latency for direct, nbbridge.web and chp, ``--rounds``
  times each, interleaved so a noisy machine hurts them alike;
* WebSocket round trips of a 200-byte message to an Autobahn echo server, direct and through
  a second nbbridge.web process: the proxy's own cost, without the kernel's;
* kernel ``execute_request`` of ``1+1`` → ``execute_reply`` round trips over the kernel
  WebSocket (legacy JSON framing), direct and through nbbridge.web taking turns execute by
  execute (the kernel's own drift dominates the round trip), with the median of the paired
  differences.

Prints min / median / max per figure and the medians' ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import Child, child_env, free_port


def serve_proxy(port: int, upstream_port: int) -> None:
    """The proxy process: everything on 127.0.0.1:PORT to the Jupyter on UPSTREAM_PORT."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
    from twisted.web.server import Site

    from nbbridge.web import ProxyResource, Route, Upstream, UpstreamPool

    jupyter = Upstream("jupyter", TCP4ClientEndpoint(reactor, "127.0.0.1", upstream_port))
    route = Route(jupyter)
    site = Site(ProxyResource(lambda request: route, UpstreamPool(reactor)))
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log in a bench
    TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(site)
    print(f"proxy listening on {port}", flush=True)
    reactor.run()


def serve_echo(port: int) -> None:
    """A WebSocket echo server (Autobahn) on 127.0.0.1:PORT: the proxy's cost alone."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    class Echo(WebSocketServerProtocol):
        def onConnect(self, request: Any) -> None:
            self.transport.setTcpNoDelay(True)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = Echo
    TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(factory)
    print(f"echo listening on {port}", flush=True)
    reactor.run()


def start_jupyter(work: Path, token: str) -> tuple[Child, int]:
    port = free_port()
    for name in ("root", "config", "data", "runtime", "ipython"):
        (work / "jupyter" / name).mkdir(parents=True, exist_ok=True)
    base = work / "jupyter"
    env = child_env() | {
        "JUPYTER_TOKEN": token,
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "IPYTHONDIR": str(base / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    args = [
        str(Path(sys.executable).parent / "jupyter-server"),
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={base / 'root'}",
        "--ServerApp.log_level=WARN",
    ]
    if os.geteuid() == 0:
        args.append("--ServerApp.allow_root=True")
    child = Child("jupyter", args, work, env)
    child.wait_listening(port, 60)
    return child, port


def wrk(url: str, token: str, seconds: int, connections: int) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of a wrk run against URL."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: token {token}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rate, float(p99.group(1)) * scale


def start_kernel(port: int, token: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/kernels",
        data=b'{"name": "python3"}',
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(json.load(response)["id"])


async def execute_round_trips(
    ports: dict[str, int], token: str, kernel: str, executes: int
) -> dict[str, list[float]]:
    """Execute round trips (ms) per path, the paths taking turns (in the running reactor)."""
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    class Kernel(WebSocketClientProtocol):
        def __init__(self) -> None:
            super().__init__()
            self.opened: defer.Deferred[None] = defer.Deferred()
            self.waiting: tuple[str, defer.Deferred[None]] | None = None

        def onOpen(self) -> None:
            self.transport.setTcpNoDelay(True)  # as a browser does
            self.opened.callback(None)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            message = json.loads(payload)
            if (
                self.waiting is not None
                and message["header"]["msg_type"] == "execute_reply"
                and message["parent_header"].get("msg_id") == self.waiting[0]
            ):
                _, d = self.waiting
                self.waiting = None
                d.callback(None)

        def execute(self) -> defer.Deferred[None]:
            msg_id = uuid.uuid4().hex
            d: defer.Deferred[None] = defer.Deferred()
            self.waiting = (msg_id, d)
            header = {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "username": "bench",
                "session": uuid.uuid4().hex,
                "version": "5.3",
            }
            content = {"code": "1+1", "silent": False, "store_history": False}
            content |= {"user_expressions": {}, "allow_stdin": False}
            self.sendMessage(
                json.dumps(
                    {
                        "header": header,
                        "parent_header": {},
                        "metadata": {},
                        "content": content,
                        "channel": "shell",
                        "buffers": [],
                    }
                ).encode()
            )
            return d

    results: dict[str, list[float]] = {name: [] for name in ports}

    async def run() -> None:
        sockets = {}
        for name, port in ports.items():
            url = f"ws://127.0.0.1:{port}/api/kernels/{kernel}/channels"
            factory = WebSocketClientFactory(
                url, headers={"Authorization": f"token {token}"}, reactor=reactor
            )
            factory.protocol = Kernel
            proto = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
            await proto.opened
            for _ in range(20):  # warm-up
                await proto.execute()
            sockets[name] = proto
        # Alternate the paths execute by execute, so that the kernel's own drift (it dominates
        # the round trip) hits both alike; the order within a pair alternates too.
        names = list(sockets)
        for i in range(executes):
            for name in names if i % 2 == 0 else reversed(names):
                start = time.perf_counter()
                await sockets[name].execute()
                results[name].append((time.perf_counter() - start) * 1000)
        for proto in sockets.values():
            proto.sendClose(1000)

    await run()
    return results


async def echo_round_trips(ports: dict[str, int], count: int) -> dict[str, list[float]]:
    """Round trips (ms) of a 200-byte message to the echo server, the paths taking turns."""
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    class Client(WebSocketClientProtocol):
        def __init__(self) -> None:
            super().__init__()
            self.opened: defer.Deferred[None] = defer.Deferred()
            self.reply: defer.Deferred[None] | None = None

        def onOpen(self) -> None:
            self.transport.setTcpNoDelay(True)
            self.opened.callback(None)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            d, self.reply = self.reply, None
            assert d is not None
            d.callback(None)

        def ask(self) -> defer.Deferred[None]:
            self.reply = defer.Deferred()
            self.sendMessage(b"x" * 200, isBinary=True)
            return self.reply

    results: dict[str, list[float]] = {name: [] for name in ports}

    async def run() -> None:
        clients = {}
        for name, port in ports.items():
            factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/echo", reactor=reactor)
            factory.protocol = Client
            client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
            await client.opened
            for _ in range(100):
                await client.ask()
            clients[name] = client
        names = list(clients)
        for i in range(count):
            for name in names if i % 2 == 0 else reversed(names):
                start = time.perf_counter()
                await clients[name].ask()
                results[name].append((time.perf_counter() - start) * 1000)
        for client in clients.values():
            client.sendClose(1000)

    await run()
    return results


def run_in_reactor(work: Any) -> None:
    """Run the coroutine function WORK in the reactor (once per process: Twisted's reactor
    cannot restart)."""
    from twisted.internet import defer, reactor

    done: list[Any] = []
    d = defer.Deferred.fromCoroutine(work())
    d.addBoth(lambda r: (done.append(r), reactor.callLater(0.5, reactor.stop)))
    reactor.run()
    if done and hasattr(done[0], "raiseException"):
        done[0].raiseException()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def triple(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def print_gets(
    args: argparse.Namespace, rates: dict[str, list[float]], p99s: dict[str, list[float]]
) -> None:
    print()
    print(
        f"GET /api/status, wrk -t1 -c{args.connections} -d{args.seconds}s,"
        f" {args.rounds} rounds (min / median / max)"
    )
    print(f"{'path':26} {'req/s':>22} {'p99 ms':>22}")
    for name in rates:
        print(f"{name:26} {triple(rates[name]):>22} {triple(p99s[name]):>22}")
    web = statistics.median(rates["nbbridge.web"])
    print(f"nbbridge.web / direct req/s: {web / statistics.median(rates['direct']):.2f}")
    if "configurable-http-proxy" in rates:
        chp = statistics.median(rates["configurable-http-proxy"])
        print(f"nbbridge.web / configurable-http-proxy req/s: {web / chp:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", nargs=2, type=int, metavar=("PORT", "UPSTREAM"))
    parser.add_argument("--serve-echo", type=int, metavar="PORT")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--executes", type=int, default=300)
    parser.add_argument("--echoes", type=int, default=2000)
    parser.add_argument("--chp", default=shutil.which("configurable-http-proxy"))
    parser.add_argument("--skip-get", action="store_true", help="only the execute round trips")
    args = parser.parse_args()
    if args.serve:
        serve_proxy(*args.serve)
        return
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    token = secrets.token_hex(24)
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="nbbridge-web-bench-") as tmp:
        work = Path(tmp)
        try:
            jupyter, jport = start_jupyter(work, token)
            children.append(jupyter)
            ports = {"direct": jport}
            pport = free_port()
            proxy = Child(
                "nbbridge-web",
                [sys.executable, __file__, "--serve", str(pport), str(jport)],
                work,
                child_env(),
            )
            children.append(proxy)
            proxy.wait_listening(pport)
            ports["nbbridge.web"] = pport
            if args.chp:
                cport, aport = free_port(), free_port()
                chp = Child(
                    "chp",
                    [
                        args.chp,
                        "--ip=127.0.0.1",
                        f"--port={cport}",
                        "--api-ip=127.0.0.1",
                        f"--api-port={aport}",
                        f"--default-target=http://127.0.0.1:{jport}",
                        "--log-level=warn",
                    ],
                    work,
                    child_env() | {"CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16)},
                )
                children.append(chp)
                chp.wait_listening(cport)
                ports["configurable-http-proxy"] = cport
            versions = {
                "chp": subprocess.run(
                    [args.chp, "--version"], capture_output=True, text=True
                ).stdout.strip()
                if args.chp
                else None,
                "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(
                    "\n"
                )[0],
            }
            print(f"# {versions}", flush=True)
            rates: dict[str, list[float]] = {name: [] for name in ports}
            p99s: dict[str, list[float]] = {name: [] for name in ports}
            for port in [] if args.skip_get else ports.values():  # warm-up
                wrk(f"http://127.0.0.1:{port}/api/status", token, 2, args.connections)
            for r in range(0 if args.skip_get else args.rounds):
                for name, port in ports.items():
                    rate, p99 = wrk(
                        f"http://127.0.0.1:{port}/api/status",
                        token,
                        args.seconds,
                        args.connections,
                    )
                    rates[name].append(rate)
                    p99s[name].append(p99)
                    print(f"round {r + 1} {name}: {rate:.0f} req/s, p99 {p99:.1f} ms", flush=True)
            kernel = start_kernel(jport, token)
            eport, epport = free_port(), free_port()
            echo = Child(
                "echo", [sys.executable, __file__, "--serve-echo", str(eport)], work, child_env()
            )
            children.append(echo)
            echo.wait_listening(eport)
            echo_proxy = Child(
                "nbbridge-web-echo",
                [sys.executable, __file__, "--serve", str(epport), str(eport)],
                work,
                child_env(),
            )
            children.append(echo_proxy)
            echo_proxy.wait_listening(epport)
            measured: dict[str, dict[str, list[float]]] = {}

            async def round_trips() -> None:
                measured["execute"] = await execute_round_trips(
                    {k: ports[k] for k in ("direct", "nbbridge.web")},
                    token,
                    kernel,
                    args.executes,
                )
                measured["echo"] = await echo_round_trips(
                    {"direct": eport, "nbbridge.web": epport}, args.echoes
                )

            run_in_reactor(round_trips)
        finally:
            for child in reversed(children):
                child.stop()
    if not args.skip_get:
        print_gets(args, rates, p99s)
    print()
    titles = {
        "execute": f"kernel execute round trip (1+1 -> execute_reply), {args.executes} each, ms",
        "echo": f"WebSocket echo round trip (200 B, Autobahn echo server), {args.echoes} each, ms",
    }
    for what, trips in measured.items():
        print(titles[what])
        print(f"{'path':26} {'p50':>8} {'p90':>8} {'p99':>8}")
        for name, values in trips.items():
            p50, p90, p99 = (pct(values, q) for q in (0.5, 0.9, 0.99))
            print(f"{name:26} {p50:8.2f} {p90:8.2f} {p99:8.2f}")
        added = pct(trips["nbbridge.web"], 0.5) - pct(trips["direct"], 0.5)
        pairs = [w - d for w, d in zip(trips["nbbridge.web"], trips["direct"], strict=True)]
        print(
            f"nbbridge.web adds {added:+.2f} ms at p50;"
            f" median of the {len(pairs)} paired differences {statistics.median(pairs):+.2f} ms"
        )
        print()


if __name__ == "__main__":
    main()
