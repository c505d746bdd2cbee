"""A byte stream carried in binary WebSocket messages, for protocols that expect a transport.

A link (client side) or a data connection (agent side) is a WebSocket; what runs inside it,
the Noise session and the mux, is an ordinary Twisted protocol. ``WebSocketStream`` is the
transport that protocol sees: each write is one binary message, each piece of a message is
handed on as data as it arrives (message boundaries mean nothing to a byte stream), and flow
control is the TCP connection's own (frames are written straight into it), so producers
registered here are registered there.
"""

from __future__ import annotations

import os
from typing import Any

from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet.interfaces import IProducer, IProtocol, IPushProducer, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbbridge._internals import cancel_close_timer, write_now
from nbbridge._tuning import tune
from nbbridge.wire.websocket import OP_BINARY, frame_header

from ._dataframes import DataFrames, xor_frame


class LinkClosed(Exception):
    """The WebSocket carrying a link closed; ``code`` and ``reason`` are the close frame's."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason or ""

    def __str__(self) -> str:
        if self.code in (None, 1006):
            return f"connection to the relay lost{': ' + self.reason if self.reason else ''}"
        return f"relay closed the link ({self.code}): {self.reason}"


@implementer(ITransport, IPushProducer)
class WebSocketStream:
    """The transport a stream protocol sees on top of a WebSocket protocol."""

    disconnecting = False

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    def _open(self) -> bool:
        return not self.disconnecting and self._ws.state == self._ws.STATE_OPEN

    def write(self, data: bytes) -> None:
        # Once a close handshake has begun, Autobahn raises on send: whatever is written
        # then is lost with the link anyway, and the protocols above learn it by onClose.
        if self._open():
            self._ws.send_binary((data,))

    def writeSequence(self, data: list[bytes]) -> None:  # type: ignore[override]
        if self._open():
            self._ws.send_binary(data)

    def loseConnection(self) -> None:
        if self._open():
            self._ws.sendClose(1000)
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._ws.dropConnection(abort=True)

    def getPeer(self) -> Any:
        return self._ws.transport.getPeer()

    def getHost(self) -> Any:
        return self._ws.transport.getHost()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._ws.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._ws.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self._ws.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._ws.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abortConnection()


def bind(factory: Any, owner: object) -> Any:
    """Attach to a WebSocket factory the object its protocols work for (``protocol.owner``)."""
    factory.owner = owner
    return factory


# (misc: Autobahn's own two base classes disagree on two attribute types.)
class StreamClientProtocol(DataFrames, WebSocketClientProtocol):  # type: ignore[misc]
    """A WebSocket client running a stream protocol (``make_inner``) over binary messages.

    Subclasses say what runs inside (``make_inner``), what to do with text messages
    (``textReceived``) and when the WebSocket has closed (``closed``).
    """

    _log = Logger()
    inner: IProtocol | None = None
    stream: WebSocketStream | None = None

    @property
    def owner(self) -> Any:
        """What ``bind`` attached to this protocol's factory (the link, the agent...)."""
        return self.factory.owner

    def make_inner(self) -> IProtocol:
        raise NotImplementedError

    def textReceived(self, text: str) -> None:
        self.sendClose(1003, "unexpected text message")

    def closed(self, code: int | None, reason: str) -> None:
        pass

    def connectionMade(self) -> None:
        tune(self.transport)
        super().connectionMade()

    def onOpen(self) -> None:
        self.read_data_frames()
        self.stream = WebSocketStream(self)
        self.inner = self.make_inner()
        self.inner.makeConnection(self.stream)

    def send_binary(self, pieces: list[bytes] | tuple[bytes, ...]) -> None:
        """Send PIECES, joined, as one binary message, masked with a fresh key as a client must.

        The frame is built, masked and written in one piece (see `xor_frame`).
        """
        if self.state != self.STATE_OPEN:
            return
        key = os.urandom(4)
        header = frame_header(OP_BINARY, sum(map(len, pieces)), key=key)
        write_now(self.transport, xor_frame(header, pieces, key))

    def on_data_piece(
        self, piece: memoryview, key: bytes, offset: int, first: bool, last: bool
    ) -> None:
        # The relay sends only binary messages on a data link; the inner protocols take any
        # bytes-like data, so the read buffer's pieces go in without a copy.
        frames = self._frames
        assert frames is not None
        if not frames.binary:
            if first:
                self._fail(1003, "unexpected text message on a data link")
        elif piece and self.inner is not None and self.state == self.STATE_OPEN:
            self.inner.dataReceived(piece)  # type: ignore[arg-type]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # Only connections that never started a stream (the agent's control) read messages.
        if not isBinary:
            self.textReceived(payload.decode("utf-8", "replace"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        cancel_close_timer(self)
        if self.stream is not None:
            self.stream.disconnecting = True
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connectionLost(Failure(LinkClosed(code, reason)))  # type: ignore[no-untyped-call]
        self.closed(code, reason or "")
