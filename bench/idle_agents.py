"""Idle agents: how many agents' control connections one relay process holds, and at what cost.

    .venv/bin/python bench/idle_agents.py [--agents 10000] [--entries N] [--window 60]
                                          [--concurrency 400] [--src PATH]

(with ``PYTHONPATH=src`` in a checkout without an editable install). Writes a relay.toml with
``--entries`` ``[agents.*]`` entries (default: as many as ``--agents``; ``max_agents`` lifted),
starts ``twistd -n nbbridge-relay`` on 127.0.0.1, then, from this one process, opens
``--agents`` control connections as a light agent would: raw WebSockets (asyncio, no
Autobahn) that send the upgrade with the agent's bearer token, wait for the relay's
``registered`` message and from then on only answer the relay's pings. Prints:

* **registration**: seconds from the first connect until every agent is registered
  (``--concurrency`` handshakes in flight at once, below the relay's ``handshakes_total``),
  and the rate;
* **memory**: the relay's RSS and open fds with no agent (the baseline, same run) and with
  all of them, and the difference per agent; target: 10 000 agents in under 1 GiB;
* **heartbeat CPU**: the relay's CPU time over ``--window`` seconds while the agents idle
  (the relay pings each every ``ping_interval``, 25 s by default) as a share of one core;
  the baseline is the same relay idle with no agent, over ``--baseline-window`` seconds before
  they connect; target: under 10 % of a core. Agents the relay dropped during the window are
  counted (expected: none).

``--src PATH`` runs the relay from another checkout's ``src`` (e.g. ``git archive main src``
unpacked somewhere) to compare registration times before and after a change; the generator
is the same. The soft fd limit is raised to the hard limit first (the relay inherits it).
Every phase is bounded in time; the relay is stopped at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import struct
import sys
import tempfile
import time
from pathlib import Path

from _procs import Child, child_env, cpu_seconds, fd_count, free_port, raise_fd_limit, rss_kib
from nbbridge._secrets import hash_token
from nbbridge.contract import control_path

BIN = Path(sys.executable).parent


class Agent:
    """One idle agent's control connection: register, then answer pings, nothing else."""

    def __init__(self, index: int, token: str) -> None:
        self.name = f"idle-{index}"
        self.token = token
        self.registered = asyncio.get_running_loop().create_future()
        self.closed = False
        self.pings = 0
        #: connections that failed before registering (tried again, as an agent would)
        self.retries = 0
        self._writer: asyncio.StreamWriter | None = None

    async def run(self, port: int, attempts: int = 5) -> None:
        """Register (trying again after a failed attempt, as an agent would), then idle."""
        for attempt in range(attempts):
            error = await self._connection(port)
            if self.registered.done() or attempt == attempts - 1:
                break
            self.retries += 1
            await asyncio.sleep(0.5 + attempt)
        self.closed = True
        if not self.registered.done():
            self.registered.set_exception(ConnectionError(f"{self.name}: {error}"))

    async def _connection(self, port: int) -> str:
        """One connection; what ended it."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            self._writer = writer
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET {control_path(self.name)} HTTP/1.1\r\n"
                    f"Host: 127.0.0.1:{port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                    f"Authorization: Bearer {self.token}\r\n\r\n"
                ).encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            while True:
                opcode, payload = await _read_frame(reader)
                if opcode == 0x1 and not self.registered.done():
                    if b"registered" not in payload:
                        raise ConnectionError(f"unexpected first message {payload[:80]!r}")
                    self.registered.set_result(None)
                elif opcode == 0x9:
                    self.pings += 1
                    writer.write(_frame(0xA, payload))
                elif opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    raise ConnectionError(f"closed by the relay: {code} {payload[2:].decode()}")
        except (OSError, asyncio.IncompleteReadError, ConnectionError) as e:
            return str(e)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)  # server frames are unmasked


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (payloads here are control frames: < 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def write_config(path: Path, entries: int, tokens: list[str], agents: int) -> None:
    with open(path, "w") as f:
        f.write(f"[limits]\nmax_agents = {agents + 10}\n\n")
        for i in range(entries):
            f.write(f'[agents.idle-{i}]\ntoken_sha256 = "{hash_token(tokens[i])}"\n\n')


def usage(pid: int) -> tuple[float, float, int]:
    """(RSS MiB, CPU seconds, fds) of PID now."""
    return (rss_kib(pid) or 0) / 1024, cpu_seconds(pid) or 0.0, fd_count(pid) or 0


async def measure(args: argparse.Namespace, relay: Child, port: int, tokens: list[str]) -> None:
    pid = relay.pid
    _, cpu0, fds0 = usage(pid)
    await asyncio.sleep(args.baseline_window)
    rss_b, cpu_b, _ = usage(pid)
    base_cpu = (cpu_b - cpu0) / args.baseline_window
    print(f"relay with no agent: RSS {rss_b:.1f} MiB, {fds0} fds, CPU {base_cpu:.2%} of a core")

    agents = [Agent(i, tokens[i]) for i in range(args.agents)]
    gate = asyncio.Semaphore(args.concurrency)
    tasks: list[asyncio.Task[None]] = []
    done = 0

    async def start(agent: Agent) -> None:
        nonlocal done
        async with gate:
            tasks.append(asyncio.create_task(agent.run(port)))
            try:
                await agent.registered
            finally:
                done += 1
                if done % 1000 == 0:
                    print(f"  {done} agents registered after {time.monotonic() - t0:.1f} s")

    t0 = time.monotonic()
    cpu_start = cpu_seconds(pid) or 0.0
    try:
        await asyncio.wait_for(
            asyncio.gather(*(start(a) for a in agents)), timeout=args.register_timeout
        )
    except TimeoutError:
        registered = sum(1 for a in agents if a.registered.done() and not a.closed)
        print(f"registration: only {registered} of {args.agents} after {args.register_timeout} s")
        raise SystemExit(1) from None
    took = time.monotonic() - t0
    cpu_reg = (cpu_seconds(pid) or 0.0) - cpu_start
    retries = sum(a.retries for a in agents)
    print(
        f"registration: {args.agents} agents ({args.entries} [agents.*] entries) in {took:.1f} s "
        f"= {args.agents / took:.0f}/s; relay CPU {cpu_reg:.1f} s ({cpu_reg / took:.0%} of a "
        f"core); {retries} connections tried again"
    )

    rss1, cpu1, fds1 = usage(pid)
    per_agent = (rss1 - rss_b) * 1024 / args.agents
    print(
        f"memory with {args.agents} agents: RSS {rss1:.1f} MiB ({per_agent:.1f} KiB per agent "
        f"over the baseline), {fds1} fds; target: < 1024 MiB"
    )
    pings0 = sum(a.pings for a in agents)
    await asyncio.sleep(args.window)
    rss2, cpu2, _ = usage(pid)
    heartbeat = (cpu2 - cpu1) / args.window
    pings = sum(a.pings for a in agents) - pings0
    dropped = sum(1 for a in agents if a.closed)
    print(
        f"idle for {args.window:g} s: relay CPU {heartbeat:.2%} of a core (baseline "
        f"{base_cpu:.2%}; target < 10 %), {pings} pings answered, {dropped} agents dropped, "
        f"RSS {rss2:.1f} MiB"
    )
    for agent in agents:
        agent.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--entries", type=int, default=None, help="[agents.*] entries (>= agents)")
    parser.add_argument("--window", type=float, default=60.0, help="idle seconds measured")
    parser.add_argument("--baseline-window", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=400)
    parser.add_argument("--register-timeout", type=float, default=300.0)
    parser.add_argument("--src", help="run the relay from this checkout's src directory")
    parser.add_argument("--profile", help="write the relay's cProfile stats to this file")
    args = parser.parse_args()
    args.entries = max(args.entries or args.agents, args.agents)
    before, now = raise_fd_limit()
    print(f"fd limit {before} -> {now}; {os.cpu_count()} cores; load {os.getloadavg()}")

    work = Path(tempfile.mkdtemp(prefix="nbbridge-idle-"))
    tokens = [secrets.token_urlsafe(24) for _ in range(args.entries)]
    write_config(work / "relay.toml", args.entries, tokens, args.agents)
    env = child_env()
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.src).resolve()), env["PYTHONPATH"]])
    port = free_port()
    relay = Child(
        "relay",
        [
            str(BIN / "twistd"),
            "--nodaemon",
            "--pidfile=",
            *(
                [f"--profile={Path(args.profile).resolve()}", "--profiler=cprofile", "--savestats"]
                if args.profile
                else []
            ),
            "nbbridge-relay",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--config",
            "relay.toml",
        ],
        work,
        env,
    )
    try:
        relay.wait_for("listening on", timeout=120)
        asyncio.run(measure(args, relay, port, tokens))
    finally:
        relay.stop()
        print(f"load at the end {os.getloadavg()}; relay log: {relay.log_path}")


if __name__ == "__main__":
    main()
