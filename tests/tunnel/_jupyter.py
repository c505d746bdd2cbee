"""A real jupyter-server (with ipykernel) for the end-to-end tests, and a kernel WebSocket client.

The server runs as a child process on 127.0.0.1 with a free port, a temporary root directory
and its own config/runtime directories; its token is passed in the environment
(``JUPYTER_TOKEN``), never on the command line.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests._cleanup import add_async_cleanup
from tests._loopback import accepting
from tests._ports import free_port

from ._process import BIN, ChildProcess, child_env, spawn


def missing_jupyter() -> str | None:
    """Why the Jupyter tests cannot run here, or None when they can."""
    try:
        import ipykernel  # noqa: F401
        import jupyter_server  # noqa: F401
    except ImportError as e:
        return f"jupyter-server and ipykernel are needed for this test ({e})"
    if not os.path.exists(os.path.join(BIN, "jupyter-server")):
        return f"no jupyter-server script next to {BIN}/python"
    return None


@attrs.define
class Jupyter:
    """A running jupyter-server: where it listens, its token, its process and root directory."""

    port: int
    token: str
    root: FilePath
    process: ChildProcess

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}


async def start_jupyter(
    test: TestCase,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] = (),
    script: str = "jupyter-server",
) -> Jupyter:
    """SCRIPT (jupyter-server, or jupyter-lab) on 127.0.0.1:<free port>, with ENV added to its
    environment and ARGV to its flags; returns once it accepts; stopped (and reaped) by the
    test's clean-up."""
    base = FilePath(test.mktemp())
    root = base.child("notebooks")
    root.makedirs()
    for name in ("config", "data", "runtime", "ipython"):
        base.child(name).makedirs()
    port, token = free_port(), secrets.token_hex(24)
    environ = child_env(
        {
            "JUPYTER_TOKEN": token,
            "JUPYTER_CONFIG_DIR": base.child("config").path,
            "JUPYTER_DATA_DIR": base.child("data").path,
            "JUPYTER_RUNTIME_DIR": base.child("runtime").path,
            "IPYTHONDIR": base.child("ipython").path,
            "JUPYTER_PLATFORM_DIRS": "1",
            **(env or {}),
        }
    )
    command = [
        os.path.join(BIN, script),
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={root.path}",
        *argv,
    ]
    if os.geteuid() == 0:
        command.append("--ServerApp.allow_root=True")
    process = spawn(test, script, command, environ, cwd=base.path)
    await process.wait_for(rf"http://127\.0\.0\.1:{port}/")
    # It may log its URL a moment before it accepts (seen under load).
    await accepting(port)
    return Jupyter(port, token, root, process)


def execute_request(code: str, session: str) -> dict[str, Any]:
    """A Jupyter messaging protocol (v5) execute_request for the shell channel."""
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "username": "nbbridge-test",
            "session": session,
            "date": datetime.datetime.now(datetime.UTC).isoformat(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }


def _answers(message: dict[str, Any], msg_id: str, channel: str, msg_type: str) -> bool:
    return (
        message.get("channel") == channel
        and message.get("msg_type", message["header"]["msg_type"]) == msg_type
        and message.get("parent_header", {}).get("msg_id") == msg_id
    )


class KernelChannels(WebSocketClientProtocol):
    """``/api/kernels/<id>/channels``: JSON messages in text frames, all of them kept."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.received: list[dict[str, Any]] = []
        self._waiting: list[tuple[str, str, str, Deferred[dict[str, Any]]]] = []

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            return
        message = json.loads(payload)
        self.received.append(message)
        for waiter in list(self._waiting):
            if _answers(message, *waiter[:3]):
                self._waiting.remove(waiter)
                waiter[3].callback(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(AssertionError(f"kernel WebSocket refused: {code} {reason}"))

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)

    def send_json(self, message: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(message).encode(), isBinary=False)

    def reply_to(
        self, request: dict[str, Any], channel: str, msg_type: str
    ) -> Deferred[dict[str, Any]]:
        """The message on CHANNEL of MSG_TYPE whose parent is REQUEST, already here or to come.

        Shell replies and iopub output travel on different kernel sockets, so they may arrive
        in either order; nothing is consumed by looking.
        """
        msg_id = request["header"]["msg_id"]
        d: Deferred[dict[str, Any]] = Deferred()
        for message in self.received:
            if _answers(message, msg_id, channel, msg_type):
                d.callback(message)
                return d
        self._waiting.append((msg_id, channel, msg_type, d))
        return d


async def open_channels(
    test: TestCase, port: int, kernel_id: str, headers: dict[str, str]
) -> KernelChannels:
    """Open the kernel's channels WebSocket on 127.0.0.1:PORT; closed at the end of the test."""
    url = f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
    factory = WebSocketClientFactory(url, headers=headers, reactor=reactor)
    factory.protocol = KernelChannels
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    channels: KernelChannels = await endpoint.connect(factory)

    async def close() -> None:
        if channels.state == channels.STATE_OPEN:
            channels.sendClose(1000)
        await channels.lost

    add_async_cleanup(test, close)
    await channels.opened
    return channels
