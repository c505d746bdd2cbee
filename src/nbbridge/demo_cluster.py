"""`make cluster-demo`: three relays sharing a Redis behind HAProxy, on loopback.

Starts ``redis-server`` (password in its config file, persistence off), three
``twistd nbbridge-relay`` sharing it (``--store redis://...``, each with its own
``--advertise-url`` on HAProxy's origin), ``haproxy`` with the shipped
deploy/haproxy/nbbridge-cluster.cfg (adapted to loopback by `adapt_haproxy_config`), a real
JupyterLab, an agent exposing it and a client forwarding a local port to it — agent and
client both through HAProxy, so the client's link usually lands on another relay than the
agent's control connection and crosses over Redis. Every one a real process, in a temporary
directory; prints the URL; Ctrl-C (or SIGTERM) stops everything. ``--check`` stops after the
check (the tests use it). The pieces are `nbbridge.demo`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from nbbridge.demo import (
    BIN,
    JUPYTER_LAB,
    OPEN_PROMPT,
    Process,
    _stop_on_sigterm,
    check_through_tunnel,
    free_port,
    jupyter_env,
    start_tunnel_ends,
    write_secret,
    write_tunnel_files,
)

RELAYS = 3
#: The shipped HAProxy configuration, from the source tree (`make cluster-demo` runs there).
HAPROXY_CONFIG = Path("deploy/haproxy/nbbridge-cluster.cfg")


def adapt_haproxy_config(text: str, *, listen_port: int, relay_ports: Sequence[int]) -> str:
    """The shipped HAProxy config for loopback: HAProxy on LISTEN_PORT (plain ws://), logging
    to stdout, relay N on 127.0.0.1:RELAY_PORTS[N-1]. Each place changed must match as often
    as expected, so a reshaped config fails loudly rather than half-adapted."""
    replacements: list[tuple[str, str, int]] = [
        (r"bind :443 ssl crt \S+", f"bind 127.0.0.1:{listen_port}", 1),
        (r"log /dev/log local0", "log stdout format raw local0", 1),
        # A desktop's or CI's file limit, not a server's.
        (r"maxconn \d+", "maxconn 2000", 1),
    ]
    for n, port in enumerate(relay_ports, 1):
        # In `relays` and in the relay's own backend.
        replacements.append((rf"10\.0\.0\.{n}:8765", f"127.0.0.1:{port}", 2))
    for pattern, replacement, expected in replacements:
        text, count = re.subn(pattern, replacement, text)
        if count != expected:
            raise ValueError(
                f"HAProxy config: expected {expected} match(es) of {pattern!r}, got {count}"
            )
    return text


def _tools() -> tuple[str, str]:
    """redis-server and haproxy (Debian puts haproxy in /usr/sbin, often not on PATH)."""
    found = [
        shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        for name in ("redis-server", "haproxy")
    ]
    if found[0] is None or found[1] is None:
        raise SystemExit(
            "redis-server and haproxy are needed: apt-get install redis-server haproxy"
        )
    return found[0], found[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Three relays, Redis and HAProxy on loopback.")
    parser.add_argument("--check", action="store_true", help="stop once the check passed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--haproxy-config", type=Path, default=HAPROXY_CONFIG)
    args = parser.parse_args(argv)
    if not JUPYTER_LAB.exists():
        raise SystemExit(
            f"JupyterLab is not installed next to {sys.executable}: "
            "pip install '.[demo]' (make cluster-demo does)"
        )
    if not args.haproxy_config.exists():
        raise SystemExit(f"{args.haproxy_config}: not found (run from the source tree)")
    redis_server, haproxy = _tools()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    work = Path(tempfile.mkdtemp(prefix="nbbridge-cluster-demo-"))
    (work / "notebooks").mkdir()
    env = dict(os.environ)
    for name in ("NBBRIDGE_TOKEN", "NBBRIDGE_REDIS_PASSWORD"):
        env.pop(name, None)
    agent_key = write_tunnel_files(work, agent="gpu", client="laptop")
    jupyter_token = secrets.token_hex(24)
    redis_password = secrets.token_urlsafe(24)
    write_secret(work / "redis.password", redis_password)
    redis_port, lb_port, jupyter_port, forward_port = (free_port() for _ in range(4))
    (work / "redis.conf").write_text(
        f'bind 127.0.0.1\nport {redis_port}\nrequirepass "{redis_password}"\nsave ""\n'
        f'appendonly no\ndir {work}\nlogfile ""\nprotected-mode yes\n'
    )
    (work / "redis.conf").chmod(0o600)
    lb_url = f"ws://127.0.0.1:{lb_port}"
    twistd = [str(BIN / "twistd"), "--nodaemon", "--pidfile="]

    processes: list[Process] = []
    try:
        processes.append(
            Process(
                "jupyter",
                [
                    str(JUPYTER_LAB),
                    "--ServerApp.ip=127.0.0.1",
                    f"--ServerApp.port={jupyter_port}",
                    "--ServerApp.port_retries=0",
                    "--ServerApp.open_browser=False",
                    f"--ServerApp.root_dir={work / 'notebooks'}",
                    *(["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []),
                ],
                work,
                jupyter_env(env, work, jupyter_token),
            )
        )
        processes.append(Process("redis", [redis_server, str(work / "redis.conf")], work, env))
        processes[-1].wait_for("Ready to accept connections")
        relay_ports = []
        for n in range(1, RELAYS + 1):
            relay = Process(
                f"relay{n}",
                [
                    *twistd,
                    "nbbridge-relay",
                    "--listen",
                    "tcp:0:interface=127.0.0.1",
                    "--config",
                    str(work / "relay.toml"),
                    "--store",
                    f"redis://127.0.0.1:{redis_port}/0",
                    "--store-password-file",
                    str(work / "redis.password"),
                    "--advertise-url",
                    f"{lb_url}/r{n}",
                ],
                work,
                env,
            )
            processes.append(relay)
            line = relay.wait_for("listening on")
            found = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
            assert found is not None, line
            relay_ports.append(int(found.group(1)))
            relay.wait_for("bus: listening")
        config = work / "haproxy.cfg"
        config.write_text(
            adapt_haproxy_config(
                args.haproxy_config.read_text(), listen_port=lb_port, relay_ports=relay_ports
            )
        )
        balancer = Process("haproxy", [haproxy, "-db", "-f", str(config)], work, env)
        processes.append(balancer)
        for n in range(1, RELAYS + 1):
            balancer.wait_for(f"Health check for server relays/relay{n} succeeded")
        start_tunnel_ends(
            processes,
            twistd,
            lb_url,
            agent_key_text=agent_key.public_key.to_text(),
            jupyter_port=jupyter_port,
            forward_port=forward_port,
            work=work,
            env=env,
            client_args=["--status", "tcp:0:interface=127.0.0.1"],
        )
        processes[0].wait_for("Jupyter Server", timeout=90)
        processes[0].wait_for("http://127.0.0.1", timeout=90)

        base = f"http://127.0.0.1:{forward_port}"
        status = check_through_tunnel(base, jupyter_token)
        print(f"nbbridge cluster demo: Jupyter answered through the cluster: {status}")
        for n, port in enumerate(relay_ports, 1):
            figures = _relay_status(port)
            print(
                f"  relay{n} (pid {processes[1 + n].popen.pid}): http://127.0.0.1:{port}/status "
                f"agents_online={figures.get('agents_online')} links={figures.get('links')}"
            )
        print(f"  HAProxy: {lb_url} (agent and client use it); Redis: 127.0.0.1:{redis_port}")
        print(f"  work directory: {work} (logs: relay1.log … haproxy.log redis.log agent.log)")
        print("  try: kill -9 the pid of the relay with agents_online=1: the agent is back on")
        print("  another relay within seconds, and the URL below keeps working.")
        print(f"  {OPEN_PROMPT} {base}/lab?token={jupyter_token}", flush=True)
        if args.check:
            return 0
        print("Ctrl-C stops everything.", flush=True)
        signal.pause()
        return 0
    except KeyboardInterrupt:
        print("\nstopping…")
        return 0
    finally:
        for p in reversed(processes):
            p.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _relay_status(port: int) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as response:
            result: dict[str, object] = json.load(response)
            return result
    except OSError:
        return {}


if __name__ == "__main__":
    sys.exit(main())
