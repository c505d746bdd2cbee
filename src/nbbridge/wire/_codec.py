"""Encode frames to bytes and decode bytes, arriving in chunks of any size, back to frames.

Layout of every frame (big-endian)::

    u8 type | u8 flags (reserved, 0) | u32 channel | u32 payload length | payload

Payloads by type:

    OPEN       u32 window | u8 name length | name (UTF-8) | u8 item count |
               count x (u8 key length | key | u16 value length | value)
    OPEN_OK    u32 window
    OPEN_FAIL  u16 code | reason (UTF-8, the rest)
    DATA       the bytes
    WINDOW     u32 increment (> 0)
    CLOSE      empty
    RESET      u16 code | reason (UTF-8, the rest)
    GOAWAY     u16 code | reason (UTF-8, the rest); channel 0

Resumption (docs/resume.md), channel 0 except ACK:

    HELLO      u8 version | u32 grace seconds
    RESUME     16-byte session id | 32-byte proof | u32 count | count x ENTRY
    RESUMED    u16 code | 32-byte proof | u32 count | count x ENTRY | reason (UTF-8, the rest)
    ACK        u8 flags (1: CLOSE received) | u64 bytes received
    ENTRY      u32 channel | u8 flags | u64 received | u64 limit
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from ._frames import (
    MAX_METADATA_BYTES,
    MAX_METADATA_ITEMS,
    MAX_PAYLOAD,
    MAX_REASON,
    MAX_SERVICE_NAME,
    PROOF_SIZE,
    SESSION_ID_SIZE,
    Ack,
    Close,
    Data,
    Frame,
    FrameType,
    GoAway,
    Hello,
    Open,
    OpenFail,
    OpenOk,
    Reset,
    Resume,
    Resumed,
    ResumeEntry,
    Window,
)

_HEADER = struct.Struct(">BBII")
HEADER_SIZE = _HEADER.size
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_HELLO = struct.Struct(">BI")
_ACK = struct.Struct(">BQ")
_ENTRY = struct.Struct(">IBQQ")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from

_DATA = int(FrameType.DATA)
_WINDOW = int(FrameType.WINDOW)
_LAST_TYPE = max(FrameType)


class FrameError(Exception):
    """The bytes are not a valid frame; the message says what is wrong."""


def _utf8(text: str, what: str, limit: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > limit:
        raise FrameError(f"{what} is {len(raw)} bytes, more than {limit}")
    return raw


def _reason(text: str) -> bytes:
    # Reasons are informative: cut rather than refuse, on a character boundary.
    raw = text.encode("utf-8")[:MAX_REASON]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def _encode_open(frame: Open) -> bytes:
    if not frame.service:
        raise FrameError("empty service name")
    name = _utf8(frame.service, "service name", MAX_SERVICE_NAME)
    if len(frame.metadata) > MAX_METADATA_ITEMS:
        raise FrameError(f"{len(frame.metadata)} metadata items, more than {MAX_METADATA_ITEMS}")
    parts = [_U32.pack(frame.window), bytes([len(name)]), name, bytes([len(frame.metadata)])]
    for key, value in frame.metadata:
        k = _utf8(key, "metadata key", 255)
        v = _utf8(value, "metadata value", 0xFFFF)
        parts += [bytes([len(k)]), k, _U16.pack(len(v)), v]
    body = b"".join(parts)
    if len(body) - 6 - len(name) > MAX_METADATA_BYTES:
        raise FrameError(f"metadata is more than {MAX_METADATA_BYTES} bytes")
    return body


def encode(frame: Frame) -> bytes:
    """The bytes of one frame. Raises FrameError for a frame that could never be decoded."""
    if isinstance(frame, Data):
        return encode_data(frame.channel, frame.payload)
    if isinstance(frame, Window):
        return encode_window(frame.channel, frame.increment)
    body: bytes
    if isinstance(frame, Open):
        kind, body = FrameType.OPEN, _encode_open(frame)
    elif isinstance(frame, OpenOk):
        kind, body = FrameType.OPEN_OK, _U32.pack(frame.window)
    elif isinstance(frame, OpenFail):
        kind, body = FrameType.OPEN_FAIL, _U16.pack(frame.code) + _reason(frame.text)
    elif isinstance(frame, Close):
        kind, body = FrameType.CLOSE, b""
    elif isinstance(frame, Reset):
        kind, body = FrameType.RESET, _U16.pack(frame.code) + _reason(frame.text)
    elif isinstance(frame, Ack):
        kind, body = FrameType.ACK, _ACK.pack(1 if frame.fin else 0, frame.received)
    elif isinstance(frame, Hello):
        kind, body = FrameType.HELLO, _HELLO.pack(frame.version, frame.grace)
    elif isinstance(frame, Resume):
        if len(frame.session_id) != SESSION_ID_SIZE or len(frame.proof) != PROOF_SIZE:
            raise FrameError("RESUME needs a 16-byte session id and a 32-byte proof")
        kind = FrameType.RESUME
        body = frame.session_id + frame.proof + _entries(frame.entries)
    elif isinstance(frame, Resumed):
        if len(frame.proof) != PROOF_SIZE:
            raise FrameError("RESUMED needs a 32-byte proof")
        kind = FrameType.RESUMED
        body = _U16.pack(frame.code) + frame.proof + _entries(frame.entries) + _reason(frame.text)
    else:
        kind, body = FrameType.GOAWAY, _U16.pack(frame.code) + _reason(frame.text)
    if kind in _SESSION_FRAMES and frame.channel != 0:
        raise FrameError(f"{kind.name} must be sent on channel 0")
    return _pack_header(kind, 0, frame.channel, len(body)) + body


_SESSION_FRAMES = frozenset(
    {FrameType.GOAWAY, FrameType.HELLO, FrameType.RESUME, FrameType.RESUMED}
)


def _entries(entries: Iterable[ResumeEntry]) -> bytes:
    items = list(entries)
    if len(items) * _ENTRY.size > MAX_PAYLOAD - 64:
        raise FrameError(f"{len(items)} resume entries do not fit in one frame")
    return _U32.pack(len(items)) + b"".join(
        _ENTRY.pack(e.channel, e.flags, e.received, e.limit) for e in items
    )


def _decode_entries(body: memoryview, what: str) -> tuple[tuple[ResumeEntry, ...], int]:
    """The entries at the start of BODY, and the bytes they took."""
    if len(body) < 4:
        raise FrameError(f"truncated {what}: no entry count")
    count = _U32.unpack_from(body)[0]
    end = 4 + count * _ENTRY.size
    if end > len(body):
        raise FrameError(f"truncated {what}: {count} entries announced")
    entries = tuple(
        ResumeEntry(*_ENTRY.unpack_from(body, 4 + i * _ENTRY.size)) for i in range(count)
    )
    return entries, end


def _decode_resumption(kind: int, channel: int, body: memoryview) -> Frame:
    name = FrameType(kind).name
    if channel != 0 and kind != FrameType.ACK:
        raise FrameError(f"{name} on channel {channel}, not 0")
    if kind == FrameType.ACK:
        if len(body) != _ACK.size:
            raise FrameError(f"ACK payload must be {_ACK.size} bytes, not {len(body)}")
        flags, received = _ACK.unpack_from(body)
        if flags & ~1:
            raise FrameError(f"unknown ACK flags {flags:#04x}")
        return Ack(channel, received, bool(flags & 1))
    if kind == FrameType.HELLO:
        if len(body) != _HELLO.size:
            raise FrameError(f"HELLO payload must be {_HELLO.size} bytes, not {len(body)}")
        return Hello(*_HELLO.unpack_from(body))
    if kind == FrameType.RESUME:
        head = SESSION_ID_SIZE + PROOF_SIZE
        if len(body) < head:
            raise FrameError("truncated RESUME")
        entries, used = _decode_entries(body[head:], "RESUME")
        if head + used != len(body):
            raise FrameError("stray bytes after RESUME entries")
        return Resume(bytes(body[:SESSION_ID_SIZE]), bytes(body[SESSION_ID_SIZE:head]), entries)
    head = 2 + PROOF_SIZE
    if len(body) < head:
        raise FrameError("truncated RESUMED")
    code = _U16.unpack_from(body)[0]
    entries, used = _decode_entries(body[head:], "RESUMED")
    reason = body[head + used :]
    if len(reason) > MAX_REASON:
        # As for every reason: a longer one could not be re-encoded as it came.
        raise FrameError(f"RESUMED reason is {len(reason)} bytes, more than {MAX_REASON}")
    text = _text(reason, "RESUMED reason")
    return Resumed(code, bytes(body[2:head]), entries, text)


def encode_data(channel: int, payload: bytes) -> bytes:
    """One DATA frame: the hot path, so no record is built."""
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"DATA payload of {len(payload)} bytes, more than {MAX_PAYLOAD}")
    return _pack_header(_DATA, 0, channel, len(payload)) + payload


def data_header(channel: int, length: int) -> bytes:
    """The header of a DATA frame, for writers that send header and payload separately."""
    return _pack_header(_DATA, 0, channel, length)


def encode_window(channel: int, increment: int) -> bytes:
    """One WINDOW frame."""
    return _pack_header(_WINDOW, 0, channel, 4) + _U32.pack(increment)


def encode_all(frames: Iterable[Frame]) -> bytes:
    """The bytes of several frames, in order."""
    return b"".join(encode(f) for f in frames)


def _text(body: bytes | memoryview, what: str) -> str:
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FrameError(f"bad UTF-8 in {what}: {e.reason} at byte {e.start}") from None


def _code_and_text(body: memoryview, what: str) -> tuple[int, str]:
    if len(body) < 2:
        raise FrameError(f"truncated {what}: no reason code")
    if len(body) - 2 > MAX_REASON:
        raise FrameError(f"{what} reason is {len(body) - 2} bytes, more than {MAX_REASON}")
    return _U16.unpack_from(body)[0], _text(body[2:], f"{what} reason")


def _decode_open(channel: int, body: memoryview) -> Open:
    try:
        window = _U32.unpack_from(body)[0]
        pos = 4
        n = body[pos]
        pos += 1
        if n == 0:
            raise FrameError("empty service name in OPEN")
        if pos + n > len(body):
            raise FrameError("truncated service name in OPEN")
        service = _text(body[pos : pos + n], "service name")
        pos += n
        count = body[pos]
        pos += 1
        if count > MAX_METADATA_ITEMS:
            raise FrameError(f"{count} metadata items in OPEN, more than {MAX_METADATA_ITEMS}")
        if len(body) - pos > MAX_METADATA_BYTES:
            raise FrameError(f"metadata is more than {MAX_METADATA_BYTES} bytes")
        items = []
        for _ in range(count):
            klen = body[pos]
            pos += 1
            if pos + klen + 2 > len(body):
                raise FrameError("truncated metadata key in OPEN")
            key = _text(body[pos : pos + klen], "metadata key")
            pos += klen
            vlen = _U16.unpack_from(body, pos)[0]
            pos += 2
            if pos + vlen > len(body):
                raise FrameError("truncated metadata value in OPEN")
            items.append((key, _text(body[pos : pos + vlen], "metadata value")))
            pos += vlen
    except (IndexError, struct.error):
        raise FrameError("truncated OPEN frame") from None
    if pos != len(body):
        raise FrameError(f"{len(body) - pos} stray bytes after OPEN metadata")
    return Open(channel, service, window, tuple(items))


def _u32_body(body: memoryview, what: str) -> int:
    if len(body) != 4:
        raise FrameError(f"{what} payload must be 4 bytes, not {len(body)}")
    value: int = _U32.unpack_from(body)[0]
    return value


def decode_body(kind: int, flags: int, channel: int, body: memoryview) -> Frame:
    """One frame from its header fields and payload."""
    if flags:
        raise FrameError(f"reserved flags set: {flags:#04x}")
    if kind == _DATA:
        return Data(channel, bytes(body))
    if kind == _WINDOW:
        increment = _u32_body(body, "WINDOW")
        if increment == 0:
            raise FrameError("WINDOW increment of 0")
        return Window(channel, increment)
    if kind == FrameType.OPEN:
        return _decode_open(channel, body)
    if kind == FrameType.OPEN_OK:
        return OpenOk(channel, _u32_body(body, "OPEN_OK"))
    if kind == FrameType.OPEN_FAIL:
        return OpenFail(channel, *_code_and_text(body, "OPEN_FAIL"))
    if kind == FrameType.CLOSE:
        if len(body):
            raise FrameError(f"CLOSE with a {len(body)}-byte payload")
        return Close(channel)
    if kind == FrameType.RESET:
        return Reset(channel, *_code_and_text(body, "RESET"))
    if kind == FrameType.GOAWAY:
        if channel != 0:
            raise FrameError(f"GOAWAY on channel {channel}, not 0")
        return GoAway(*_code_and_text(body, "GOAWAY"))
    if FrameType.HELLO <= kind <= FrameType.ACK:
        return _decode_resumption(kind, channel, body)
    raise FrameError(f"unknown frame type {kind}")


class FrameDecoder:
    """Turns a byte stream, fed in chunks of any size, into frames.

    After a FrameError the stream cannot be resynchronised: the caller must end the session.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._max_payload = max_payload

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data``, in order."""
        if self._buffer:
            self._buffer += data
            view = memoryview(self._buffer)
        else:
            view = memoryview(data)
        frames: list[Frame] = []
        pos = 0
        end = len(view)
        while end - pos >= HEADER_SIZE:
            kind, flags, channel, length = _unpack_header(view, pos)
            if kind > _LAST_TYPE or kind == 0:
                raise FrameError(f"unknown frame type {kind}")
            if length > self._max_payload:
                raise FrameError(f"frame of {length} bytes, more than {self._max_payload}")
            stop = pos + HEADER_SIZE + length
            if stop > end:
                break
            frames.append(decode_body(kind, flags, channel, view[pos + HEADER_SIZE : stop]))
            pos = stop
        if pos or not self._buffer:
            # Keep only what is left; a buffer nothing was taken from is kept as it is (a
            # large frame arriving in many reads is then not copied again on every read).
            self._buffer = bytearray(view[pos:])
        return frames
