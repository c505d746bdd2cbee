# Autobahn's and Twisted's protocol APIs are untyped; calling them is the point of this module.
# mypy: disable-error-code="no-untyped-call"
"""One browser WebSocket spliced to one TCP connection (the gateway's data path).

The WebSocket side is a `nbbridge.websocket.ServerWebSocket` with the data-frame fast path
(`DataFrames`): in ``binary`` mode (and without a subprotocol) each piece of a data frame is
unmasked and written to the service as it arrives; each read from the service goes out as
one binary frame in one write. Old noVNC's ``base64`` subprotocol carries the bytes as base64
text messages, read whole through Autobahn's message path.

Backpressure both ways: when the browser's socket is full the service connection stops being
read; when the service's socket is full the WebSocket stops being read.

Which service a WebSocket reaches is the `Opener`'s business (a fixed target, or the instance
a reservation token names); it answers with the connected service protocol and a release
callable (stop the instance), or fails with `Refused`, whose code and reason close the
WebSocket before any service byte is sent.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbbridge._internals import write_now
from nbbridge._tuning import tune
from nbbridge.contract import CloseCode
from nbbridge.websocket import (
    DataFrames,
    ServerWebSocket,
    WriteWatch,
    set_server_options,
    xor_frame,
)
from nbbridge.wire.websocket import OP_BINARY, MessageTooBig, frame_header

from ._origin import OriginPolicy

#: The subprotocols the gateway speaks, in the order it prefers them.
SUBPROTOCOLS = ("binary", "base64")
#: Close code: the service could not be reached or started (the reason says why).
SERVICE_UNAVAILABLE = 4503
#: Close code: the service's connection broke (not a normal end of the service's stream).
SERVICE_LOST = 4502
#: What a browser may send before the service is connected, in bytes.
EARLY_LIMIT = 1 << 20
#: The largest message a browser may send (VNC messages are small; base64 text is 4/3 larger).
MAX_MESSAGE = 16 << 20

_DONE = Failure(ConnectionDone())
_SERVICE_FULL = "service-full"


class Refused(Exception):
    """The WebSocket may not reach a service: close with CODE and REASON."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@attrs.frozen
class Opened:
    """A service connection made for one WebSocket, and what to do once it ends."""

    protocol: ServiceSide
    release: Callable[[], object] = lambda: None


class Opener(Protocol):
    """Connects a WebSocket to its service (see the module docstring)."""

    def open(self, token: str | None, ws: GatewayWebSocket) -> Deferred[Opened]:
        """Connect a `ServiceSide` for WS (``ServiceSide(ws)``); TOKEN from ``?token=``."""


