"""Start, watch and stop local ``jupyter server`` processes, each in a directory of its own.

Each instance runs in a new process session (so a stop signals the server and anything it
started in its group), on 127.0.0.1 and a free port, with ``JUPYTER_TOKEN`` in its
environment, ``root_dir`` holding the one uploaded file, and private ``JUPYTER_*`` and
``IPYTHONDIR`` directories, all under the instance's directory, which is removed once the
process has been reaped. The kernels the server starts get sessions of their own
(jupyter_client does so); the server shuts them down when it is asked to stop, and ipykernel
ends a kernel whose parent died.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, TimeoutError
from twisted.internet.error import ConnectionRefusedError, ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

#: Starts ARGV[1:] in a new session, so the whole process group can be signalled at once.
_SETSID_EXEC = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"
#: Each instance's own server config: the extension that keeps the token out of pages.
_SERVER_CONFIG = {
    "ServerApp": {"jpserver_extensions": {"nbbridge.instances.jupyter_extension": True}}
}
#: Where the nbbridge package in use lives.
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: What the extension logs once loaded (jupyter_extension.py).
EXTENSION_MARK = b"nbbridge: the token is kept out of served pages"
#: Seconds a server may take to answer /api/status after it was started.
DEFAULT_START_TIMEOUT = 90.0
#: Seconds a server may take to exit after SIGTERM before its group gets SIGKILL.
DEFAULT_STOP_GRACE = 15.0


#: What jupyter-server logs when the port it was given is taken, and how often to try another.
_PORT_IN_USE = "is already in use"
_PORT_ATTEMPTS = 3


class _PortTaken(Exception):
    """The server could not bind its port (someone took it after we picked it)."""


class InstanceStartError(Exception):
    """An instance could not be started; the message says why (with the server's last words)."""


def free_port() -> int:
    """A loopback port nobody listens on now (jupyter-server cannot report the one it got)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ServerProcess(ProcessProtocol):
    """A jupyter-server child: keeps its last lines of output, fires ``ended`` when reaped."""

    _log = Logger()

    def __init__(self, instance_id: str, port: int) -> None:
        self.instance_id = instance_id
        self.tail: deque[str] = deque(maxlen=30)
        self.ended: Deferred[None] = Deferred()
        #: fires when the server logs its URL: it is listening (or with None at its exit)
        self.listening: Deferred[bool] = Deferred()
        self._url = f"127.0.0.1:{port}/".encode()
        #: whether the extension keeping the token out of pages said it loaded
        self.token_hidden = False
        self.reason: Failure | None = None
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        self._partial = self._partial[-4096:]
        for raw in lines:
            self.tail.append(raw.decode("utf-8", "replace")[:500])
            if EXTENSION_MARK in raw:
                self.token_hidden = True
            if not self.listening.called and self._url in raw:
                self.listening.callback(True)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.reason = reason
        if not self.listening.called:
            self.listening.callback(False)
        self.ended.callback(None)

    @property
    def running(self) -> bool:
        return self.reason is None

    def signal_group(self, name: str) -> None:
        pid = self.transport.pid if self.transport is not None else None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, getattr(signal, name))


@attrs.define(eq=False)
class RunningJupyter:
    """One running instance: where it listens, its token, its directory."""

    id: str
    port: int
    token: str
    directory: str
    filename: str
    _process: _ServerProcess

    @property
    def root(self) -> str:
        """The server's root directory, holding the uploaded file."""
        return os.path.join(self.directory, "files")

    @property
    def pid(self) -> int | None:
        transport = self._process.transport
        return transport.pid if transport is not None else None

    @property
    def running(self) -> bool:
        return self._process.running

    def when_ended(self) -> Deferred[None]:
        """Fires once the server process has exited and been reaped."""
        d: Deferred[None] = Deferred()
        if not self._process.running:
            d.callback(None)
        else:
            self._process.ended.addBoth(lambda _: d.callback(None))
        return d


class JupyterProcesses:
    """Starts jupyter-server instances under one base directory and stops them all at the end.

    :param command: the server's argv start (default: this Python's ``-m jupyter_server``).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        base: str | None = None,
        command: Sequence[str] | None = None,
        *,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        self._reactor = reactor
        self._own_base = base is None
        self.base = base if base is not None else tempfile.mkdtemp(prefix="nbbridge-instances-")
        os.makedirs(self.base, mode=0o700, exist_ok=True)
        self._command = list(command or [sys.executable, "-m", "jupyter_server"])
        self._start_timeout = start_timeout
        self._stop_grace = stop_grace
        self._running: dict[str, RunningJupyter] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._running)

    def get(self, instance_id: str) -> RunningJupyter | None:
        return self._running.get(instance_id)

    def ids(self) -> list[str]:
        return sorted(self._running)

    def spool(self) -> str:
        """A directory for uploads on their way in (same file system, so a move is a rename)."""
        path = os.path.join(self.base, "spool")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    async def start(self, instance_id: str, filename: str, upload: str) -> RunningJupyter:
        """Start an instance whose root holds the file UPLOAD (moved in) as FILENAME.

        Answers once the server answers ``/api/status`` with its token; a server that exits
        or stays silent first is an `InstanceStartError`, and leaves nothing behind.
        """
        if self._closed:
            raise InstanceStartError("stopping: no new instances")
        if os.sep in filename or filename in ("", ".", ".."):
            raise ValueError("a plain file name is needed")
        # A free port is picked, then bound by the server: another process may take it in
        # between (a busy machine), and the server then exits at once: try another port.
        for attempt in range(_PORT_ATTEMPTS):
            instance = self._launch(instance_id, filename, upload)
            try:
                await self._wait_ready(instance, instance._process)
            except _PortTaken:
                # Still inside the server's exit, before its directory is removed.
                os.replace(os.path.join(instance.root, filename), upload)
                await self.stop(instance_id)
                if attempt + 1 == _PORT_ATTEMPTS:
                    raise InstanceStartError("no free port for jupyter-server") from None
                continue
            except BaseException:
                await self.stop(instance_id)
                raise
            break
        self._log.info(
            "instance {id} up on 127.0.0.1:{port} (pid {pid})",
            id=instance_id,
            port=instance.port,
            pid=instance.pid,
        )
        return instance

    def _launch(self, instance_id: str, filename: str, upload: str) -> RunningJupyter:
        """The instance's directory (the upload moved in) and its server, started."""
        directory = tempfile.mkdtemp(prefix="i-", dir=self.base)
        try:
            root = os.path.join(directory, "files")
            for name in ("files", "config", "data", "runtime", "ipython"):
                os.mkdir(os.path.join(directory, name), 0o700)
            with open(os.path.join(directory, "config", "jupyter_server_config.json"), "w") as f:
                json.dump(_SERVER_CONFIG, f)
            os.replace(upload, os.path.join(root, filename))
            token = secrets.token_urlsafe(32)
            port = free_port()
            process = self._spawn(instance_id, directory, port, token)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        instance = RunningJupyter(instance_id, port, token, directory, filename, process)
        self._running[instance_id] = instance
        process.ended.addCallback(lambda _: self._ended(instance))
        return instance

    def _spawn(self, instance_id: str, directory: str, port: int, token: str) -> _ServerProcess:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NBBRIDGE_", "JUPYTER_", "JPY_")) and k != "IPYTHONDIR"
        }
        env.update(
            {
                "JUPYTER_TOKEN": token,
                "JUPYTER_CONFIG_DIR": os.path.join(directory, "config"),
                "JUPYTER_DATA_DIR": os.path.join(directory, "data"),
                "JUPYTER_RUNTIME_DIR": os.path.join(directory, "runtime"),
                "IPYTHONDIR": os.path.join(directory, "ipython"),
                "JUPYTER_PLATFORM_DIRS": "1",
                "HOME": directory,
                # The extension is imported from the nbbridge this process runs.
                "PYTHONPATH": os.pathsep.join(
                    p for p in (_SOURCE_ROOT, env.get("PYTHONPATH")) if p
                ),
            }
        )
        argv = [
            sys.executable,
            "-c",
            _SETSID_EXEC,
            *self._command,
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={os.path.join(directory, 'files')}",
            "--ServerApp.shutdown_no_activity_timeout=0",
        ]
        if os.geteuid() == 0:
            argv.append("--ServerApp.allow_root=True")
        process = _ServerProcess(instance_id, port)
        self._reactor.spawnProcess(
            process,
            argv[0],
            argv,
            env=env,
            # Kernels started without a path run here: beside the uploaded file.
            path=os.path.join(directory, "files"),
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        return process

    async def _wait_ready(self, instance: RunningJupyter, process: _ServerProcess) -> None:
        """Once the server logs its URL, /api/status must answer 200 with the token."""
        listening = process.listening
        listening.addTimeout(self._start_timeout, self._reactor)
        try:
            up = await listening
        except TimeoutError:
            raise InstanceStartError(
                f"jupyter-server did not start within {self._start_timeout:g} s: "
                + " | ".join(process.tail)
            ) from None
        if not up:
            if any(_PORT_IN_USE in line for line in process.tail):
                raise _PortTaken()
            raise InstanceStartError(
                "jupyter-server exited before it answered: " + " | ".join(process.tail)
            )
        if not process.token_hidden:
            # Without it JupyterLab would hand the token to every browser: refuse to serve.
            raise InstanceStartError(
                "jupyter-server did not load nbbridge.instances.jupyter_extension (is nbbridge "
                "importable by its Python?): " + " | ".join(process.tail)
            )
        # The server logs its URL just before it binds (a callback on its event loop), so a
        # refused connection right after the line means "a moment": try again, briefly.
        pool = HTTPConnectionPool(self._reactor, persistent=False)
        agent = Agent(self._reactor, pool=pool)
        url = f"http://127.0.0.1:{instance.port}/api/status".encode()
        headers = Headers({b"Authorization": [f"token {instance.token}".encode()]})
        deadline = self._reactor.seconds() + self._start_timeout
        delay = 0.02
        while True:
            request = agent.request(b"GET", url, headers)
            request.addTimeout(self._start_timeout, self._reactor)
            try:
                response = await request
                await readBody(response)
                break
            except ConnectionRefusedError as e:
                if not process.running or self._reactor.seconds() > deadline:
                    raise InstanceStartError(
                        f"jupyter-server did not answer /api/status: {e}: "
                        + " | ".join(process.tail)
                    ) from None
            except Exception as e:
                raise InstanceStartError(
                    f"jupyter-server did not answer /api/status: {e}"
                ) from None
            wait: Deferred[None] = Deferred()
            self._reactor.callLater(delay, wait.callback, None)
            await wait
            delay = min(delay * 2, 0.5)
        if response.code != 200:
            raise InstanceStartError(f"jupyter-server answered /api/status with {response.code}")

    async def stop(self, instance_id: str) -> None:
        """Stop the instance (SIGTERM, then SIGKILL to its group) and remove its directory."""
        instance = self._running.get(instance_id)
        if instance is None:
            return
        process = instance._process
        if process.running:
            process.signal_group("SIGTERM")
            late = self._reactor.callLater(self._stop_grace, process.signal_group, "SIGKILL")
            await instance.when_ended()
            if late.active():
                late.cancel()
        else:
            await instance.when_ended()
        # Anything left in the server's group (a helper it started) goes too.
        process.signal_group("SIGKILL")

    def _ended(self, instance: RunningJupyter) -> None:
        process = instance._process
        if self._running.get(instance.id) is instance:
            del self._running[instance.id]
        shutil.rmtree(instance.directory, ignore_errors=True)
        if process.reason is not None and not process.reason.check(ProcessDone):
            self._log.info(
                "instance {id} ended: {why}", id=instance.id, why=process.reason.getErrorMessage()
            )
        else:
            self._log.info("instance {id} ended", id=instance.id)

    async def stop_all(self) -> None:
        """Stop every instance; then remove the base directory if this object made it."""
        self._closed = True
        stops = [Deferred.fromCoroutine(self.stop(i)) for i in list(self._running)]
        await DeferredList(stops, consumeErrors=True)
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            shutil.rmtree(os.path.join(self.base, "spool"), ignore_errors=True)
