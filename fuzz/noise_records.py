"""Fuzz target: the record layer of an established `nbbridge.crypto` session.

The input is a script for the peer: send a good TRANSPORT record of some plaintext, the same
with a byte flipped, a REFUSAL, a second HANDSHAKE, or raw bytes; the whole is then fed to
the session in reads of any size. The session must hand on exactly the plaintexts of the
good records that came before the first bad thing, then one `SecureChannelError`, and nothing
after it; it must never raise.

A handshake costs milliseconds, too slow to run one per input. So the session is built
established from a pair of cipher states made once by a real handshake (nonces reset for
each input), which reaches into `_Session`'s `_send`/`_recv`; `established_pair` asserts the
result is established, so a rename there fails this target loudly rather than quietly.
"""

from __future__ import annotations

import struct

from ._harness import instrumented, main, split

with instrumented():
    from nbbridge.crypto import (
        HANDSHAKE,
        REFUSAL,
        TRANSPORT,
        CipherState,
        HandshakeState,
        Initiator,
        Responder,
        SecureChannelError,
    )

from .noise_handshake import CLIENT_KEY, RESPONDER_KEY


def _handshake() -> tuple[tuple[CipherState, CipherState], tuple[CipherState, CipherState]]:
    """(initiator send, receive), (responder send, receive), from one real IK handshake."""
    initiator = HandshakeState(
        initiator=True,
        static=CLIENT_KEY.to_x25519(),
        remote_static=RESPONDER_KEY.public_key.raw,
    )
    responder = HandshakeState(initiator=False, static=RESPONDER_KEY.to_x25519())
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    return initiator.cipher_states(), responder.cipher_states()


_INITIATOR_STATES, _RESPONDER_STATES = _handshake()


def established_pair(
    to_responder: bool, max_records: int
) -> tuple[Initiator | Responder, CipherState]:
    """An established session, and the cipher state its peer encrypts with (nonces at 0)."""
    for state in _INITIATOR_STATES + _RESPONDER_STATES:
        state.set_nonce(0)
    session: Initiator | Responder
    if to_responder:
        session = Responder(RESPONDER_KEY, lambda key: True, max_records=max_records)
        session._send, session._recv = _RESPONDER_STATES
        session.remote_static = CLIENT_KEY.public_key
        peer = _INITIATOR_STATES[0]
    else:
        session = Initiator(CLIENT_KEY, RESPONDER_KEY.public_key, max_records=max_records)
        session._send, session._recv = _INITIATOR_STATES
        session.remote_static = RESPONDER_KEY.public_key
        peer = _RESPONDER_STATES[0]
    assert session.established, "cannot build an established session any more"
    return session, peer


def _record(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def _script(data: bytes, peer: CipherState) -> tuple[bytes, list[bytes], bool]:
    """The bytes the peer sends, the plaintexts that must come out, and whether all is good."""
    out, expected, good = bytearray(), [], True
    pos = 0
    while pos < len(data):
        op, size = data[pos] & 7, data[pos] >> 3
        chunk = data[pos + 1 : pos + 1 + size]
        pos += 1 + size
        if op <= 2:  # a good record, most often
            ciphertext = peer.encrypt_with_ad(b"", chunk)
            out += _record(TRANSPORT, ciphertext)
            if good and chunk:
                expected.append(chunk)
        elif op == 3:  # a forged or damaged record
            damaged = bytearray(peer.encrypt_with_ad(b"", chunk))
            damaged[size % len(damaged)] ^= 1 + (size & 0x7F)
            out += _record(TRANSPORT, bytes(damaged))
            good = False
        elif op == 4:
            out += _record(REFUSAL, chunk)
            good = False
        elif op == 5:
            out += _record(HANDSHAKE, chunk)
            good = False
        else:  # raw bytes, a bad length or kind most likely
            out += chunk
            if chunk:
                good = False
    return bytes(out), expected, good


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    selector = data[0]
    session, peer = established_pair(bool(selector & 0x80), 1 + (selector >> 4 & 7) * 3)
    stream, expected, good = _script(data[1:], peer)
    _, pieces = split(bytes([selector & 7]) + stream)
    plaintexts: list[bytes] = []
    errors: list[SecureChannelError] = []
    for piece in pieces:
        events = session.receive_data(piece)
        assert not errors or not events, "a failed session went on reading"
        for event in events:
            assert not errors, "events after a failure"
            if isinstance(event, SecureChannelError):
                errors.append(event)
            else:
                assert isinstance(event, bytes), event
                plaintexts.append(event)
    assert b"".join(plaintexts) == b"".join(expected)[: len(b"".join(plaintexts))]
    if not errors:
        if good and not session.has_partial_record():
            assert plaintexts == expected
        session.connection_lost()
    else:
        assert plaintexts == expected[: len(plaintexts)], "a plaintext was changed or reordered"
        assert session.connection_lost() is errors[0]


def seeds() -> list[bytes]:
    """Good records, then each kind of bad one after them."""
    good = bytes([5 << 3]) + b"hello" + bytes([3 << 3 | 1]) + b"abc"
    return [
        b"\x80" + good,
        b"\x00" + good,
        b"\xf3" + good * 4,
        b"\x81" + good + bytes([4 << 3 | 3]) + b"bad tag",
        b"\x02" + good + bytes([2 << 3 | 4]) + b"no",
        b"\x83" + good + bytes([2 << 3 | 5]) + b"hs",
        b"\x84" + good + bytes([5 << 3 | 6]) + b"\x00\x00\x00\x00\x09",
    ]


if __name__ == "__main__":
    main(TestOneInput)
