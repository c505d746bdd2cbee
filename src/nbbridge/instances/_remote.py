"""Instances on another machine: an agent starts and stops them on request over channels.

A datalab daemon whose launcher is ``agent`` is a tunnel client of the agent (its own key,
authorized like any client). Everything goes through channels to the agent's service
``datalab`` (`SERVICE`), end-to-end encrypted through the relay:

* ``{"op": "control"}``: a control exchange. The opener sends one JSON line — ``{"op":
  "start", "instance": ID, "filename": NAME, "size": N}`` followed by exactly N bytes of the
  file, or ``{"op": "stop", "instance": ID}`` — and gets one JSON line back, ``{"ok": true,
  "token": T}`` (start) / ``{"ok": true}`` or ``{"ok": false, "error": "..."}``.
* ``{"op": "connect", "instance": ID}``: a connection to that instance's Jupyter server
  (every proxied request and kernel WebSocket is one such channel).

On the agent, `InstanceHost` runs the instances (`JupyterProcesses`) and a control server on
a UNIX socket in its own private directory; its `acceptor` maps ``control`` there and
``connect`` to the instance's loopback port, and passes every other service to the agent's
usual acceptor. On the datalab side, `start_remote` and `stop_remote` speak the exchange.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import FileSender, LineReceiver
from twisted.python.failure import Failure

from nbbridge.mux import Acceptor, OpenRequest, ServiceUnavailable, UnknownService

from ._jupyter import InstanceStartError, JupyterProcesses

#: The agent's channel service for datalab instances.
SERVICE = "datalab"
#: Instances one agent runs at once for its datalab clients.
MAX_REMOTE_INSTANCES = 32
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_LINE = 4096


class RemoteError(Exception):
    """The agent refused or failed a control request; the message is the agent's."""


def _plain_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not name
        or name.startswith(".")
        or ".." in name
        or any(c in name for c in "/\\\0")
        or len(name.encode()) > 255
    ):
        raise ValueError("not a plain file name")
    return name


def _instance_id(value: object) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError("not an instance id")
    return value


# -- the agent's side --------------------------------------------------------------------------


class _ControlServer(LineReceiver):
    """One control exchange: a request line (and a file), then one answer line."""

    MAX_LENGTH = _MAX_LINE
    delimiter = b"\n"
    _log = Logger()

    def __init__(self, host: InstanceHost) -> None:
        self._host = host
        self._file: IO[bytes] | None = None
        self._path = ""
        self._left = 0
        self._start: tuple[str, str] | None = None
        self._answered = False

    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
            op = request.get("op")
            instance = _instance_id(request.get("instance"))
            if op == "stop":
                self._run(self._stop(instance))
            elif op == "start":
                filename = _plain_name(request.get("filename"))
                size = request.get("size")
                if not isinstance(size, int) or size < 0:
                    raise ValueError("size must be a byte count")
                self._begin_upload(instance, filename, size)
            else:
                raise ValueError(f"unknown op {op!r}")
        except ValueError as e:
            self._answer({"ok": False, "error": f"bad request: {e}"})

    def _begin_upload(self, instance: str, filename: str, size: int) -> None:
        if len(self._host.processes) >= self._host.max_instances:
            self._answer({"ok": False, "error": "the agent runs as many instances as it may"})
            return
        fd, self._path = tempfile.mkstemp(dir=self._host.processes.spool(), prefix="in-")
        self._file = os.fdopen(fd, "wb")
        self._left = size
        self._start = (instance, filename)
        self.setRawMode()
        if size == 0:
            self.rawDataReceived(b"")

    def rawDataReceived(self, data: bytes) -> None:
        if self._file is None or self._start is None:
            return
        if len(data) > self._left:
            self._discard()
            self._answer({"ok": False, "error": "more bytes than announced"})
            return
        self._file.write(data)
        self._left -= len(data)
        if self._left == 0:
            self._file.close()
            self._file = None
            instance, filename = self._start
            self._run(self._begin(instance, filename, self._path))

    def _run(self, work: Any) -> None:
        d: Deferred[dict[str, Any]] = Deferred.fromCoroutine(work)
        d.addCallbacks(self._answer, self._failed)

    async def _begin(self, instance: str, filename: str, path: str) -> dict[str, Any]:
        try:
            running = await self._host.processes.start(instance, filename, path)
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return {"ok": True, "token": running.token}

    async def _stop(self, instance: str) -> dict[str, Any]:
        await self._host.processes.stop(instance)
        return {"ok": True}

    def _failed(self, failure: Failure) -> None:
        if failure.check(InstanceStartError, ValueError):
            self._answer({"ok": False, "error": failure.getErrorMessage()[:2000]})
        else:
            self._log.failure("datalab control request failed", failure)
            self._answer({"ok": False, "error": "internal error on the agent"})

    def _answer(self, answer: dict[str, Any]) -> None:
        if self._answered or self.transport is None:
            return
        self._answered = True
        self.transport.write(json.dumps(answer).encode() + b"\n")
        self.transport.loseConnection()

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path and os.path.exists(self._path):
            os.unlink(self._path)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._left:
            self._discard()