class ServiceSide(TwistedProtocol):
    """The TCP (or tunnel channel) end of a splice: hands everything to its WebSocket."""

    transport: Any  # a consumer and push producer (TCP, TLS or a tunnel channel)

    def __init__(self, ws: GatewayWebSocket) -> None:
        self.ws = ws
        self.closed = False
        self._watch = WriteWatch(ws.service_full_changed)

    def connectionMade(self) -> None:
        # Big reads (each becomes one frame to the browser) and no Nagle delay.
        tune(self.transport)
        self.transport.registerProducer(self._watch, True)

    def dataReceived(self, data: bytes) -> None:
        self.ws.send_data(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self.closed = True
        self.ws.service_lost(reason)

    def pause(self, paused: bool) -> None:
        """Stop (or resume) reading the service: the browser's socket is full (or drained)."""
        if self.closed or self.transport is None:
            return
        if paused:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def end(self, clean: bool) -> None:
        """Close the service connection: normally, or with a reset if the browser's broke."""
        if self.closed or self.transport is None:
            return
        if clean:
            self.transport.loseConnection()
        else:
            abort = getattr(self.transport, "abortConnection", None)
            (abort or self.transport.loseConnection)()


# (misc: Autobahn's own two base classes disagree on two attribute types.)
class GatewayWebSocket(DataFrames, ServerWebSocket):  # type: ignore[misc]
    """A browser's WebSocket, spliced to the service its `Opener` connects."""

    factory: GatewayFactory
    _log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self.base64 = False
        self._query_token: str | None = None
        self._peer = "?"
        self._pending: Deferred[Opened] | None = None
        self._opened: Opened | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._released = False

    @property
    def label(self) -> str:
        return f"gateway websocket from {self._peer}"

    @property
    def service(self) -> ServiceSide | None:
        return self._opened.protocol if self._opened is not None else None

    # -- handshake -----------------------------------------------------------------------------

    def onConnect(self, request: Any) -> str | None:  # type: ignore[override]
        self._peer = request.peer
        origin = request.headers.get("origin")
        if not self.factory.origins.allows(origin, request.headers.get("host")):
            self._log.warn(
                "refused a WebSocket from {peer}: origin {origin!r} is not allowed",
                peer=request.peer,
                origin=origin,
            )
            raise ConnectionDeny(403, "origin not allowed")
        tokens = request.params.get("token") or [None]
        self._query_token = tokens[0]
        for name in SUBPROTOCOLS:
            if name in request.protocols:
                self.base64 = name == "base64"
                return name
        return None

    def onOpen(self) -> None:
        self.factory.open_sockets.add(self)
        if not self.base64:
            self.read_data_frames(max_message=MAX_MESSAGE)
        self._log.info("{label}: open ({mode})", label=self.label, mode=self._mode)
        d = self.factory.opener.open(self._query_token, self)
        self._query_token = None
        self._pending = d
        d.addCallbacks(self._service_connected, self._service_refused)

    @property
    def _mode(self) -> str:
        return "base64" if self.base64 else "binary"

    def _service_connected(self, opened: Opened) -> None:
        self._pending = None
        self._opened = opened
        if self.state != WebSocketProtocol.STATE_OPEN:
            # The browser left while the service was connecting.
            opened.protocol.end(clean=True)
            self._release()
            return
        early, self._early = self._early, []
        for data in early:
            opened.protocol.transport.write(data)
        if opened.protocol.closed:
            return
        if self.write_full:
            opened.protocol.pause(True)

    def _service_refused(self, failure: Failure) -> None:
        self._pending = None
        if failure.check(CancelledError):
            return
        if failure.check(Refused):
            code, reason = failure.value.code, failure.value.reason
        else:
            code = SERVICE_UNAVAILABLE
            reason = f"cannot reach the service: {failure.getErrorMessage()}"
        self._log.info("{label}: closed: {reason}", label=self.label, reason=reason)
        self.close(code, reason)

    # -- browser -> service --------------------------------------------------------------------

    def on_data_piece(
        self, piece: memoryview, key: bytes, offset: int, first: bool, last: bool
    ) -> None:
        if piece:
            self._to_service(xor_frame(b"", (piece,), key, offset))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # Only in base64 mode (else data frames take the fast path).
        if isBinary:
            self._to_service(payload)
            return
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._log.info("{label}: closed: a text message is not base64", label=self.label)
            self.close(CloseCode.NOT_PERMITTED, "text messages must be base64 (subprotocol base64)")
            return
        self._to_service(data)

    def _to_service(self, data: bytes) -> None:
        service = self.service
        if service is not None:
            if not service.closed:
                write_now(service.transport, data)
            return
        self._early_size += len(data)
        if self._early_size > EARLY_LIMIT:
            self.close(CloseCode.LIMIT, f"sent over {EARLY_LIMIT} bytes before the service was up")
            return
        self._early.append(data)

    def message_too_big(self, error: MessageTooBig) -> None:
        self._fail(self.too_big_code, self._too_big(error.size, error.limit))

    def service_full_changed(self, full: bool) -> None:
        """The service's socket filled (FULL) or drained: hold or release the browser."""
        if full:
            self.hold_reading(_SERVICE_FULL)
        else:
            self.release_reading(_SERVICE_FULL)

    # -- service -> browser --------------------------------------------------------------------

    def send_data(self, data: bytes) -> None:
        """Bytes from the service, as one message."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        if self.base64:
            self.sendMessage(base64.b64encode(data), isBinary=False)
        else:
            write_now(self.transport, frame_header(OP_BINARY, len(data)), data)

    def _write_full_changed(self, full: bool) -> None:
        service = self.service
        if service is not None:
            service.pause(full)

    def pong_excused(self) -> bool:
        # Not read because the service is full, the browser's pong may wait unread.
        return _SERVICE_FULL in self._holds

    def service_lost(self, reason: Failure) -> None:
        """The service's connection ended: end the WebSocket the same way."""
        self._release()
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        if reason.check(ConnectionDone):
            self._log.info("{label}: the service closed the connection", label=self.label)
            self.close(CloseCode.NORMAL, "the service closed the connection")
        else:
            why = reason.getErrorMessage()
            self._log.info(
                "{label}: the service connection broke: {why}", label=self.label, why=why
            )
            self.close(SERVICE_LOST, f"the service connection broke: {why}")

    # -- the end -------------------------------------------------------------------------------

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.open_sockets.discard(self)
        self._early = []
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        service = self.service
        if service is not None:
            service.end(clean=bool(wasClean))
        self._release()
        self.factory.closed_one()

    def _release(self) -> None:
        if self._opened is None or self._released:
            return
        self._released = True
        try:
            self._opened.release()
        except Exception:
            self._log.failure("{label}: releasing the service failed", label=self.label)


class GatewayFactory(WebSocketServerFactory):
    """The WebSocket port: any path, the ``binary``/``base64`` subprotocols, an Origin check."""

    protocol = GatewayWebSocket  # type: ignore[assignment]

    def __init__(self, url: str, opener: Opener, origins: OriginPolicy) -> None:
        super().__init__(url)
        set_server_options(self, MAX_MESSAGE, utf8=False, ping_interval=30, ping_timeout=60)
        self.opener = opener
        self.origins = origins
        self.open_sockets: set[GatewayWebSocket] = set()
        self._closing: list[Deferred[None]] = []

    def closed_one(self) -> None:
        if not self.open_sockets:
            waiting, self._closing = self._closing, []
            for d in waiting:
                d.callback(None)

    def shutdown(self, reason: str) -> Deferred[Any]:
        """Close every WebSocket with 1001 and REASON; fires once all have closed."""
        if not self.open_sockets:
            return DeferredList([])
        d: Deferred[None] = Deferred()
        self._closing.append(d)
        for ws in list(self.open_sockets):
            ws.shutdown(reason)
        return d
