"""Run the real HAProxy (Debian's haproxy 2.6) with the shipped deploy/haproxy config.

The shipped file is used as is, except for what a test must change (`make cluster-demo`'s
`adapt_haproxy_config`: each place by a pattern that must match as often as expected, so a
reshaped config fails loudly): the listen address (plain, on loopback), the log target
(stdout, so the test reads it), ``maxconn`` (the test machine's file limit) and each
relay's address. HAProxy runs in the
foreground (``-db``) as one child process the test owns; it is ready once every server's
first health check has passed (``option log-health-checks`` logs it).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from twisted.trial.unittest import TestCase

from nbbridge.demo_cluster import adapt_haproxy_config
from tests._tools import skip_unavailable
from tests.tunnel._process import ChildProcess, spawn

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "haproxy" / "nbbridge-cluster.cfg"
#: How many relays the shipped file names (one `server` line in `relays`, one backend each).
SHIPPED_RELAYS = 3


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


async def start_haproxy(
    test: TestCase, listen_port: int, relay_ports: Sequence[int], workdir: str
) -> ChildProcess:
    """HAProxy with the shipped config; returns once every relay passed a health check."""
    binary = haproxy_binary()
    if binary is None:
        skip_unavailable("haproxy is not installed (apt-get install haproxy)")
        raise AssertionError("unreachable")
    config = Path(workdir) / "haproxy.cfg"
    config.write_text(
        adapt_haproxy_config(SHIPPED.read_text(), listen_port=listen_port, relay_ports=relay_ports)
    )
    process = spawn(test, "haproxy", [binary, "-db", "-f", str(config)], {}, cwd=workdir)
    for n in range(1, len(relay_ports) + 1):
        for backend in ("relays", f"relay{n}"):
            await process.wait_for(rf"Health check for server {backend}/relay{n} succeeded")
    return process
