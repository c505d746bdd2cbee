"""Scale-out benchmark: three relays sharing Redis behind HAProxy, beside one relay alone.

    .venv/bin/python bench/cluster.py [--links 60] [--mib 512] [--runs 5]
        [--global 'nbthread 1'] [--defaults LINE] [--drop 'option splice-auto']

(``PYTHONPATH=src`` in a checkout without an install; needs ``redis-server`` and ``haproxy``.)
Starts, on 127.0.0.1 in a temporary directory, every piece as a real process: the target
(``_target.py``), ``redis-server``, three ``nbbridge-relay --store redis://...`` behind
``haproxy`` with the shipped deploy/haproxy config, and, beside them, one relay alone
(``--store memory``, no HAProxy: the single-relay baseline) and another lone relay behind a
second HAProxy with the same config (*one relay via HAProxy*: the baseline that separates the
load balancer's cost from the cluster's); an agent on each (through its HAProxy where there is
one), all exposing the target. ``--global``/``--defaults`` add lines to the HAProxy config's
sections and ``--drop`` removes one, to measure a tuning. ``--links 0`` skips (b). Then,
interleaved so a noisy machine hurts all alike:

* **(b) link set-up**: the time for this process to bring a link up (``AgentLink.session()``:
  WebSocket through HAProxy, the relay's dial, the agent's data connection, the Noise
  handshake) to the agent through the relay that holds it (*same relay*) and through
  another one (*cross relay*: registry lookup and a dial over Redis pub/sub), and through
  the lone relay. Target: cross ≤ same + 5 ms.
* **(c) throughput** of one link (``--mib`` MiB into the sink through an ``nbbridge-client``
  forward): through the lone relay, the lone relay via HAProxy, the cluster on the holder's
  relay, and the cluster across relays. Target: equal within noise.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _load import stream
from _procs import Child, child_env, free_port
from nbbridge.demo import write_secret, write_tunnel_files
from nbbridge.demo_cluster import adapt_haproxy_config

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
HAPROXY_CONFIG = REPO / "deploy" / "haproxy" / "nbbridge-cluster.cfg"
RELAYS = 3
SERVICE = "bench"


class Setup:
    """Every process of the benchmark, started in WORK; `stop` ends them all."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = child_env()
        self.children: list[Child] = []
        self.twistd = [str(BIN / "twistd"), "--nodaemon", "--pidfile="]

    def child(self, name: str, args: list[str]) -> Child:
        c = Child(name, args, self.work, self.env)
        self.children.append(c)
        return c

    def relay(self, name: str, extra: list[str]) -> int:
        relay = self.child(
            name,
            [
                *self.twistd,
                "nbbridge-relay",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--config",
                "relay.toml",
                *extra,
            ],
        )
        line = relay.wait_for("listening on")
        found = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
        assert found is not None, line
        return int(found.group(1))

    def agent(self, name: str, relay_url: str, target_port: int) -> None:
        self.child(
            name,
            [
                *self.twistd,
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
                f"{SERVICE}=tcp:127.0.0.1:{target_port}",
            ],
        ).wait_for("online at")

    def client(self, name: str, relay_url: str, agent_pub: str) -> int:
        port = free_port()
        self.child(
            name,
            [
                *self.twistd,
                "nbbridge-client",
                "--relay",
                relay_url,
                "--agent",
                "bench",
                "--agent-key",
                agent_pub,
                "--token-file",
                "client.token",
                "--key",
                "client.key",
                "--forward",
                f"{SERVICE}={port}",
                "--status",
                "tcp:0:interface=127.0.0.1",
            ],
        ).wait_for(f"{SERVICE} →")
        return port

    def stop(self) -> None:
        for c in reversed(self.children):
            c.stop()


