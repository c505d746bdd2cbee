"""Fuzz target: the RFC 6455 frame reader (`nbbridge.wire.websocket.FrameReader`).

Any bytes, in reads of any size, give handler calls or a `FrameViolation` (`MessageTooBig`
being one), never another exception. The handler sees well-formed messages (a piece starts a
message only outside one, control payloads of 125 bytes at most, keys only where frames must
be masked), nothing after a violation, and the same unmasked bytes and control frames however
the input is cut into reads (a violation may come after fewer pieces, never other ones).
"""

from __future__ import annotations

from ._harness import instrumented, main, split

with instrumented():
    from nbbridge.wire.websocket import (
        MAX_CONTROL_PAYLOAD,
        OP_BINARY,
        OP_CLOSE,
        OP_CONTINUATION,
        OP_PING,
        OP_TEXT,
        FrameReader,
        FrameViolation,
        frame_header,
        mask_in_place,
    )


class _Recorder:
    """A FrameHandler that checks message structure and keeps what it was given, unmasked."""

    def __init__(self, masked: bool) -> None:
        self.masked = masked
        self.in_message = False
        self.events: list[tuple[str, bytes]] = []

    def on_data_piece(
        self, piece: memoryview, key: bytes, offset: int, first: bool, last: bool
    ) -> None:
        assert bool(key) == self.masked and len(key) in (0, 4), key
        assert first != self.in_message, "a message started inside another, or none was open"
        self.in_message = not last
        data = bytearray(piece)
        if key:
            mask_in_place(data, 0, key, offset)
        if first:
            self.events.append(("start", b""))
        self.events.append(("data", bytes(data)))
        if last:
            self.events.append(("end", b""))

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        assert opcode >= OP_CLOSE and len(payload) <= MAX_CONTROL_PAYLOAD, (opcode, len(payload))
        self.events.append((f"control {opcode}", payload))

    def normalised(self) -> list[tuple[str, bytes]]:
        """The events with adjacent data pieces joined (reads cut pieces anywhere)."""
        out: list[tuple[str, bytes]] = []
        for kind, data in self.events:
            if kind == "data" and out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + data)
            elif kind != "data" or data:
                out.append((kind, data))
        return out


def _read(pieces: list[bytes], masked: bool, limit: int) -> tuple[_Recorder, FrameViolation | None]:
    recorder = _Recorder(masked)
    reader = FrameReader(recorder, masked=masked, max_message=limit)
    for piece in pieces:
        try:
            reader.feed(piece)
        except FrameViolation as e:
            seen = len(recorder.events)
            reader.feed(b"\x82\x00" * 4)  # a stopped reader reads nothing more
            assert len(recorder.events) == seen, "the reader went on after a violation"
            return recorder, e
    return recorder, None


def TestOneInput(data: bytes) -> None:
    selector, pieces = split(data)
    masked = bool(selector & 8)
    limit = (0, 16, 1000, 70000)[(selector >> 4) & 3]
    chunked, error = _read(pieces, masked, limit)
    if len(pieces) <= 1:
        return
    whole, whole_error = _read([b"".join(pieces)], masked, limit)
    assert (error is None) == (whole_error is None), (error, whole_error)
    if error is None:
        assert chunked.normalised() == whole.normalised(), "result depends on the reads"
        return
    assert type(error) is type(whole_error) and str(error) == str(whole_error)
    a, b = chunked.normalised(), whole.normalised()
    shorter, longer = (a, b) if len(a) <= len(b) else (b, a)
    for i, event in enumerate(shorter[:-1]):
        assert event == longer[i], "result depends on the reads"


def seeds() -> list[bytes]:
    """Masked and unmasked messages: whole, fragmented, with control frames between."""
    key = b"\x01\x02\x03\x04"

    def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = False) -> bytes:
        body = bytearray(payload)
        if masked:
            mask_in_place(body, 0, key)
        return frame_header(opcode, len(payload), fin=fin, key=key if masked else b"") + body

    out = []
    for masked, selector in ((False, 0x00), (True, 0x0B), (True, 0x18)):
        stream = b"".join(
            [
                frame(OP_BINARY, b"hello", masked=masked),
                frame(OP_TEXT, b"frag", fin=False, masked=masked),
                frame(OP_PING, b"ping", masked=masked),
                frame(OP_CONTINUATION, b"mented", masked=masked),
                frame(OP_BINARY, b"x" * 200, masked=masked),
                frame(OP_BINARY, b"y" * 70000, masked=masked)[:40],
                frame(OP_CLOSE, b"\x03\xe8bye", masked=masked),
            ]
        )
        out.append(bytes([selector]) + stream)
    return out


if __name__ == "__main__":
    main(TestOneInput)
