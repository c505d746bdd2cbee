"""Fuzz target: the Noise IK handshake of `nbbridge.crypto`, both roles, on arbitrary bytes.

A fresh Responder (the agent) is fed arbitrary first messages, an Initiator (the client) that
has sent its first message is fed arbitrary replies. Neither may raise: every failure is a
`SecureChannelError` event, the last one, after which the session reads nothing more; a
responder only ever answers with a HANDSHAKE or a REFUSAL record; `connection_lost` reports
an error or a clean end, never raises. The seeds hold a valid first message for the fuzz
responder's key, so the mutator starts past the handshake's cryptography.
"""

from __future__ import annotations

import hashlib
import struct

from ._harness import instrumented, main, split

with instrumented():
    from nbbridge.crypto import (
        HANDSHAKE,
        REFUSAL,
        HandshakeComplete,
        Initiator,
        PrivateKey,
        PublicKey,
        Responder,
        SecureChannelError,
    )


def _key(name: bytes) -> PrivateKey:
    """A fixed key, so that seeds made in one process suit the targets in another."""
    return PrivateKey(hashlib.sha256(b"nbbridge fuzz " + name).digest())


RESPONDER_KEY = _key(b"responder")
CLIENT_KEY = _key(b"client")
OTHER_KEY = _key(b"other")


def _authorizer(selector: int) -> object:
    """Admit the client's key, admit nobody, or fail while checking (by SELECTOR's bits 3-4)."""
    choice = (selector >> 3) & 3

    def check(key: PublicKey) -> bool:
        if choice == 3:
            raise RuntimeError("authorizer failed")
        return choice != 1 and key == CLIENT_KEY.public_key

    return check


def _records(data: bytes) -> list[int]:
    """The kinds of the complete records in DATA (what the responder wrote)."""
    kinds, pos = [], 0
    while pos + 5 <= len(data):
        length, kind = struct.unpack_from(">IB", data, pos)
        kinds.append(kind)
        pos += 4 + length
    assert pos == len(data), "a partial record was written"
    return kinds


def _drive(session: Responder | Initiator, pieces: list[bytes]) -> None:
    failed = False
    for piece in pieces:
        events = session.receive_data(piece)
        if failed:
            assert events == [], "a failed session went on reading"
        for i, event in enumerate(events):
            assert isinstance(event, bytes | HandshakeComplete | SecureChannelError), event
            if isinstance(event, SecureChannelError):
                assert i == len(events) - 1, "events after a failure"
                assert session.error is event and not session.established
                failed = True
        if isinstance(session, Responder):
            for kind in _records(session.data_to_send()):
                assert kind in (HANDSHAKE, REFUSAL), kind
    end = session.connection_lost()
    assert end is None or isinstance(end, SecureChannelError), end
    if failed:
        assert end is session.error


def TestOneInput(data: bytes) -> None:
    selector, pieces = split(data)
    if selector & 0x80:
        initiator = Initiator(CLIENT_KEY, RESPONDER_KEY.public_key)
        initiator.start()
        _drive(initiator, pieces)
    else:
        _drive(Responder(RESPONDER_KEY, _authorizer(selector)), pieces)  # type: ignore[arg-type]


def seeds() -> list[bytes]:
    """First messages from an authorized and an unknown client, alone and with more after."""
    out = []
    for key, selector in ((CLIENT_KEY, 0x00), (OTHER_KEY, 0x03), (CLIENT_KEY, 0x08)):
        first = Initiator(key, RESPONDER_KEY.public_key).start()
        out.append(bytes([selector]) + first)
        out.append(bytes([selector | 2]) + first + struct.pack(">IB", 21, 2) + bytes(20))
    out.append(b"\x80" + struct.pack(">IB", 49, HANDSHAKE) + bytes(48))
    out.append(b"\x81" + struct.pack(">IB", 6, REFUSAL) + b"nope!")
    return out


if __name__ == "__main__":
    main(TestOneInput)
