"""The Twisted internals nbbridge.web relies on (through nbbridge._internals) still exist."""

from __future__ import annotations

import socket

from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel

from nbbridge import _internals


class WebInternalsTests(TestCase):
    def test_write_buffer_fields(self) -> None:
        """`queued_bytes` reads FileDescriptor's write-buffer fields."""
        with socket.socket() as skt:
            connection = Connection(skt, None, MemoryReactor())
            for name in _internals.TWISTED_BUFFER_ATTRIBUTES:
                self.assertTrue(hasattr(connection, name), name)
            self.assertEqual(_internals.queued_bytes(connection), 0)

    def test_queued_bytes_unknown(self) -> None:
        self.assertIsNone(_internals.queued_bytes(object()))

    def test_channel_has_transport_and_timeout(self) -> None:
        """`take_over_connection` clears the channel's transport and its idle timeout."""
        channel = HTTPChannel()
        self.assertTrue(hasattr(channel, "transport"))
        self.assertTrue(callable(channel.setTimeout))