class InstanceHost(Service):
    """The agent's side: runs instances for its datalab clients; stops them all at the end."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        processes: JupyterProcesses,
        max_instances: int = MAX_REMOTE_INSTANCES,
    ) -> None:
        self._reactor = reactor
        self.processes = processes
        self.max_instances = max_instances
        self._control_dir = tempfile.mkdtemp(prefix="control-", dir=processes.base)
        self.control_socket = os.path.join(self._control_dir, "control.sock")
        self._port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        factory = Factory.forProtocol(lambda: _ControlServer(self))
        self._listening = UNIXServerEndpoint(self._reactor, self.control_socket, mode=0o600).listen(
            factory
        )
        self._listening.addCallback(self._listen_ok)

    def _listen_ok(self, port: IListeningPort) -> None:
        self._port = port
        self._log.info("datalab launcher ready: instances under {base}", base=self.processes.base)

    def stopService(self) -> Deferred[None]:
        super().stopService()

        async def stop() -> None:
            if self._listening is not None:
                await self._listening
            if self._port is not None:
                stopping = self._port.stopListening()
                if stopping is not None:
                    await stopping
            await self.processes.stop_all()

        return Deferred.fromCoroutine(stop())

    def acceptor(self, fallback: Acceptor) -> Acceptor:
        """An acceptor serving `SERVICE` here and every other service by FALLBACK."""
        return _HostAcceptor(self, fallback)

    def endpoint_for(self, metadata: Mapping[str, str]) -> IStreamClientEndpoint:
        op = metadata.get("op")
        if op == "control":
            return UNIXClientEndpoint(self._reactor, self.control_socket, timeout=10)
        if op == "connect":
            running = self.processes.get(metadata.get("instance", ""))
            if running is None:
                raise ServiceUnavailable("no such datalab instance here")
            return TCP4ClientEndpoint(self._reactor, "127.0.0.1", running.port, timeout=10)
        raise UnknownService(f"unknown datalab operation {op!r}")


class _HostAcceptor:
    def __init__(self, host: InstanceHost, fallback: Acceptor) -> None:
        self._host = host
        self._fallback = fallback
        self.services = sorted({*getattr(fallback, "services", ()), SERVICE})

    def __call__(self, request: OpenRequest) -> IStreamClientEndpoint:
        if request.service == SERVICE:
            return self._host.endpoint_for(request.metadata)
        return self._fallback(request)


# -- the datalab's side ------------------------------------------------------------------------


class _ControlClient(LineReceiver):
    MAX_LENGTH = _MAX_LINE
    delimiter = b"\n"

    def __init__(self, request: dict[str, Any], upload: str | None) -> None:
        self._request = request
        self._upload = upload
        self.answer: Deferred[dict[str, Any]] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(self._request).encode() + b"\n")
        if self._upload is not None:
            f = open(self._upload, "rb")  # noqa: SIM115 - closed when sent
            sending = FileSender().beginFileTransfer(f, self.transport)

            def sent(result: object) -> None:
                f.close()  # a failure shows as the agent's missing answer

            sending.addBoth(sent)

    def lineReceived(self, line: bytes) -> None:
        if not self.answer.called:
            try:
                answer = json.loads(line)
            except ValueError:
                answer = {"ok": False, "error": "unreadable answer from the agent"}
            self.answer.callback(answer if isinstance(answer, dict) else {"ok": False})
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answer.called:
            self.answer.errback(RemoteError(f"the agent closed without answering: {reason.value}"))


async def _exchange(
    endpoint: IStreamClientEndpoint, request: dict[str, Any], upload: str | None = None
) -> dict[str, Any]:
    client = _ControlClient(request, upload)
    await endpoint.connect(Factory.forProtocol(lambda: client))
    answer = await client.answer
    if not answer.get("ok"):
        raise RemoteError(str(answer.get("error", "refused"))[:2000])
    return answer


async def start_remote(
    endpoint: IStreamClientEndpoint, instance: str, filename: str, upload: str
) -> str:
    """Start INSTANCE on the agent (ENDPOINT: a ``control`` channel) with UPLOAD; its token."""
    size = os.path.getsize(upload)
    request = {"op": "start", "instance": instance, "filename": filename, "size": size}
    answer = await _exchange(endpoint, request, upload)
    token = answer.get("token")
    if not isinstance(token, str) or not token:
        raise RemoteError("the agent gave no token")
    return token


async def stop_remote(endpoint: IStreamClientEndpoint, instance: str) -> None:
    """Stop INSTANCE on the agent."""
    await _exchange(endpoint, {"op": "stop", "instance": instance})
