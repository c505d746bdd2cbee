"""Shared test pieces: a recording inner protocol, key sets, and a record splitter."""

from __future__ import annotations

import struct

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from nbbridge.crypto import AuthorizedKeys, PrivateKey


class Inner(Protocol):
    """The protocol inside the channel: records what reaches it, optionally echoes."""

    def __init__(self, echo: bool = False, expect: int | None = None) -> None:
        self.echo = echo
        self.expect = expect
        self.received = bytearray()
        self.made: Deferred[None] = Deferred()
        self.got_all: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)
        if (
            self.expect is not None
            and len(self.received) >= self.expect
            and not self.got_all.called
        ):
            self.got_all.callback(bytes(self.received))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.lost.callback(None)


class Keys:
    """A client and an agent key, and an authorized keys set admitting the client."""

    def __init__(self) -> None:
        self.client = PrivateKey.generate()
        self.agent = PrivateKey.generate()
        self.stranger = PrivateKey.generate()
        self.authorized = AuthorizedKeys.from_keys([(self.client.public_key, "test client")])


def split_records(data: bytes) -> list[bytes]:
    """Cut a byte stream into whole records (header included)."""
    out = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        out.append(data[: 4 + length])
        data = data[4 + length :]
    return out
