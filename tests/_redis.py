"""A real ``redis-server`` on 127.0.0.1 for tests: started, restarted and stopped by the test.

Each server has its own directory (config, nothing persisted: ``save ""``, ``appendonly no``)
and a free port; an optional ``requirepass`` is written to the config file, never put on a
command line. The server runs in the foreground (``daemonize no``) as a child of the test
process; `start` waits for its "Ready to accept connections" log line, `stop` sends SIGTERM
and waits for it to exit. `restart` brings it back on the same port, empty, as a real Redis
restart without persistence would. Debian's package is ``redis-server`` (.ci/run installs it;
elsewhere a missing server skips the test, see tests/_tools.py).
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests._cleanup import add_async_cleanup
from tests._ports import free_port
from tests._tools import skip_unavailable

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"

_READY = re.compile(rb"Ready to accept connections")
_IN_USE = re.compile(rb"Address already in use|Could not create server TCP listening socket")


class _RedisProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.exited = False

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and _READY.search(self.output):
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"redis-server exited at start:\n{self.text()}"))
        self.ended.callback(None)

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


class RedisServer:
    """One redis-server process for one test; see the module docstring."""

    def __init__(self, directory: str, password: str | None = None) -> None:
        self.directory = directory
        self.password = password
        self.port = 0
        self._process: _RedisProcess | None = None
        self._transport: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and not self._process.exited

    def _write_config(self) -> str:
        path = os.path.join(self.directory, "redis.conf")
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            "daemonize no",
            'save ""',
            "appendonly no",
            f"dir {self.directory}",
            'logfile ""',
        ]
        if self.password is not None:
            quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'requirepass "{quoted}"')
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(path, 0o600)
        return path

    async def start(self) -> None:
        """Start on a free port (or on the same port again, after `stop`)."""
        keep_port = self.port != 0
        for _attempt in range(3):
            if not keep_port:
                self.port = free_port()
            process = _RedisProcess()
            self._process = process
            self._transport = reactor.spawnProcess(  # type: ignore[attr-defined]
                process, REDIS_SERVER, [REDIS_SERVER, self._write_config()], env={}
            )
            try:
                await process.ready
                return
            except RuntimeError:
                if not _IN_USE.search(process.output):
                    raise
                if keep_port:
                    raise
        raise RuntimeError("redis-server: no free port after 3 attempts")

    async def stop(self) -> None:
        """Stop the server (SIGTERM) and wait for it to exit; its data is gone."""
        process = self._process
        if process is None or process.exited:
            return
        self._transport.signalProcess("TERM")
        await process.ended

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        self._transport.signalProcess("STOP")

    async def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would, and wait for it to exit."""
        process = self._process
        if process is None or process.exited:
            return
        self._transport.signalProcess("KILL")
        await process.ended

    async def restart(self) -> None:
        """Stop, then start again on the same port, empty."""
        await self.stop()
        await self.start()

    async def cli(self, *args: str) -> str:
        """Run one command with redis-cli (the password through its environment)."""
        env = {"REDISCLI_AUTH": self.password} if self.password else {}
        from twisted.internet.utils import getProcessOutputAndValue

        out, err, code = await getProcessOutputAndValue(
            REDIS_CLI, ["-h", "127.0.0.1", "-p", str(self.port), *args], env=env
        )
        if code != 0:
            raise RuntimeError(f"redis-cli {args[0]}: {err.decode(errors='replace')}")
        return out.decode().strip()


async def start_redis(testcase: TestCase, password: str | None = None) -> RedisServer:
    """A running redis-server for TESTCASE, stopped (and waited for) at its clean-up."""
    if not os.access(REDIS_SERVER, os.X_OK):
        skip_unavailable(f"{REDIS_SERVER} not found: apt-get install redis-server (.ci/run does)")
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    server = RedisServer(directory, password)
    add_async_cleanup(testcase, server.stop)
    await server.start()
    return server
