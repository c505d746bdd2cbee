"""The data path's RFC 6455 frame reader and writer: round trips, violations, masking."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from nbbridge.wire import _masking
from nbbridge.wire._masking import mask_in_place
from nbbridge.wire.websocket import (
    MAX_CONTROL_PAYLOAD,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    FrameViolation,
    MessageTooBig,
    frame_header,
)

#: What a recorder saw: ("message", binary, payload) or ("control", opcode, payload).
Event = tuple[str, int | bool, bytes]


def naive_xor(data: bytes, key: bytes, offset: int = 0) -> bytes:
    """RFC 6455 §5.3 byte by byte: octet i is XORed with key[(offset + i) % 4]."""
    return bytes(b ^ key[(offset + i) % 4] for i, b in enumerate(data))


def chunked(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, key: bytes = b"", b0_extra: int = 0
) -> bytes:
    """A whole frame, masked with KEY if given; B0_EXTRA is ORed into the first byte."""
    header = bytearray(frame_header(opcode, len(payload), fin=fin, key=key))
    header[0] |= b0_extra
    out = header + payload
    if key:
        mask_in_place(out, len(header), key)
    return bytes(out)


class Recorder:
    """A FrameHandler that unmasks pieces (independently of mask_in_place) and reassembles."""

    def __init__(self) -> None:
        self.reader: FrameReader | None = None
        self.events: list[Event] = []
        self.pieces: list[bytes] = []
        self._message: bytearray | None = None
        self._binary = True
        self._next_offset = 0

    def on_data_piece(
        self, piece: memoryview, key: bytes, offset: int, first: bool, last: bool
    ) -> None:
        assert self.reader is not None
        # Offsets restart at 0 with each frame and run on without gaps within it.
        if offset != 0 and offset != self._next_offset:
            raise AssertionError(f"piece at offset {offset}, expected {self._next_offset}")
        self._next_offset = offset + len(piece)
        data = naive_xor(bytes(piece), key, offset) if key else bytes(piece)
        self.pieces.append(data)
        if first:
            if self._message is not None:
                raise AssertionError("a message started inside another")
            self._message = bytearray()
            self._binary = self.reader.binary
        elif self._message is None:
            raise AssertionError("a piece with no message started")
        self._message += data
        if last:
            self.events.append(("message", self._binary, bytes(self._message)))
            self._message = None

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        self.events.append(("control", opcode, payload))


def reader_for(*, masked: bool, max_message: int = 0) -> tuple[FrameReader, Recorder]:
    recorder = Recorder()
    reader = FrameReader(recorder, masked=masked, max_message=max_message)
    recorder.reader = reader
    return reader, recorder


# -- the round trip --------------------------------------------------------------------------

controls = st.tuples(st.sampled_from([OP_PING, OP_PONG]), st.binary(max_size=MAX_CONTROL_PAYLOAD))


@dataclass
class Message:
    binary: bool
    payload: bytes
    #: where the payload is cut into frames (first frame, then continuations)
    cuts: list[int]
    #: control frames sent after each frame (one list per frame; extra lists are ignored)
    after: list[list[tuple[int, bytes]]] = field(default_factory=list)


messages = st.builds(
    Message,
    st.booleans(),
    st.one_of(st.binary(max_size=40), st.binary(min_size=100, max_size=700)),
    st.lists(st.integers(min_value=0), max_size=6),
    st.lists(st.lists(controls, max_size=2), max_size=7),
)


def encode(
    sequence: list[Message], leading: list[tuple[int, bytes]], masked: bool, rnd: random.Random
) -> tuple[bytes, list[Event]]:
    """The wire bytes of SEQUENCE and the events a reader must report for them, in order."""
    out = bytearray()
    expected: list[Event] = []

    def put(opcode: int, payload: bytes, fin: bool) -> None:
        key = rnd.randbytes(4) if masked else b""
        out.extend(frame(opcode, payload, fin=fin, key=key))

    for opcode, payload in leading:
        put(opcode, payload, True)
        expected.append(("control", opcode, payload))
    for message in sequence:
        # Cut points may repeat: that makes empty fragments, which are legal too.
        points = sorted(c % (len(message.payload) + 1) for c in message.cuts)
        bounds = [0, *points, len(message.payload)]
        fragments = [message.payload[a:b] for a, b in itertools.pairwise(bounds)]
        trailing: list[Event] = []
        for i, fragment in enumerate(fragments):
            last = i == len(fragments) - 1
            kind = OP_BINARY if message.binary else OP_TEXT
            opcode = kind if i == 0 else OP_CONTINUATION
            put(opcode, fragment, last)
            after = message.after[i] if i < len(message.after) else []
            for control, payload in after:
                put(control, payload, True)
                (trailing if last else expected).append(("control", control, payload))
        expected.append(("message", message.binary, message.payload))
        expected.extend(trailing)
    return bytes(out), expected


class RoundTripTests(SynchronousTestCase):
    """Messages, fragmented at random with control frames between fragments, come out whole."""

    @settings(max_examples=300, deadline=None)
    @given(
        sequence=st.lists(messages, max_size=6),
        leading=st.lists(controls, max_size=2),
        masked=st.booleans(),
        seed=st.integers(),
        cuts=st.lists(st.integers(min_value=0), max_size=40),
        byte_by_byte=st.booleans(),
    )
    def test_any_fragmentation_and_chunking(
        self,
        sequence: list[Message],
        leading: list[tuple[int, bytes]],
        masked: bool,
        seed: int,
        cuts: list[int],
        byte_by_byte: bool,
    ) -> None:
        data, expected = encode(sequence, leading, masked, random.Random(seed))
        reader, recorder = reader_for(masked=masked)
        chunks = chunked(data, range(len(data)) if byte_by_byte else cuts)
        for chunk in chunks:
            reader.feed(chunk)
        self.assertEqual(recorder.events, expected)

    def test_large_frames_with_16_and_64_bit_lengths(self) -> None:
        rnd = random.Random(1)
        for masked in (False, True):
            sequence = [
                Message(True, rnd.randbytes(70_000), []),
                Message(False, rnd.randbytes(65_535), [126, 126 + 65_535 - 126]),
                Message(True, rnd.randbytes(200_000), [1, 65_536, 65_537], [[(OP_PING, b"p")]]),
            ]
            data, expected = encode(sequence, [], masked, rnd)
            for cuts in (
                [],
                [1, 2, 3, 9, 14, 65_000, 65_550, 140_000],
                list(range(0, 400_000, 4093)),
            ):
                reader, recorder = reader_for(masked=masked)
                for chunk in chunked(data, cuts):
                    reader.feed(chunk)
                self.assertEqual(recorder.events, expected)

    def test_close_frame_is_a_control_frame(self) -> None:
        reader, recorder = reader_for(masked=True)
        payload = (1000).to_bytes(2, "big") + b"bye"
        reader.feed(frame(OP_CLOSE, payload, key=b"\x01\x02\x03\x04"))
        self.assertEqual(recorder.events, [("control", OP_CLOSE, payload)])

    def test_empty_messages_and_empty_fragments(self) -> None:
        reader, recorder = reader_for(masked=False)
        reader.feed(frame(OP_BINARY, b""))
        reader.feed(frame(OP_TEXT, b"", fin=False) + frame(OP_CONTINUATION, b"", fin=False))
        reader.feed(frame(OP_PING, b"") + frame(OP_CONTINUATION, b"a", fin=False))
        reader.feed(frame(OP_CONTINUATION, b""))
        self.assertEqual(
            recorder.events,
            [("message", True, b""), ("control", OP_PING, b""), ("message", False, b"a")],
        )

    def test_message_exactly_at_the_limit(self) -> None:
        reader, recorder = reader_for(masked=False, max_message=100)
        reader.feed(frame(OP_BINARY, b"a" * 60, fin=False) + frame(OP_CONTINUATION, b"b" * 40))
        reader.feed(frame(OP_BINARY, b"c" * 100))
        self.assertEqual(
            recorder.events,
            [("message", True, b"a" * 60 + b"b" * 40), ("message", True, b"c" * 100)],
        )


# -- violations ------------------------------------------------------------------------------

KEY = b"\x11\x22\x33\x44"
#: A valid frame after the bad one: the reader must ignore it.
AFTER = {True: frame(OP_BINARY, b"after", key=KEY), False: frame(OP_BINARY, b"after")}


class ViolationTests(SynchronousTestCase):
    """Each rule a receiver enforces: FrameViolation (1002), and nothing read after it."""

    def assert_violation(
        self,
        data: bytes,
        reason: str,
        *,
        masked: bool = False,
        prefix: bytes = b"",
        code: int = 1002,
        max_message: int = 0,
        kind: type[FrameViolation] = FrameViolation,
    ) -> tuple[Recorder, FrameViolation]:
        """DATA (after a valid PREFIX) fails with REASON, fed whole and fed byte by byte."""
        results = []
        for byte_by_byte in (False, True):
            reader, recorder = reader_for(masked=masked, max_message=max_message)
            reader.feed(prefix)
            before = list(recorder.pieces)
            chunks = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
            with self.assertRaises(kind) as caught:
                for chunk in chunks:
                    reader.feed(chunk)
            error = caught.exception
            self.assertEqual(error.code, code)
            self.assertIn(reason, str(error))
            # The bad frame's payload was never handed on.
            self.assertEqual(recorder.pieces, before)
            # And the reader ignores whatever comes next.
            events = list(recorder.events)
            reader.feed(AFTER[masked] + frame(OP_PING, b"x", key=KEY if masked else b""))
            self.assertEqual(recorder.events, events)
            self.assertEqual(recorder.pieces, before)
            results.append((recorder, error))
        return results[0]

    def test_reserved_bits(self) -> None:
        for rsv in (0x40, 0x20, 0x10, 0x70):
            self.assert_violation(frame(OP_BINARY, b"hi", b0_extra=rsv), "reserved bits set")
            self.assert_violation(
                frame(OP_PING, b"hi", key=KEY, b0_extra=rsv), "reserved bits set", masked=True
            )

    def test_unknown_opcodes(self) -> None:
        for opcode in (3, 11):
            self.assert_violation(frame(opcode, b"hi"), f"unknown opcode {opcode}")
            self.assert_violation(frame(opcode, key=KEY), f"unknown opcode {opcode}", masked=True)

    def test_unmasked_frame_to_a_masked_reader(self) -> None:
        self.assert_violation(frame(OP_BINARY, b"hi"), "unmasked frame from a client", masked=True)
        self.assert_violation(frame(OP_PING, b"hi"), "unmasked frame from a client", masked=True)

    def test_masked_frame_to_an_unmasked_reader(self) -> None:
        self.assert_violation(frame(OP_BINARY, b"hi", key=KEY), "masked frame from a server")
        self.assert_violation(frame(OP_PONG, key=KEY), "masked frame from a server")

    def test_fragmented_control_frame(self) -> None:
        for opcode in (OP_PING, OP_PONG, OP_CLOSE):
            self.assert_violation(frame(opcode, b"hi", fin=False), "fragmented control frame")

    def test_control_frame_of_126_bytes(self) -> None:
        self.assert_violation(frame(OP_PING, b"x" * 126), "control frame of 126 bytes")
        self.assert_violation(
            frame(OP_CLOSE, b"x" * 126, key=KEY), "control frame of 126 bytes", masked=True
        )

    def test_continuation_without_a_message(self) -> None:
        self.assert_violation(frame(OP_CONTINUATION, b"hi"), "continuation frame with no message")
        # Nor after a message has ended.
        self.assert_violation(
            frame(OP_CONTINUATION, b"hi"),
            "continuation frame with no message",
            prefix=frame(OP_BINARY, b"a", fin=False) + frame(OP_CONTINUATION, b"b"),
        )

    def test_new_message_inside_a_fragmented_one(self) -> None:
        for opcode in (OP_BINARY, OP_TEXT):
            recorder, _ = self.assert_violation(
                frame(opcode, b"new"),
                "new data message before the previous one ended",
                prefix=frame(OP_BINARY, b"old", fin=False) + frame(OP_PING, b"p"),
            )
            self.assertEqual(recorder.pieces, [b"old"])

    def test_64_bit_length_with_top_bit_set(self) -> None:
        for length in (1 << 63, (1 << 64) - 1):
            data = bytes((0x80 | OP_BINARY, 127)) + length.to_bytes(8, "big")
            self.assert_violation(data, "most significant bit")
            self.assert_violation(
                data[:1] + bytes((0x80 | 127,)) + data[2:] + KEY, "most", masked=True
            )

    def test_lengths_not_in_their_shortest_form(self) -> None:
        # RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length".
        self.assert_violation(b"\x82\x7e\x00\x05hello", "not in its shortest form")
        self.assert_violation(
            b"\x82\x7f" + (125).to_bytes(8, "big") + b"x" * 125, "not in its shortest form"
        )
        self.assert_violation(b"\x82\x7f" + (0xFFFF).to_bytes(8, "big"), "not in its shortest form")

    def test_close_frame_with_a_one_byte_body(self) -> None:
        self.assert_violation(frame(OP_CLOSE, b"\x03"), "1-byte body")

    def assert_too_big(self, data: bytes, *, masked: bool = False, prefix: bytes = b"") -> Recorder:
        """DATA takes a message to 101 bytes, past a limit of 100: MessageTooBig (1009)."""
        recorder, error = self.assert_violation(
            data,
            "message of 101 bytes or more exceeds the limit of 100 bytes",
            masked=masked,
            prefix=prefix,
            code=1009,
            max_message=100,
            kind=MessageTooBig,
        )
        assert isinstance(error, MessageTooBig)
        self.assertEqual((error.size, error.limit), (101, 100))
        return recorder

    def test_single_frame_over_the_limit(self) -> None:
        for masked in (False, True):
            key = KEY if masked else b""
            self.assert_too_big(frame(OP_BINARY, b"x" * 101, key=key), masked=masked)
            # Only the header is needed to know: the payload need not have arrived.
            reader, recorder = reader_for(masked=masked, max_message=100)
            with self.assertRaises(MessageTooBig):
                reader.feed(frame_header(OP_BINARY, 1 << 40, key=key))
            self.assertEqual(recorder.pieces, [])

    def test_fragments_over_the_limit(self) -> None:
        """Fragments summing past the limit: nothing of the fragment that crosses it is read.

        The fragments before it were handed on already: a reader that does not reassemble
        cannot know a fragmented message's size before its last frame header.
        """
        prefix = frame(OP_BINARY, b"a" * 60, fin=False) + frame(OP_PING, b"p")
        prefix += frame(OP_CONTINUATION, b"b" * 30, fin=False)
        recorder = self.assert_too_big(frame(OP_CONTINUATION, b"c" * 11), prefix=prefix)
        self.assertEqual(recorder.pieces, [b"a" * 60, b"b" * 30])
        self.assertNotIn(b"c" * 11, b"".join(recorder.pieces))

    def test_limit_counts_each_message_afresh(self) -> None:
        reader, recorder = reader_for(masked=False, max_message=10)
        for _ in range(5):
            reader.feed(frame(OP_BINARY, b"x" * 5, fin=False) + frame(OP_CONTINUATION, b"y" * 5))
        self.assertEqual(len(recorder.events), 5)


# -- frame_header ----------------------------------------------------------------------------


class FrameHeaderTests(SynchronousTestCase):
    """Payload lengths in the 7-bit, 16-bit and 64-bit forms of RFC 6455 §5.2."""

    def test_lengths(self) -> None:
        cases = {
            0: b"\x82\x00",
            125: b"\x82\x7d",
            126: b"\x82\x7e\x00\x7e",
            65535: b"\x82\x7e\xff\xff",
            65536: b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00",
            (1 << 63) - 1: b"\x82\x7f\x7f\xff\xff\xff\xff\xff\xff\xff",
        }
        for length, header in cases.items():
            self.assertEqual(frame_header(OP_BINARY, length), header, length)

    def test_fin_opcode_and_key(self) -> None:
        self.assertEqual(frame_header(OP_TEXT, 5, fin=False), b"\x01\x05")
        self.assertEqual(frame_header(OP_CONTINUATION, 0), b"\x80\x00")
        self.assertEqual(frame_header(OP_PING, 3, key=KEY), b"\x89\x83" + KEY)
        self.assertEqual(frame_header(OP_BINARY, 126, key=KEY), b"\x82\xfe\x00\x7e" + KEY)
        self.assertEqual(
            frame_header(OP_BINARY, 65536, fin=False, key=KEY),
            b"\x02\xff\x00\x00\x00\x00\x00\x01\x00\x00" + KEY,
        )

    def test_reader_reads_every_length_form(self) -> None:
        for masked in (False, True):
            for length in (0, 125, 126, 65535, 65536):
                payload = os.urandom(length)
                reader, recorder = reader_for(masked=masked)
                reader.feed(frame(OP_BINARY, payload, key=KEY if masked else b""))
                self.assertEqual(recorder.events, [("message", True, payload)])


# -- mask_in_place ---------------------------------------------------------------------------


def naive_mask(buf: bytes, start: int, key: bytes, offset: int) -> bytes:
    return buf[:start] + naive_xor(buf[start:], key, offset)


class MaskingTests(SynchronousTestCase):
    """mask_in_place XORs buf[start:] with the key, rotated by offset, natively or in Python."""

    def check(self, data: bytes, key: bytes, start: int, offset: int) -> None:
        buf = bytearray(data)
        mask_in_place(buf, start, key, offset)
        self.assertEqual(bytes(buf), naive_mask(data, start, key, offset))
        # Masking twice gives the data back.
        mask_in_place(buf, start, key, offset)
        self.assertEqual(bytes(buf), data)

    @settings(max_examples=300)
    @given(
        st.binary(max_size=300),
        st.binary(min_size=4, max_size=4),
        st.integers(min_value=0, max_value=310),
        st.integers(min_value=0, max_value=1 << 20),
    )
    def test_native(self, data: bytes, key: bytes, start: int, offset: int) -> None:
        if not _masking.NATIVE:
            raise SkipTest("Autobahn's NVX helper is not built here")
        self.check(data, key, start, offset)

    @settings(max_examples=300)
    @given(
        st.binary(max_size=300),
        st.binary(min_size=4, max_size=4),
        st.integers(min_value=0, max_value=310),
        st.integers(min_value=0, max_value=1 << 20),
    )
    def test_python_fallback(self, data: bytes, key: bytes, start: int, offset: int) -> None:
        self.patch(_masking, "_nvx", None)
        self.check(data, key, start, offset)

    def test_large_buffers_agree(self) -> None:
        data = os.urandom(100_003)
        cases = [(0, 0), (1, 0), (3, 5), (17, 2), (4097, 7), (100_000, 3), (100_003, 1)]
        native = []
        for start, offset in cases:
            buf = bytearray(data)
            mask_in_place(buf, start, KEY, offset)
            native.append(buf)
        self.patch(_masking, "_nvx", None)
        for (start, offset), masked in zip(cases, native, strict=True):
            fallback = bytearray(data)
            mask_in_place(fallback, start, KEY, offset)
            self.assertEqual(masked, fallback)
            self.assertEqual(bytes(masked[:start]), data[:start])
            head = data[start : start + 64]
            self.assertEqual(bytes(masked[start : start + 64]), naive_xor(head, KEY, offset))

    def test_pieces_masked_with_offsets_equal_the_whole(self) -> None:
        """Masking a payload piece by piece with running offsets equals masking it at once."""
        for native in (True, False):
            if not native:
                self.patch(_masking, "_nvx", None)
            data = os.urandom(1000)
            whole = bytearray(data)
            mask_in_place(whole, 0, KEY)
            pieces = bytearray()
            for a, b in itertools.pairwise([0, 1, 2, 7, 64, 65, 333, 999, 1000]):
                piece = bytearray(data[a:b])
                mask_in_place(piece, 0, KEY, a)
                pieces += piece
            self.assertEqual(pieces, whole)
