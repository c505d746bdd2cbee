# Autobahn's protocol API is untyped; calling into it is the point of this module.
# mypy: disable-error-code="no-untyped-call"
"""Data frames off Autobahn's per-message path, on an open Autobahn WebSocket.

`DataFrames` is mixed into the Autobahn protocols of the data path (a client's link, an
agent's data connection, and both relay ends splicing them). Once the WebSocket is open, data
frames are read by `nbbridge.wire.websocket.FrameReader`; control frames go back to Autobahn,
which keeps the close handshake, pings and pongs and its heartbeat timers exactly as before.
Each side writes its data frames whole, with one transport write each: the tunnel ends as a
client (`StreamClientProtocol.send_binary`, masked), the relay as a server re-framing what it
reads (`_SpliceProtocol.on_data_piece`). See `nbbridge.wire.websocket` for why.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

from nbbridge._internals import (
    fail_connection,
    process_control_frame,
    take_handshake_leftover,
    traffic_seen,
)
from nbbridge.wire.websocket import FrameReader, FrameViolation, MessageTooBig, mask_in_place

_READING = (WebSocketProtocol.STATE_OPEN, WebSocketProtocol.STATE_CLOSING)


def xor_frame(
    header: bytes, pieces: Iterable[bytes | memoryview], key: bytes, offset: int = 0
) -> bytes:
    """A whole frame: HEADER, then PIECES joined and XORed with the masking KEY.

    The same pass masks a client's payload and unmasks a peer's (OFFSET: where the first
    piece starts in its frame's payload). One copy of the payload into the frame, one XOR
    pass, and the bytes Twisted's ``write`` requires.
    """
    frame = bytearray(header)
    for piece in pieces:
        frame += piece
    mask_in_place(frame, len(header), key, offset)
    return bytes(frame)


class DataFrames:
    """Mixin for an Autobahn WebSocketProtocol subclass (list it first among the bases)."""

    _frames: FrameReader | None = None
    # What Autobahn's protocol provides (declared for the type checker).
    state: int
    transport: Any
    factory: Any

    def read_data_frames(self, *, max_message: int = 0) -> None:
        """From now on read data frames here (call it from ``onOpen``).

        :param max_message: the largest message accepted; a larger one fails the connection
            through ``message_too_big`` before the frame that crosses the limit is handed on.
        """
        self._frames = FrameReader(self, masked=self.factory.isServer, max_message=max_message)

    # -- what subclasses implement -------------------------------------------------------------

    def on_data_piece(
        self, piece: memoryview, key: bytes, offset: int, first: bool, last: bool
    ) -> None:
        """A piece of a data message (see `FrameHandler.on_data_piece`)."""
        raise NotImplementedError

    def message_too_big(self, error: MessageTooBig) -> None:
        """The peer sent a message over the limit; by default fail with 1009."""
        self._fail(error.code, str(error))

    # -- reading -------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._frames is None:
            super().dataReceived(data)  # type: ignore[misc]
        elif self.state in _READING:
            self._read(data)

    def consumeData(self) -> None:
        # Autobahn calls this with what arrived along with the opening handshake.
        if self._frames is None:
            super().consumeData()  # type: ignore[misc]
            return
        data = take_handshake_leftover(self)
        if data and self.state in _READING:
            self._read(data)

    def _read(self, data: bytes) -> None:
        frames = self._frames
        assert frames is not None
        try:
            frames.feed(data)
        except MessageTooBig as e:
            self.message_too_big(e)
        except FrameViolation as e:
            self._fail(e.code, str(e))
        traffic_seen(self)

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        process_control_frame(self, opcode, payload)
        if self.state == WebSocketProtocol.STATE_CLOSED and self._frames is not None:
            self._frames.stop()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7): a close frame saying why, then the TCP close.

        Nothing after the bad frame can be trusted to be frames, so the peer's close reply is
        not waited for. The state stays CLOSING until the TCP connection is gone, so that
        Autobahn's close-handshake timer still aborts it if the peer does not read what is
        left to send (the close frame included); already closing, it is aborted at once.
        """
        if self._frames is not None:
            self._frames.stop()
        if self.state == WebSocketProtocol.STATE_OPEN:
            fail_connection(self, code, reason)
            self.transport.loseConnection()
        else:
            self.dropConnection(abort=True)  # type: ignore[attr-defined]
