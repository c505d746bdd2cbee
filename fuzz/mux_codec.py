"""Fuzz target: the mux frame codec (`nbbridge.wire`).

Any bytes, in reads of any size, either decode to frames or raise `FrameError`, never another
exception; a frame that decodes re-encodes to the very bytes it came from (an OPEN's metadata
excepted: it is kept sorted, so an unsorted one re-encodes in its sorted order, to a frame that
decodes equal); and the same bytes give the same frames and the same outcome however they are
cut into reads (but a read holding a bad frame yields none of the good frames before it: the
decoder raises instead, and the session ends).
"""

from __future__ import annotations

from ._harness import instrumented, main, split

with instrumented():
    from nbbridge.wire import (
        HEADER_SIZE,
        Close,
        Data,
        Frame,
        FrameDecoder,
        FrameError,
        GoAway,
        Open,
        OpenFail,
        OpenOk,
        Reset,
        Window,
        encode,
        encode_all,
    )

#: A small payload limit on odd selectors, so the limit's check is reached too.
_SMALL_LIMIT = 64


def _decode(pieces: list[bytes], max_payload: int) -> tuple[list[Frame], str | None, int]:
    """The frames, the FrameError's message (or None), and the bytes left buffered."""
    decoder = FrameDecoder(max_payload) if max_payload else FrameDecoder()
    frames: list[Frame] = []
    try:
        for piece in pieces:
            frames += decoder.feed(piece)
    except FrameError as e:
        return frames, str(e), decoder.buffered
    return frames, None, decoder.buffered


def TestOneInput(data: bytes) -> None:
    selector, pieces = split(data)
    stream = b"".join(pieces)
    limit = _SMALL_LIMIT if selector & 8 else 0
    frames, error, buffered = _decode(pieces, limit)
    if len(pieces) > 1:
        whole, whole_error, _ = _decode([stream], limit)
    else:
        whole, whole_error = frames, error
    assert (whole_error is None) == (error is None), (error, whole_error)
    if error is None:
        assert whole == frames, "the frames depend on how the bytes were cut into reads"
    else:
        # A read that holds a bad frame gives none of its good ones (the session ends anyway).
        assert frames[: len(whole)] == whole, "the frames depend on how the bytes were cut"
    pos = 0
    for frame in frames:
        raw = encode(frame)
        original = stream[pos : pos + len(raw)]
        if raw != original:
            assert isinstance(frame, Open), f"{frame!r} re-encodes differently"
            again, again_error, _ = _decode([raw], limit)
            assert again == [frame] and again_error is None, f"{frame!r} does not round-trip"
        pos += len(raw)
    if error is None:
        # Every byte is in a frame or waits, as the start of one, for the rest of it.
        assert pos + buffered == len(stream), (pos, buffered, len(stream))
        assert buffered < HEADER_SIZE or stream[pos] != 0


def seeds() -> list[bytes]:
    """One of each frame, and a stream of them all."""
    frames: list[Frame] = [
        Open(1, "jupyter", 262144, (("client", "laptop"), ("path", "/api"))),
        OpenOk(1, 65536),
        OpenFail(3, 1, "unknown service 'x'"),
        Data(1, b"hello"),
        Window(1, 4096),
        Close(1),
        Reset(5, 7, "aborted"),
        GoAway(0, "bye"),
    ]
    out = [b"\x00" + encode(f) for f in frames]
    out.append(b"\x03" + encode_all(frames))
    return out


if __name__ == "__main__":
    main(TestOneInput)
