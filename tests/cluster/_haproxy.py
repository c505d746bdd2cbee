"""Run the real HAProxy (Debian's haproxy 2.6) with the shipped deploy/haproxy config.

The shipped file is used as is, except for what a test must change, each replaced by a
pattern that must match as often as expected (a reshaped config fails here, loudly): the
listen address (plain, on loopback), the log target (stdout, so the test reads it),
``maxconn`` (the test machine's file limit) and each relay's address. HAProxy runs in the
foreground (``-db``) as one child process the test owns; it is ready once every server's
first health check has passed (``option log-health-checks`` logs it).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests._tools import skip_unavailable
from tests.tunnel._process import ChildProcess, spawn

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "haproxy" / "nbbridge-cluster.cfg"
#: How many relays the shipped file names (one `server` line in `relays`, one backend each).
SHIPPED_RELAYS = 3


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def adapt_config(text: str, *, listen_port: int, relay_ports: Sequence[int]) -> str:
    """The shipped config for loopback: HAProxy on LISTEN_PORT, relay N on RELAY_PORTS[N-1]."""
    if len(relay_ports) != SHIPPED_RELAYS:
        raise ValueError(f"the shipped config has {SHIPPED_RELAYS} relays")
    replacements: list[tuple[str, str, int]] = [
        (r"bind :443 ssl crt \S+", f"bind 127.0.0.1:{listen_port}", 1),
        (r"log /dev/log local0", "log stdout format raw local0", 1),
        (r"maxconn \d+", "maxconn 2000", 1),
    ]
    for n, port in enumerate(relay_ports, 1):
        # In `relays` and in the relay's own backend.
        replacements.append((rf"10\.0\.0\.{n}:8765", f"127.0.0.1:{port}", 2))
    for pattern, replacement, expected in replacements:
        text, count = re.subn(pattern, replacement, text)
        if count != expected:
            raise AssertionError(
                f"{SHIPPED}: expected {expected} match(es) of {pattern!r}, got {count}"
            )
    return text


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
        adapt_config(SHIPPED.read_text(), listen_port=listen_port, relay_ports=relay_ports)
    )
    process = spawn(test, "haproxy", [binary, "-db", "-f", str(config)], {}, cwd=workdir)
    for n in range(1, len(relay_ports) + 1):
        for backend in ("relays", f"relay{n}"):
            await process.wait_for(rf"Health check for server {backend}/relay{n} succeeded")
    return process