def agents_online(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as response:
        return int(json.load(response)["agents_online"])


def measure_setup(
    urls: dict[str, str], work: Path, agent_pub: str, links: int
) -> dict[str, list[float]]:
    """LINKS link set-ups per URL, interleaved in a shuffled order each round; seconds."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    from nbbridge.crypto import load_private_key, parse_public_key
    from nbbridge.transport import parse_relay_url
    from nbbridge.tunnel import AgentLink

    key = load_private_key(work / "client.key")
    token = (work / "client.token").read_text().strip()
    agent_key = parse_public_key(agent_pub)
    times: dict[str, list[float]] = {name: [] for name in urls}

    async def one(url: str) -> float:
        link = AgentLink(reactor, parse_relay_url(url), "bench", agent_key, key, token)
        link.startService()
        start = time.perf_counter()
        await link.session()
        took = time.perf_counter() - start
        await link.stopService()
        return took

    async def run(_: Any) -> None:
        names = list(urls)
        for name in names:  # warm-up: imports, first connections, HAProxy's pools
            await one(urls[name])
        for _ in range(links):
            random.shuffle(names)
            for name in names:
                times[name].append(await one(urls[name]))

    def main(_reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(run(None))

    try:
        react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return times


def tuned(config: str, args: argparse.Namespace) -> str:
    """The shipped HAProxy CONFIG with --drop lines removed and --global/--defaults added."""
    lines = config.splitlines()
    for drop in args.drop:
        kept = [line for line in lines if line.strip() != drop.strip()]
        if len(kept) == len(lines):
            raise SystemExit(f"--drop {drop!r}: no such line in {HAPROXY_CONFIG}")
        lines = kept
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line == "global":
            out.extend(f"    {extra}" for extra in args.global_lines)
        elif line == "defaults":
            out.extend(f"    {extra}" for extra in args.defaults_lines)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=60, help="set-ups per kind (b)")
    parser.add_argument("--mib", type=int, default=512, help="MiB per throughput run (c)")
    parser.add_argument("--runs", type=int, default=5, help="throughput runs per kind (c)")
    parser.add_argument(
        "--global",
        dest="global_lines",
        action="append",
        default=[],
        metavar="LINE",
        help="add LINE to the HAProxy config's global section (to measure a tuning)",
    )
    parser.add_argument(
        "--defaults",
        dest="defaults_lines",
        action="append",
        default=[],
        metavar="LINE",
        help="add LINE to the HAProxy config's defaults section",
    )
    parser.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="LINE",
        help="remove the line LINE (stripped) from the HAProxy config, e.g. 'option splice-auto'",
    )
    args = parser.parse_args(argv)
    redis_server = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if redis_server is None or haproxy is None:
        raise SystemExit("needs redis-server and haproxy: apt-get install redis-server haproxy")

    work = Path(tempfile.mkdtemp(prefix="nbbridge-bench-cluster-"))
    setup = Setup(work)
    try:
        agent_pub = write_tunnel_files(work, agent="bench", client="bench").public_key.to_text()
        target_port = free_port()
        setup.child(
            "target",
            [sys.executable, str(Path(__file__).with_name("_target.py")), str(target_port)],
        ).wait_listening(target_port)
        password = secrets.token_urlsafe(24)
        write_secret(work / "redis.password", password)
        redis_port, lb_port = free_port(), free_port()
        (work / "redis.conf").write_text(
            f'bind 127.0.0.1\nport {redis_port}\nrequirepass "{password}"\nsave ""\n'
            f'appendonly no\ndir {work}\nlogfile ""\n'
        )
        setup.child("redis", [redis_server, str(work / "redis.conf")]).wait_for("Ready to accept")
        lb = f"ws://127.0.0.1:{lb_port}"
        ports = [
            setup.relay(
                f"relay{n}",
                [
                    "--store",
                    f"redis://127.0.0.1:{redis_port}/0",
                    "--store-password-file",
                    "redis.password",
                    "--advertise-url",
                    f"{lb}/r{n}",
                ],
            )
            for n in range(1, RELAYS + 1)
        ]
        shipped = tuned(HAPROXY_CONFIG.read_text(), args)
        (work / "haproxy.cfg").write_text(
            adapt_haproxy_config(shipped, listen_port=lb_port, relay_ports=ports)
        )
        balancer = setup.child("haproxy", [haproxy, "-db", "-f", str(work / "haproxy.cfg")])
        for n in range(1, RELAYS + 1):
            balancer.wait_for(f"Health check for server relays/relay{n} succeeded")
        alone = setup.relay("relay-alone", [])
        # The baseline that separates the load balancer's cost from the cluster's: another
        # lone relay (memory store) behind a second HAProxy with the same config (every server
        # line naming it), its agent AND its clients through that HAProxy, as in the cluster
        # (both of a link's WebSockets cross the proxy).
        alone_lb = setup.relay("relay-alone-lb", [])
        lone_lb_port = free_port()
        (work / "haproxy-alone.cfg").write_text(
            adapt_haproxy_config(shipped, listen_port=lone_lb_port, relay_ports=[alone_lb] * RELAYS)
        )
        lone_balancer = setup.child(
            "haproxy-alone", [haproxy, "-db", "-f", str(work / "haproxy-alone.cfg")]
        )
        lone_balancer.wait_for("Health check for server relays/relay1 succeeded")
        setup.agent("agent", lb, target_port)
        setup.agent("agent-alone", f"ws://127.0.0.1:{alone}", target_port)
        setup.agent("agent-alone-lb", f"ws://127.0.0.1:{lone_lb_port}", target_port)
        holder = next(n for n, p in enumerate(ports, 1) if agents_online(p))
        other = next(n for n in range(1, RELAYS + 1) if n != holder)
        urls = {
            "one relay": f"ws://127.0.0.1:{alone}",
            "one relay via HAProxy": f"ws://127.0.0.1:{lone_lb_port}",
            "cluster, same relay": f"{lb}/r{holder}",
            "cluster, cross relay": f"{lb}/r{other}",
        }
        print(f"agent held by relay{holder}; cross-relay links wait at relay{other}", flush=True)

        print(f"(b) link set-up, {args.links} per kind, interleaved …", flush=True)
        setup_times = (
            measure_setup(urls, work, agent_pub, args.links)
            if args.links
            else {name: [0.0] for name in urls}
        )

        forwards = {
            name: setup.client(f"client-{i}", url, agent_pub)
            for i, (name, url) in enumerate(urls.items())
        }
        nbytes = args.mib * 1024 * 1024
        rates: dict[str, list[float]] = {name: [] for name in urls}
        print(f"(c) one link, {args.mib} MiB x {args.runs} per kind, interleaved …", flush=True)
        for port in forwards.values():  # warm-up
            stream(port, 16 * 1024 * 1024, 120)
        for _ in range(args.runs):
            names = list(forwards)
            random.shuffle(names)
            for name in names:
                rates[name].append(nbytes / stream(forwards[name], nbytes, 300) / 1e6)

        print()
        print(f"HAProxy config: {HAPROXY_CONFIG.name} {' '.join(sys.argv[1:])}")
        print(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        print(
            "| kind | set-up p50 ms | p90 ms | Δ p50 vs same relay "
            "| throughput MB/s (min / median / max) |"
        )
        print("| --- | ---: | ---: | ---: | --- |")
        same = statistics.median(setup_times["cluster, same relay"]) * 1000
        for name in urls:
            t = sorted(setup_times[name])
            p50, p90 = statistics.median(t) * 1000, t[int(0.9 * (len(t) - 1))] * 1000
            r = rates[name]
            print(
                f"| {name} | {p50:.1f} | {p90:.1f} | {p50 - same:+.1f} | "
                f"{min(r):.0f} / {statistics.median(r):.0f} / {max(r):.0f} |"
            )
        return 0
    finally:
        setup.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
