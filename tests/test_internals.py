"""The Autobahn and Twisted internals nbbridge relies on (all in `nbbridge._internals`) exist.

An upgrade of either that renames one fails here, by name, rather than somewhere on the data
path (a frame handed to the wrong code, a write delayed by a reactor turn).
"""

from __future__ import annotations

import socket
import subprocess
import sys

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import FrameHeader
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.tcp import Connection, Port
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nbbridge import _internals


class InternalsTests(SynchronousTestCase):
    def test_autobahn_protocol_methods(self) -> None:
        for name in _internals.AUTOBAHN_PROTOCOL_ATTRIBUTES:
            self.assertTrue(callable(getattr(WebSocketServerProtocol, name, None)), name)

    def test_autobahn_protocol_state(self) -> None:
        """The attributes Autobahn sets on a connected protocol, read and reset by us."""
        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        for name in (
            "closeHandshakeTimeoutCall",
            "autoPingTimeoutCall",
            "autoPingPending",
            "autoPingPendingCall",
            "autoPingRestartOnAnyTraffic",
            "data",
            "send_queue",
        ):
            self.assertTrue(hasattr(protocol, name), name)
        self.assertEqual(_internals.take_handshake_leftover(protocol), b"")
        self.assertFalse(_internals.auto_ping_pending(protocol))
        protocol.autoPingPending = b"x" * 12
        self.assertTrue(_internals.auto_ping_pending(protocol))
        self.assertFalse(_internals.autobahn_has_queued(protocol))

    def test_autobahn_factory_timer(self) -> None:
        for name in _internals.AUTOBAHN_FACTORY_ATTRIBUTES:
            self.assertTrue(hasattr(WebSocketServerFactory(), name), name)

    def test_autobahn_frame_header(self) -> None:
        header = FrameHeader(0x9, True, 0, 4, None)
        self.assertEqual((header.opcode, header.fin, header.length), (0x9, True, 4))

    def test_twisted_port_transport(self) -> None:
        port = Port(0, Factory(), reactor=MemoryReactor())
        for name in _internals.TWISTED_PORT_ATTRIBUTES:
            self.assertTrue(hasattr(port, name), name)
        self.assertTrue(_internals.take_at_accept(port, lambda skt, protocol: False))
        self.assertFalse(_internals.take_at_accept(object(), lambda skt, protocol: False))

    def test_twisted_connection_buffers(self) -> None:
        with socket.socket() as skt:
            connection = Connection(skt, None, MemoryReactor())
            for name in _internals.TWISTED_CONNECTION_ATTRIBUTES:
                self.assertTrue(hasattr(connection, name), name)
            self.assertTrue(hasattr(connection, "TLS"))


class LazyDebugFormattingTests(SynchronousTestCase):
    """Autobahn's debug-only arguments are formatted only when debug lines are emitted."""

    def setUp(self) -> None:
        for name in _internals.AUTOBAHN_MODULE_ATTRIBUTES:
            self.assertTrue(hasattr(autobahn_protocol, name), name)
        self.formatted: list[object] = []

        def counting(obj: object, *args: object, **kwargs: object) -> str:
            self.formatted.append(obj)
            return "formatted"

        # Stands for pprint.pformat; restored (with whatever replaced it) after the test.
        self.patch(autobahn_protocol, "pformat", counting)
        self.assertTrue(_internals.lazy_debug_formatting())
        self.assertTrue(_internals.lazy_debug_formatting())  # once is enough: no double wrap

    def connect(self) -> None:
        """A new server connection: Autobahn's ``_connectionMade`` logs its settings."""
        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_not_formatted_at_info(self) -> None:
        self.addCleanup(txaio.set_global_log_level, txaio.get_global_log_level())
        txaio.set_global_log_level("info")
        self.connect()
        self.assertEqual(self.formatted, [])
        self.assertEqual(autobahn_protocol.pformat([1]), _internals.NOT_FORMATTED)

    def test_installed_before_txaio_chose_twisted(self) -> None:
        """Installed before anything imported autobahn.twisted (which makes txaio pick its
        Twisted API), the check still works once it has: every connection calls it."""
        code = (
            "from nbbridge import _internals\n"
            "_internals.lazy_debug_formatting()\n"
            "import autobahn.twisted.websocket\n"
            "from autobahn.websocket import protocol\n"
            "print(protocol.pformat([1]))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        self.assertEqual(out.stdout.strip(), _internals.NOT_FORMATTED)

    def test_formatted_at_debug(self) -> None:
        self.addCleanup(txaio.set_global_log_level, txaio.get_global_log_level())
        txaio.set_global_log_level("debug")
        self.connect()
        self.assertEqual(len(self.formatted), 1)  # the connection's settings
        self.assertEqual(autobahn_protocol.pformat([1]), "formatted")


class LogTimeTests(SynchronousTestCase):
    """The log file's time prefix, formatted once a second, reads as Twisted's own."""

    def setUp(self) -> None:
        from twisted.logger import _file

        self.patch(_file, "formatTime", _file.formatTime)  # restored after the test
        self.real = _file.formatTime
        self.assertTrue(_internals.log_time_once_a_second())
        self.assertTrue(_internals.log_time_once_a_second())  # installed once, not wrapped twice
        self.cached = _file.formatTime
        self.assertIsNot(self.cached, self.real)

    def test_same_text_as_twisted(self) -> None:
        from twisted.logger import timeFormatRFC3339

        times = [1_700_000_000.0, 1_700_000_000.4, 1_700_000_000.999, 1_700_000_001.2, 3.5]
        for fmt in (timeFormatRFC3339, "%H:%M:%S.%f", "%Y/%W"):
            for when in times + times[::-1]:
                self.assertEqual(self.cached(when, fmt), self.real(when, fmt), (when, fmt))
        self.assertEqual(self.cached(None, timeFormatRFC3339), "-")
        self.assertEqual(self.cached(1.0, None, default="?"), "?")

    def test_used_by_the_log_file(self) -> None:
        """twistd's observer looks the name up on each line: the cached one is used."""
        import io

        from twisted.logger import textFileLogObserver

        calls: list[float] = []
        cached = self.cached

        def counted(when: float | None, fmt: str | None = None, default: str = "-") -> str:
            calls.append(when or 0.0)
            return cached(when, fmt, default)

        from twisted.logger import _file

        self.patch(_file, "formatTime", counted)
        out = io.StringIO()
        observer = textFileLogObserver(out)
        observer({"log_format": "hello", "log_time": 1_700_000_000.5, "log_system": "x"})
        self.assertEqual(calls, [1_700_000_000.5])
        self.assertIn("hello", out.getvalue())


class HTTPChannelTargetTests(SynchronousTestCase):
    def test_request_target_while_headers_arrive(self) -> None:
        """The datalab reads the target before the body (``request_target``)."""
        from twisted.web.http import HTTPChannel

        channel = HTTPChannel()
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"POST /datalab/start?ts=1&filename=a HTTP/1.1\r\nHost: x\r\n")
        self.assertEqual(_internals.request_target(channel), b"/datalab/start?ts=1&filename=a")
        for name in _internals.TWISTED_HTTP_CHANNEL_ATTRIBUTES:
            self.assertTrue(hasattr(channel, name), name)
        channel.connectionLost(Failure(ConnectionDone()))
