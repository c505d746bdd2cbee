"""The frame codec: round trips, any chunking, and malformed input."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nbbridge.wire import (
    MAX_PAYLOAD,
    MAX_REASON,
    Ack,
    Close,
    Data,
    Frame,
    FrameDecoder,
    FrameError,
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
    encode,
    encode_all,
)

ids = st.integers(min_value=0, max_value=0xFFFFFFFF)
u16 = st.integers(min_value=0, max_value=0xFFFF)
u32 = st.integers(min_value=1, max_value=0xFFFFFFFF)
reasons = st.text(max_size=200)
names = st.text(min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255)
metadata = st.dictionaries(st.text(min_size=0, max_size=20), st.text(max_size=50), max_size=8).map(
    lambda d: tuple(d.items())
)

entries = st.lists(
    st.builds(
        ResumeEntry, ids, st.integers(0, 3), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)
    ),
    max_size=5,
).map(tuple)
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Open, ids, names, u32, metadata),
    st.builds(OpenOk, ids, u32),
    st.builds(OpenFail, ids, u16, reasons),
    st.builds(Data, ids, st.binary(max_size=3000)),
    st.builds(Window, ids, u32),
    st.builds(Close, ids),
    st.builds(Reset, ids, u16, reasons),
    st.builds(GoAway, u16, reasons),
    # Resumption (docs/resume.md)
    st.builds(Hello, st.integers(0, 255), st.integers(0, 0xFFFFFFFF)),
    st.builds(Ack, ids, st.integers(0, 2**64 - 1), st.booleans()),
    st.builds(
        Resume, st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32), entries
    ),
    st.builds(Resumed, u16, st.binary(min_size=32, max_size=32), entries, reasons),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


class RoundTripTests(SynchronousTestCase):
    @given(frames)
    def test_round_trip(self, frame: Frame) -> None:
        self.assertEqual(FrameDecoder().feed(encode(frame)), [frame])

    @given(st.lists(frames, max_size=20), st.lists(st.integers(min_value=0), max_size=30))
    def test_any_chunking_gives_same_frames(self, sequence: list[Frame], cuts: list[int]) -> None:
        data = encode_all(sequence)
        decoder = FrameDecoder()
        out: list[Frame] = []
        for chunk in chunked(data, cuts):
            out += decoder.feed(chunk)
        self.assertEqual(out, sequence)
        self.assertEqual(decoder.buffered, 0)

    def test_every_type_byte_by_byte(self) -> None:
        sequence: list[Frame] = [
            Open(1, "jupyter", 262144, {"client": "laptop"}),
            OpenOk(1, 262144),
            OpenFail(3, 1, "unknown service 'x'"),
            Data(1, b"hello"),
            Window(1, 5),
            Close(1),
            Reset(5, 7, "aborted"),
            GoAway(0, "bye"),
        ]
        decoder = FrameDecoder()
        data = encode_all(sequence)
        out: list[Frame] = []
        for i in range(len(data)):
            out += decoder.feed(data[i : i + 1])
        self.assertEqual(out, sequence)


class MalformedTests(SynchronousTestCase):
    @settings(max_examples=500)
    @given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=10))
    def test_arbitrary_bytes_raise_only_frame_error(self, data: bytes, cuts: list[int]) -> None:
        decoder = FrameDecoder()
        try:
            for chunk in chunked(data, cuts):
                decoder.feed(chunk)
        except FrameError:
            pass

    def assertRejects(self, data: bytes, message: str) -> None:
        with self.assertRaises(FrameError) as caught:
            FrameDecoder().feed(data)
        self.assertIn(message, str(caught.exception))

    def test_unknown_type(self) -> None:
        self.assertRejects(b"\x63\x00\x00\x00\x00\x01\x00\x00\x00\x00", "unknown frame type 99")

    def test_oversize(self) -> None:
        header = b"\x04\x00\x00\x00\x00\x01" + (MAX_PAYLOAD + 1).to_bytes(4, "big")
        self.assertRejects(header, "more than")

    def test_reserved_flags(self) -> None:
        self.assertRejects(b"\x06\x01\x00\x00\x00\x01\x00\x00\x00\x00", "reserved flags")

    def test_bad_utf8_service_name(self) -> None:
        body = b"\x00\x00\x10\x00" + b"\x02\xff\xfe" + b"\x00"
        frame = b"\x01\x00\x00\x00\x00\x01" + len(body).to_bytes(4, "big") + body
        self.assertRejects(frame, "bad UTF-8 in service name")

    def test_truncated_open(self) -> None:
        body = b"\x00\x00\x10\x00" + b"\x09ab"
        frame = b"\x01\x00\x00\x00\x00\x01" + len(body).to_bytes(4, "big") + body
        self.assertRejects(frame, "truncated")

    def test_zero_window(self) -> None:
        self.assertRejects(b"\x05\x00\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x00\x00", "WINDOW")

    def test_goaway_on_channel(self) -> None:
        frame = b"\x08\x00\x00\x00\x00\x03\x00\x00\x00\x02\x00\x00"
        self.assertRejects(frame, "GOAWAY on channel 3")

    def test_oversize_resumed_reason(self) -> None:
        # Found by fuzz/mux_codec.py: a RESUMED whose reason passed MAX_REASON decoded, and
        # re-encoded (cut) to other bytes; every other reason was already refused.
        long = encode(Resumed(0, bytes(32), (), "x" * 200))
        body = long[10:] + b"y" * MAX_REASON
        frame = long[:6] + len(body).to_bytes(4, "big") + body
        self.assertRejects(frame, "RESUMED reason is")

    def test_encoder_refuses_oversize_data(self) -> None:
        with self.assertRaises(FrameError):
            encode(Data(1, b"x" * (MAX_PAYLOAD + 1)))

    def test_encoder_refuses_empty_service(self) -> None:
        with self.assertRaises(FrameError):
            encode(Open(1, "", 10))
