"""Kernel WebSocket clients for both of Jupyter's framings, and the execute round trip.

Legacy: JSON messages in text frames (``tests.tunnel._jupyter.KernelChannels``). v1
(subprotocol ``v1.kernel.websocket.jupyter.org``): binary frames holding offsets, the channel
name and the message parts, encoded and decoded with jupyter-server's own functions.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase

from tests._cleanup import add_async_cleanup
from tests.tunnel._jupyter import KernelChannels, execute_request

V1 = "v1.kernel.websocket.jupyter.org"


class KernelChannelsV1(KernelChannels):
    """The v1 framing: messages are binary; the channel is in the frame, not the JSON."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1

        if not isBinary:
            return
        channel, parts = deserialize_msg_from_ws_v1(payload)
        header, parent, metadata, content = (json.loads(p) for p in parts[:4])
        message = {
            "channel": channel,
            "header": header,
            "msg_type": header.get("msg_type"),
            "parent_header": parent,
            "metadata": metadata,
            "content": content,
        }
        super().onMessage(json.dumps(message).encode(), False)

    def send_json(self, message: dict[str, Any]) -> None:
        from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

        parts = [
            json.dumps(message[k]).encode()
            for k in ("header", "parent_header", "metadata", "content")
        ]
        self.sendMessage(serialize_msg_to_ws_v1(parts, message["channel"]), isBinary=True)


async def open_kernel(
    test: TestCase,
    port: int,
    kernel_id: str,
    headers: dict[str, str],
    *,
    v1: bool,
) -> KernelChannels:
    """The kernel's channels on 127.0.0.1:PORT in either framing; closed at the end."""
    url = f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
    factory = WebSocketClientFactory(
        url, headers=headers, protocols=[V1] if v1 else None, reactor=reactor
    )
    factory.protocol = KernelChannelsV1 if v1 else KernelChannels
    channels: KernelChannels = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)

    async def close() -> None:
        if channels.state == channels.STATE_OPEN:
            channels.sendClose(1000)
        await channels.lost

    add_async_cleanup(test, close)
    await channels.opened
    return channels


async def execute(channels: KernelChannels, code: str) -> dict[str, Any]:
    """Run CODE; the execute_result's content (after the shell reply said ok)."""
    request = execute_request(code, uuid.uuid4().hex)
    result: Deferred[dict[str, Any]] = channels.reply_to(request, "iopub", "execute_result")
    reply = channels.reply_to(request, "shell", "execute_reply")
    channels.send_json(request)
    shell = await reply
    assert shell["content"]["status"] == "ok", shell["content"]
    return (await result)["content"]  # type: ignore[no-any-return]
