"""Datalab benchmark: the datalab front beside its instance direct and configurable-http-proxy.

    PYTHONPATH=src .venv/bin/python bench/datalab_proxy.py [--rounds 3] [--seconds 10]
        [--connections 8] [--executes 300] [--chp PATH]

Starts on 127.0.0.1, in a temporary directory: ``twistd -n nbbridge-datalab`` (subprocess
launcher), uploads a CSV exactly as a front-end does, opens its view for the session cookie,
and reads the instance's port and token from its runtime file. configurable-http-proxy
(``--chp``, e.g. from ``npm install configurable-http-proxy@5.3.0`` in a temporary
directory; skipped when absent) is put in front of the same instance. Then, in one run:

* small GETs of ``/api/status`` with ``wrk``: direct (token header), through the datalab
  (session cookie: the datalab looks up session and instance in its store, checks, strips,
  injects the token) and through chp (token header); req/s and p99, interleaved rounds;
* kernel execute round trips (``1+1`` → ``execute_reply``), direct and through the datalab.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import http.client
import json
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import Child, child_env, free_port

CSV = b"city,temp\nOslo,4\nLima,19\n"


def wrk(url: str, header: str, seconds: int, connections: int) -> tuple[float, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", header, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    return rate, float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]


def upload_and_view(port: int, key: str) -> str:
    ts = str(int(time.time()))
    query = urllib.parse.urlencode({"ts": ts, "filename": "weather.csv"})
    sign = hashlib.sha256((key + ts + "weather.csv").encode()).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/datalab/start?{query}",
        data=CSV,
        method="POST",
        headers={"X-SIGN": sign},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        nonce = json.load(response)["result"]["nonce"]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", f"/datalab/view/{nonce}/lab")
    answer = connection.getresponse()
    cookie = answer.getheader("Set-Cookie") or ""
    connection.close()
    return cookie.split(";")[0]


def execute_round_trips(
    paths: dict[str, tuple[int, dict[str, str]]], kernel: str, executes: int, blocks: int
) -> dict[str, list[float]]:
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    class Kernel(WebSocketClientProtocol):
        def __init__(self) -> None:
            super().__init__()
            self.opened: defer.Deferred[None] = defer.Deferred()
            self.waiting: tuple[str, defer.Deferred[None]] | None = None

        def onOpen(self) -> None:
            self.transport.setTcpNoDelay(True)
            self.opened.callback(None)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            message = json.loads(payload)
            if (
                self.waiting is not None
                and message["header"]["msg_type"] == "execute_reply"
                and message["parent_header"].get("msg_id") == self.waiting[0]
            ):
                d = self.waiting[1]
                self.waiting = None
                d.callback(None)

        def execute(self) -> defer.Deferred[None]:
            msg_id = uuid.uuid4().hex
            d: defer.Deferred[None] = defer.Deferred()
            self.waiting = (msg_id, d)
            header = {"msg_id": msg_id, "msg_type": "execute_request", "username": "bench"}
            header |= {"session": uuid.uuid4().hex, "version": "5.3"}
            content = {"code": "1+1", "silent": False, "store_history": False}
            content |= {"user_expressions": {}, "allow_stdin": False}
            message = {"header": header, "parent_header": {}, "metadata": {}}
            message |= {"content": content, "channel": "shell", "buffers": []}
            self.sendMessage(json.dumps(message).encode())
            return d

    results: dict[str, list[float]] = {name: [] for name in paths}

    async def run() -> None:
        sockets = {}
        for name, (port, headers) in paths.items():
            url = f"ws://127.0.0.1:{port}/api/kernels/{kernel}/channels"
            factory = WebSocketClientFactory(url, headers=headers, reactor=reactor)
            factory.protocol = Kernel
            proto = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
            await proto.opened
            for _ in range(20):
                await proto.execute()
            sockets[name] = proto
        for _ in range(blocks):
            for name, proto in sockets.items():
                for _ in range(max(1, executes // blocks)):
                    start = time.perf_counter()
                    await proto.execute()
                    results[name].append((time.perf_counter() - start) * 1000)
        for proto in sockets.values():
            proto.sendClose(1000)

    done: list[Any] = []
    d = defer.Deferred.fromCoroutine(run())
    d.addBoth(lambda r: (done.append(r), reactor.callLater(0.5, reactor.stop)))
    reactor.run()
    if done and hasattr(done[0], "raiseException"):
        done[0].raiseException()
    return results


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def triple(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--executes", type=int, default=300)
    parser.add_argument("--chp", default=shutil.which("configurable-http-proxy"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    key = secrets.token_urlsafe(32)
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="nbbridge-datalab-bench-") as tmp:
        work = Path(tmp)
        try:
            dport = free_port()
            datalab = Child(
                "datalab",
                [
                    str(Path(sys.executable).parent / "twistd"),
                    "-n",
                    "--pidfile=",
                    "nbbridge-datalab",
                    "--listen",
                    f"tcp:{dport}:interface=127.0.0.1",
                    "--work-dir",
                    str(work / "instances"),
                ],
                work,
                child_env() | {"NBBRIDGE_DATALAB_SIGN_KEY": key},
            )
            children.append(datalab)
            datalab.wait_listening(dport, 60)
            cookie = upload_and_view(dport, key)
            [runtime] = glob.glob(str(work / "instances" / "i-*" / "runtime" / "jpserver-*.json"))
            with open(runtime) as f:
                server = json.load(f)
            jport, token = int(server["port"]), str(server["token"])
            auth = f"Authorization: token {token}"
            origin = f"http://127.0.0.1:{dport}"
            paths = {"direct": (jport, auth), "datalab": (dport, f"Cookie: {cookie}")}
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
                paths["configurable-http-proxy"] = (cport, auth)
            rates: dict[str, list[float]] = {name: [] for name in paths}
            p99s: dict[str, list[float]] = {name: [] for name in paths}
            for port, header in paths.values():  # warm-up
                wrk(f"http://127.0.0.1:{port}/api/status", header, 2, args.connections)
            for r in range(args.rounds):
                for name, (port, header) in paths.items():
                    rate, p99 = wrk(
                        f"http://127.0.0.1:{port}/api/status",
                        header,
                        args.seconds,
                        args.connections,
                    )
                    rates[name].append(rate)
                    p99s[name].append(p99)
                    print(f"round {r + 1} {name}: {rate:.0f} req/s, p99 {p99:.1f} ms", flush=True)
            request = urllib.request.Request(
                f"http://127.0.0.1:{jport}/api/kernels",
                data=b'{"name": "python3"}',
                headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                kernel = str(json.load(response)["id"])
            trips = execute_round_trips(
                {
                    "direct": (jport, {"Authorization": f"token {token}"}),
                    "datalab": (dport, {"Cookie": cookie, "Origin": origin}),
                },
                kernel,
                args.executes,
                blocks=5,
            )
        finally:
            for child in reversed(children):
                child.stop()
    print()
    print(f"GET /api/status, wrk -t1 -c{args.connections} -d{args.seconds}s, {args.rounds} rounds")
    print(f"{'path':26} {'req/s min/med/max':>22} {'p99 ms min/med/max':>22}")
    for name in rates:
        print(f"{name:26} {triple(rates[name]):>22} {triple(p99s[name]):>22}")
    front = statistics.median(rates["datalab"])
    print(f"datalab / direct req/s: {front / statistics.median(rates['direct']):.2f}")
    if "configurable-http-proxy" in rates:
        print(
            "datalab / configurable-http-proxy req/s: "
            f"{front / statistics.median(rates['configurable-http-proxy']):.2f}"
        )
    print()
    print(f"kernel execute round trip, {args.executes} each, ms")
    print(f"{'path':26} {'p50':>8} {'p90':>8} {'p99':>8}")
    for name, values in trips.items():
        print(f"{name:26} {pct(values, 0.5):8.2f} {pct(values, 0.9):8.2f} {pct(values, 0.99):8.2f}")
    added = pct(trips["datalab"], 0.5) - pct(trips["direct"], 0.5)
    print(f"datalab adds {added:+.2f} ms at p50")


if __name__ == "__main__":
    main()
