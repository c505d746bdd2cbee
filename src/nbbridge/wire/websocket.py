"""RFC 6455 frames after the opening handshake, sans-IO: the data path's reader and writer.

Links and data connections carry nothing but binary frames, at line rate. Autobahn does the
opening handshake, the close handshake and the heartbeats, and its frame layer is kept for
those (control frames are handed back to it), but for data frames it costs too much per
message: statistics, debug-log arguments built on every call, every message reassembled, and
a zero-filled copy per masking. Here a data frame's payload is handed on as it arrives, as
pieces of the read buffer, without reassembly: the relay re-frames each piece to the other end
(RFC 6455 §5.4 lets an intermediary change a message's fragmentation), and the tunnel ends feed
it to the byte stream they carry.

Every rule a receiver must enforce is enforced: reserved bits, opcodes, masking by direction,
control-frame size and fragmentation, continuation order, the 63-bit length, and a message
size limit checked from frame headers: nothing of the frame that crosses it is passed on
(earlier fragments of the same message already were; the message is streamed, not held).
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

from ._masking import mask_in_place as mask_in_place  # re-exported: the tunnel ends mask with it

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
MAX_CONTROL_PAYLOAD: Final = 125
#: The longest frame header: 2 bytes, a 64-bit length, a masking key.
MAX_HEADER: Final = 14

_FIN: Final = 0x80
_MASKED: Final = 0x80
_RSV: Final = 0x70
_LEN16: Final = struct.Struct(">BBH")
_LEN64: Final = struct.Struct(">BBQ")
_U16: Final = struct.Struct(">H")
_U64: Final = struct.Struct(">Q")
_KNOWN_OPCODES: Final = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG})


class FrameViolation(Exception):
    """The peer broke RFC 6455; fail the connection with ``code`` (1002, protocol error)."""

    code = 1002


class MessageTooBig(FrameViolation):
    """A message grew past the limit, seen in a frame header: none of that frame was passed on."""

    code = 1009

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes or more exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def frame_header(opcode: int, length: int, *, fin: bool = True, key: bytes = b"") -> bytes:
    """The header of a frame with LENGTH bytes of payload; KEY (4 bytes) if the frame is masked."""
    first = opcode | _FIN if fin else opcode
    mask = _MASKED if key else 0
    if length < 126:
        head = bytes((first, mask | length))
    elif length < 0x10000:
        head = _LEN16.pack(first, mask | 126, length)
    else:
        head = _LEN64.pack(first, mask | 127, length)
    return head + key if key else head


class FrameHandler(Protocol):
    """Where a FrameReader hands what it reads."""

    def on_data_piece(
        self, piece: memoryview, key: bytes, offset: int, first: bool, last: bool
    ) -> None:
        """A piece of a data message's payload, as received (still masked if KEY is not empty).

        :param offset: where PIECE starts in its frame's payload (masking repeats every 4
            bytes from the payload's start).
        :param first: PIECE starts a message (``FrameReader.binary`` says which kind).
        :param last: PIECE ends the message. Empty pieces carry ``first``/``last`` of empty
            frames.
        """

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        """A whole control frame (close, ping or pong), unmasked."""


class FrameReader:
    """Reads the frames of one direction of a WebSocket connection.

    :param masked: frames must be masked (a server reading a client) or must not be (a client
        reading a server).
    :param max_message: the largest message accepted, in bytes; 0 for no limit.
    """

    def __init__(self, handler: FrameHandler, *, masked: bool, max_message: int = 0) -> None:
        self._handler = handler
        self._masked = masked
        self._max_message = max_message
        self._partial = b""
        self._stopped = False
        # The frame being read: its opcode, FIN bit, key, payload still to come, offset so far.
        self._opcode = -1
        self._fin = False
        self._key = b""
        self._left = 0
        self._offset = 0
        self._control = bytearray()
        self._in_message = False
        self._message_size = 0
        #: Whether the data message being read is binary (else text).
        self.binary = True

    def stop(self) -> None:
        """Ignore all further input: the connection is failing or closed."""
        self._stopped = True
        self._partial = b""
        self._control = bytearray()

    def feed(self, data: bytes) -> None:
        """Read DATA, calling the handler for each piece and control frame in order.

        :raises FrameViolation: the peer broke the protocol; the reader is stopped.
        """
        try:
            self._feed(memoryview(data))
        except FrameViolation:
            self.stop()
            raise

    def _feed(self, view: memoryview) -> None:
        end = len(view)
        pos = 0
        if self._partial:
            joined = self._partial + bytes(view[:MAX_HEADER])
            used = self._start_frame(memoryview(joined), 0, len(joined))
            if used < 0:
                self._partial = joined
                return
            pos = used - len(self._partial)
            self._partial = b""
        while not self._stopped:
            if self._opcode < 0:
                if pos == end:
                    return
                used = self._start_frame(view, pos, end)
                if used < 0:
                    self._partial = bytes(view[pos:])
                    return
                pos = used
                continue
            take = min(self._left, end - pos)
            if take == 0:
                return
            piece = view[pos : pos + take]
            pos += take
            self._left -= take
            offset = self._offset
            self._offset += take
            done = self._left == 0
            if done:
                self._opcode, opcode = -1, self._opcode
            else:
                opcode = self._opcode
            if opcode >= OP_CLOSE:
                self._control += piece
                if done:
                    self._end_control(opcode)
                continue
            first = offset == 0 and opcode != OP_CONTINUATION
            last = done and self._fin
            if last:
                self._in_message = False
            self._handler.on_data_piece(piece, self._key, offset, first, last)

    def _start_frame(self, view: memoryview, pos: int, end: int) -> int:
        """Read the frame header at POS; returns where its payload starts, or -1 if incomplete."""
        if end - pos < 2:
            return -1
        b0 = view[pos]
        b1 = view[pos + 1]
        length = b1 & 0x7F
        start = pos + 2
        if length == 126:
            if end - start < 2:
                return -1
            (length,) = _U16.unpack_from(view, start)
            start += 2
            if length < 126:
                raise FrameViolation("frame length not in its shortest form")
        elif length == 127:
            if end - start < 8:
                return -1
            (length,) = _U64.unpack_from(view, start)
            start += 8
            if length >> 63:
                raise FrameViolation("frame length has its most significant bit set")
            if length < 0x10000:
                raise FrameViolation("frame length not in its shortest form")
        masked = bool(b1 & _MASKED)
        if masked:
            if end - start < 4:
                return -1
            self._key = bytes(view[start : start + 4])
            start += 4
        else:
            self._key = b""
        self._check(b0, masked, length)
        self._opcode = b0 & 0x0F
        self._fin = bool(b0 & _FIN)
        self._left = length
        self._offset = 0
        if length == 0:
            # Nothing follows the header: the frame is whole now.
            self._empty_frame()
        return start

    def _check(self, b0: int, masked: bool, length: int) -> None:
        if b0 & _RSV:
            raise FrameViolation("reserved bits set, but no extension was negotiated")
        opcode = b0 & 0x0F
        if opcode not in _KNOWN_OPCODES:
            raise FrameViolation(f"unknown opcode {opcode}")
        if masked != self._masked:
            raise FrameViolation(
                "unmasked frame from a client" if self._masked else "masked frame from a server"
            )
        if opcode >= OP_CLOSE:
            if not b0 & _FIN:
                raise FrameViolation("fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise FrameViolation(f"control frame of {length} bytes (125 at most)")
            if opcode == OP_CLOSE and length == 1:
                raise FrameViolation("close frame with a 1-byte body (a code takes 2)")
            return
        if opcode == OP_CONTINUATION:
            if not self._in_message:
                raise FrameViolation("continuation frame with no message to continue")
        else:
            if self._in_message:
                raise FrameViolation("new data message before the previous one ended")
            self._in_message = True
            self._message_size = 0
            self.binary = opcode == OP_BINARY
        self._message_size += length
        if self._max_message and self._message_size > self._max_message:
            raise MessageTooBig(self._message_size, self._max_message)

    def _empty_frame(self) -> None:
        opcode, self._opcode = self._opcode, -1
        if opcode >= OP_CLOSE:
            self._end_control(opcode)
            return
        last = self._fin
        if last:
            self._in_message = False
        self._handler.on_data_piece(memoryview(b""), self._key, 0, opcode != OP_CONTINUATION, last)

    def _end_control(self, opcode: int) -> None:
        payload, self._control = self._control, bytearray()
        if self._key:
            mask_in_place(payload, 0, self._key)
        self._handler.on_control_frame(opcode, bytes(payload))
