"""A daemon's process tuning (`nbbridge._daemon`): lean epoll dispatch and frozen start-up objects.

The dispatch is tested on a reactor of its own (a fresh ``EPollReactor``, never the one trial
runs on) with real TCP connections on 127.0.0.1: bytes are delivered as before, and a protocol
that raises is disconnected and its error logged, as Twisted's own dispatch does.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet import protocol
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nbbridge import _daemon
from nbbridge._internals import TWISTED_EPOLL_ATTRIBUTES, lean_dispatch


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise ValueError("the protocol failed")
        self.transport.write(data)


class _Client(protocol.Protocol):
    def __init__(self, message: bytes) -> None:
        self.message = message
        self.received = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.message)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.message):
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = reason


class LeanDispatchTests(SynchronousTestCase):
    def exchange(self, message: bytes) -> _Client:
        """Echo MESSAGE over real TCP through a lean-dispatching reactor of our own."""
        reactor: Any = EPollReactor()
        self.assertTrue(lean_dispatch(reactor))
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(_Echo), interface="127.0.0.1")
        client = _Client(message)
        factory = protocol.ClientFactory.forProtocol(lambda: client)
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        for _ in range(2000):
            if client.lost is not None:
                break
            reactor.iterate(0.01)
        port.stopListening()
        reactor.iterate(0)
        for reader in reactor.getReaders() + reactor.getWriters():
            reader.connectionLost(Failure(Exception("test over")))
        reactor.waker.connectionLost(None)
        reactor._poller.close()
        return client

    def test_bytes_delivered(self) -> None:
        client = self.exchange(b"x" * 100_000)
        self.assertEqual(client.received, b"x" * 100_000)

    def test_a_protocol_that_raises_is_disconnected_and_logged(self) -> None:
        client = self.exchange(b"boom")
        self.assertEqual(client.received, b"")
        self.assertIsNotNone(client.lost)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_other_reactors_untouched(self) -> None:
        reactor = MemoryReactor()
        self.assertFalse(lean_dispatch(reactor))

    def test_twisted_attributes_exist(self) -> None:
        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        for name in TWISTED_EPOLL_ATTRIBUTES:
            self.assertTrue(hasattr(reactor, name), name)


class FreezeTests(SynchronousTestCase):
    def test_start_up_objects_are_frozen(self) -> None:
        self.addCleanup(gc.unfreeze)
        before = object()
        _daemon.after_service()
        self.assertGreater(gc.get_freeze_count(), 0)
        # What existed is out of the collector's generations; what comes later is not.
        self.assertFalse(any(o is before for o in gc.get_objects()))
        after = [object()]
        self.assertTrue(any(o is after for o in gc.get_objects()))


class BeforeServiceTests(SynchronousTestCase):
    def test_tunes_the_process(self) -> None:
        calls: list[str] = []
        self.patch(_daemon, "tune_malloc", lambda: calls.append("malloc"))
        self.patch(_daemon, "lean_dispatch", lambda reactor: calls.append("dispatch"))
        self.patch(_daemon, "lazy_debug_formatting", lambda: calls.append("formatting"))
        self.patch(_daemon, "log_time_once_a_second", lambda: calls.append("log time"))
        _daemon.before_service(MemoryReactor())
        self.assertEqual(calls, ["malloc", "dispatch", "formatting", "log time"])
