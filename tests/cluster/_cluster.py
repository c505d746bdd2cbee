"""Several relays sharing a real Redis behind a real HAProxy, all on loopback, for the tests.

`ClusterTestCase` extends the tunnel harness (agents and clients in this process, keys and
tokens on disk) with: one ``redis-server`` (tests/_redis.py: password in its config file,
persistence off, restartable on the same port), three ``twistd nbbridge-relay`` child processes with
``--store redis://...`` and each its own ``--advertise-url`` on HAProxy's origin
(``ws://127.0.0.1:HP/rN``), and HAProxy with the shipped deploy/haproxy config. Relays are
numbered 1..3 as in that config. Everything is stopped, and reaped, by the test's clean-up.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList

from nbbridge.demo import write_secret
from tests._ports import free_port
from tests._redis import RedisServer, start_redis
from tests._tools import skip_unavailable
from tests.deploy._nginx import start_nginx
from tests.tunnel import _tcp
from tests.tunnel._harness import CLIENT, TunnelTestCase
from tests.tunnel._process import ChildProcess, child_env, spawn, twistd_command

from ._haproxy import haproxy_binary, start_haproxy

REPO = Path(__file__).resolve().parents[2]
NGINX_CLUSTER = REPO / "deploy" / "nginx" / "nbbridge-cluster.conf"


def adapt_nginx_cluster(
    text: str, listen_port: int, relay_ports: list[int], *, cert: str, key: str
) -> str:
    """deploy/nginx/nbbridge-cluster.conf on loopback (each place must match as expected)."""
    replacements = [
        (r"listen\s+443\s+ssl;", f"listen 127.0.0.1:{listen_port} ssl;", 1),
        (r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", 1),
        (r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", 1),
    ]
    for n, port in enumerate(relay_ports, 1):
        # In the upstream and in the relay's own location.
        replacements.append((rf"10\.0\.0\.{n}:8765", f"127.0.0.1:{port}", 2))
    for pattern, replacement, expected in replacements:
        text, count = re.subn(pattern, replacement, text)
        if count != expected:
            raise AssertionError(f"{NGINX_CLUSTER}: {count} matches of {pattern!r}")
    return text


RELAYS = 3


class ClusterTestCase(TunnelTestCase):
    """Redis, three relay processes and HAProxy; agents and clients as in TunnelTestCase."""

    timeout = 180

    def setUp(self) -> None:
        super().setUp()
        if haproxy_binary() is None:
            skip_unavailable("haproxy is not installed (apt-get install haproxy)")
        self.relay_processes: dict[int, ChildProcess] = {}
        self.relay_ports: dict[int, int] = {}
        self.lb_port = 0
        self.lb_scheme = "ws"
        #: options agents and clients need to use the front (nginx's TLS: its CA)
        self.front_args: list[str] = []
        self.redis: RedisServer | None = None

    # -- the cluster ---------------------------------------------------------------------------

    @property
    def lb_url(self) -> str:
        """HAProxy's origin: what agents and clients are given."""
        host = "localhost" if self.lb_scheme == "wss" else "127.0.0.1"
        return f"{self.lb_scheme}://{host}:{self.lb_port}"

    def relay_url_of(self, n: int) -> str:
        """Relay N through HAProxy (its advertise URL): to pin a client or agent to it."""
        return f"{self.lb_url}/r{n}"

    async def start_cluster(self, front: str = "haproxy") -> None:
        """Redis, the relays, and the FRONT: HAProxy (plain ws://) or nginx (wss://)."""
        root = Path(self.files.root.path)
        password = secrets.token_urlsafe(24)
        write_secret(root / "redis.password", password)
        self.redis = await start_redis(self, password)
        self.lb_port = free_port()
        self.lb_scheme = "wss" if front == "nginx" else "ws"
        for n in range(1, RELAYS + 1):
            await self.start_cluster_relay(n)
        ports = [self.relay_ports[n] for n in range(1, RELAYS + 1)]
        if front == "haproxy":
            await start_haproxy(self, self.lb_port, ports, str(root))
            return

        def config(_free: int, cert: str, key: str) -> tuple[int, str]:
            # The relays advertise this port already: nginx must take it.
            text = adapt_nginx_cluster(
                NGINX_CLUSTER.read_text(), self.lb_port, ports, cert=cert, key=key
            )
            return self.lb_port, text

        _port, ca = await start_nginx(self, 0, config)
        self.front_args = ["--ca", ca]

    async def start_cluster_relay(self, n: int) -> ChildProcess:
        assert self.redis is not None
        args = [
            *self.relay_args(0),
            "--store",
            self.redis.url,
            "--store-password-file",
            str(Path(self.files.root.path) / "redis.password"),
            "--advertise-url",
            self.relay_url_of(n),
        ]
        argv = twistd_command("nbbridge-relay", args)
        process = spawn(self, f"relay{n}", argv, child_env(), cwd=self.files.root.path)
        found = await process.wait_for(r"nbbridge relay listening on ws://127\.0\.0\.1:(\d+)/")
        await process.wait_for("bus: listening")
        self.relay_ports[n] = int(found.group(1))
        self.relay_processes[n] = process
        return process

    def marks(self) -> dict[int, int]:
        """Where each relay's output stands now (for waits on what comes after)."""
        return {n: len(p.lines) for n, p in self.relay_processes.items()}

    async def relay_logs(
        self,
        pattern: str,
        since: dict[int, int],
        timeout: float = 60,
        among: set[int] | None = None,
    ) -> int:
        """The first relay (of AMONG, default all running) to log PATTERN after SINCE."""
        relays = {
            n: p
            for n, p in self.relay_processes.items()
            if p.running and (among is None or n in among)
        }
        waits: list[Deferred[object]] = []
        for n, process in relays.items():
            d = process.wait_for(pattern, since=since.get(n, 0), timeout=timeout)
            d.addCallback(lambda _, n=n: n)
            waits.append(d)
        try:
            result, _index = await DeferredList(
                waits, fireOnOneCallback=True, fireOnOneErrback=False, consumeErrors=True
            )
        finally:
            for d in waits:
                if not d.called:
                    d.cancel()
        if not isinstance(result, int):
            self.fail(f"no relay logged {pattern!r}:\n" + self.tails())
        return result

    def tails(self) -> str:
        return "\n".join(
            f"--- relay{n}\n{p.tail(30)}" for n, p in sorted(self.relay_processes.items())
        )

    async def start_agent_on_cluster(self, expose: dict[str, str], name: str = "gpu") -> int:
        """An agent through HAProxy's origin; returns the number of the relay that holds it."""
        since = self.marks()
        await self.start_agent(
            expose, name=name, relay_url=self.lb_url, wait_online=False, extra=self.front_args
        )
        return await self.relay_logs(f"agent {re.escape(name)} online", since)

    async def refused(self, client_port: int, reason: str, since: int) -> None:
        """A user's connection through CLIENT_PORT is closed unserved; the client says REASON."""
        peer = await self.connect(client_port, _tcp.Peer(1000, seed=5))
        await self.within(30, "the refused connection to close", peer.lost)
        self.assertEqual(peer.received, 0)
        await self.logs.wait_for(reason, CLIENT, since=since)

    def other_than(self, *relays: int) -> int:
        return next(n for n in range(1, RELAYS + 1) if n not in relays)

    def now(self) -> float:
        return float(reactor.seconds())  # type: ignore[attr-defined]
