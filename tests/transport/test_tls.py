"""client_endpoint against a real TLS server on 127.0.0.1, with a CA made by the test.

Proves that the right CA and host name connect, and that each way of getting TLS wrong
fails the connect attempt with a sentence a user can act on, before the application
protocol ever sees the connection.
"""

from __future__ import annotations

import os
from typing import cast

from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IReactorPluggableNameResolver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from nbbridge.transport import (
    RelayCertificateError,
    RelayConnectError,
    _trust,
    choose_trust_root,
    client_endpoint,
    explain_connect_error,
    load_trust_root,
    parse_relay_url,
)
from tests._loopback import Collector, Echo, serve

from ._certs import CA, write_ca, write_server_files


class TLSEndpointTests(TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    async def _server(self, names: tuple[str, ...] = ("localhost", "127.0.0.1"), **kw: object):
        files = write_server_files(self.dir, names, **kw)  # type: ignore[arg-type]
        port = await serve(self, files.ssl_endpoint(), Factory.forProtocol(Echo))
        return files, port

    async def _fails(self, url: str, ca_file: str | None) -> str:
        """Connect and expect failure; return the message. The app must never be connected."""
        built: list[Collector] = []

        def build() -> Collector:
            built.append(Collector())
            return built[-1]

        endpoint = client_endpoint(reactor, parse_relay_url(url, insecure=False), ca_file)
        f = await self.assertFailure(
            endpoint.connect(Factory.forProtocol(build)), RelayConnectError
        )
        self.assertFalse(any(c.made for c in built), "application saw an unverified connection")
        self.assertEqual(explain_connect_error(Failure(f)), str(f))
        return str(f)

    async def test_right_ca_and_host_exchanges_bytes(self) -> None:
        files, port = await self._server()
        for host in ("localhost", "127.0.0.1"):
            relay = parse_relay_url(f"wss://{host}:{port}", insecure=False)
            collector = Collector()
            factory = Factory.forProtocol(Collector)
            factory.buildProtocol = lambda addr, c=collector: c  # type: ignore[method-assign, misc]
            protocol = await client_endpoint(reactor, relay, files.ca).connect(factory)
            self.assertIs(protocol, collector)
            self.assertTrue(collector.made)
            message = b"through TLS " * 1000
            collector.transport.write(message)  # type: ignore[union-attr]
            self.assertEqual(await collector.receive(len(message)), message)
            # The application protocol talks to the TLS transport directly (the gate is gone).
            self.assertIsNotNone(collector.transport.getPeerCertificate())  # type: ignore[union-attr]
            collector.transport.loseConnection()  # type: ignore[union-attr]
            await collector.lost

    async def test_wrong_host_name(self) -> None:
        files, port = await self._server(names=("relay.example.test",))
        message = await self._fails(f"wss://localhost:{port}", files.ca)
        self.assertEqual(
            message,
            f"TLS: certificate from 127.0.0.1:{port} is not valid for host 'localhost' "
            "(it is for: relay.example.test)",
        )

    async def test_wrong_ip_address(self) -> None:
        files, port = await self._server(names=("localhost", "127.0.0.2"))
        message = await self._fails(f"wss://127.0.0.1:{port}", files.ca)
        self.assertIn("is not valid for host '127.0.0.1'", message)
        self.assertIn("(it is for: localhost, 127.0.0.2)", message)

    async def test_unknown_ca(self) -> None:
        _, port = await self._server()
        other_ca = write_ca(CA.create("some other CA"), os.path.join(self.dir, "other.pem"))
        message = await self._fails(f"wss://localhost:{port}", other_ca)
        self.assertEqual(
            message,
            f"TLS: certificate of localhost (issued by 'nbbridge test CA') is not signed by "
            f"a CA in {other_ca}",
        )

    async def test_system_store_does_not_know_test_ca(self) -> None:
        _, port = await self._server()
        message = await self._fails(f"wss://localhost:{port}", None)
        self.assertEqual(
            message,
            "TLS: certificate of localhost (issued by 'nbbridge test CA') is not signed by "
            "a trusted CA (use --ca FILE?)",
        )

    async def test_certificate_refusals_are_told_apart_from_outages(self) -> None:
        """An untrusted, expired or misnamed certificate is a RelayCertificateError.

        The tunnel fails waiting connections at once on those (retrying soon will not cure
        them), and only on those: a refused TCP connection or a non-TLS port is an outage.
        """
        files, port = await self._server(names=("relay.example.test",))
        other_ca = write_ca(CA.create("some other CA"), os.path.join(self.dir, "other.pem"))
        expired_dir = os.path.join(self.dir, "expired")
        os.makedirs(expired_dir)
        expired = write_server_files(expired_dir, ("localhost",), expired=True)
        expired_port = await serve(self, expired.ssl_endpoint(), Factory.forProtocol(Echo))
        for url, ca in [
            (f"wss://localhost:{port}", files.ca),  # a certificate for another host
            (f"wss://localhost:{port}", other_ca),  # signed by a CA we do not trust
            (f"wss://localhost:{expired_port}", expired.ca),  # expired
        ]:
            relay = parse_relay_url(url, insecure=False)
            await self.assertFailure(
                client_endpoint(reactor, relay, ca).connect(Factory.forProtocol(Collector)),
                RelayCertificateError,
            )
        plain = await serve(self, "tcp:0:interface=127.0.0.1", Factory.forProtocol(_Hello))
        refused = await _free_port()
        for url in (f"wss://127.0.0.1:{plain}", f"wss://127.0.0.1:{refused}"):
            relay = parse_relay_url(url, insecure=False)
            f = await self.assertFailure(
                client_endpoint(reactor, relay, files.ca).connect(Factory.forProtocol(Collector)),
                RelayConnectError,
            )
            self.assertNotIsInstance(f, RelayCertificateError)

    async def test_empty_system_store_falls_back_to_certifi(self) -> None:
        """Without --ca, a system store that trusts nothing (a stock Mac) means certifi's CAs.

        What the platform store loads is injected: here it knows no CA at all, and the
        "certifi bundle" is the test CA, so the test server is trusted only through the
        fallback; with the system store of this machine it is not.
        """
        files, port = await self._server()
        relay = parse_relay_url(f"wss://localhost:{port}", insecure=False)
        empty = trustRootFromCertificates([])
        self.patch(_trust, "default_trust_root", lambda: choose_trust_root(empty, files.ca))
        protocol = await client_endpoint(reactor, relay, None).connect(
            Factory.forProtocol(Collector)
        )
        self.assertTrue(protocol.made)  # type: ignore[attr-defined]
        protocol.transport.loseConnection()  # type: ignore[attr-defined]
        await protocol.lost  # type: ignore[attr-defined]

    async def test_expired_certificate(self) -> None:
        files, port = await self._server(expired=True)
        message = await self._fails(f"wss://localhost:{port}", files.ca)
        self.assertRegex(message, r"^TLS: certificate of localhost expired on \d{4}-\d\d-\d\d")

    async def test_plain_tcp_server(self) -> None:
        port = await serve(self, "tcp:0:interface=127.0.0.1", Factory.forProtocol(_Hello))
        files = write_server_files(self.dir)
        message = await self._fails(f"wss://127.0.0.1:{port}", files.ca)
        self.assertIn(f"TLS handshake with 127.0.0.1:{port} failed", message)

    async def test_connection_refused(self) -> None:
        port = await _free_port()
        message = await self._fails(f"ws://127.0.0.1:{port}", None)
        self.assertEqual(message, f"connection refused by 127.0.0.1:{port}")
        message = await self._fails(f"wss://127.0.0.1:{port}", None)
        self.assertEqual(message, f"connection refused by 127.0.0.1:{port}")

    async def test_server_closes_during_handshake(self) -> None:
        port = await serve(self, "tcp:0:interface=127.0.0.1", Factory.forProtocol(_Closer))
        message = await self._fails(f"wss://127.0.0.1:{port}", None)
        self.assertEqual(
            message, f"127.0.0.1:{port} closed the connection during the TLS handshake"
        )

    async def test_plain_ws_to_loopback(self) -> None:
        port = await serve(self, "tcp:0:interface=127.0.0.1", Factory.forProtocol(Echo))
        relay = parse_relay_url(f"ws://127.0.0.1:{port}", insecure=False)
        collector = await client_endpoint(reactor, relay, None).connect(
            Factory.forProtocol(Collector)
        )
        collector.transport.write(b"plain")  # type: ignore[attr-defined]
        self.assertEqual(await collector.receive(5), b"plain")  # type: ignore[attr-defined]
        collector.transport.loseConnection()  # type: ignore[attr-defined]
        await collector.lost  # type: ignore[attr-defined]

    async def test_cancel_during_handshake(self) -> None:
        # A server that accepts TCP and never answers the ClientHello.
        accepted: Deferred[None] = Deferred()
        factory = Factory.forProtocol(lambda: _Silent(accepted))
        port = await serve(self, "tcp:0:interface=127.0.0.1", factory)
        relay = parse_relay_url(f"wss://127.0.0.1:{port}", insecure=False)
        d = client_endpoint(reactor, relay, None).connect(Factory.forProtocol(Collector))
        await accepted
        d.cancel()
        await self.assertFailure(d, CancelledError)
        # serve()'s clean-up then waits until the server saw the connection closed.

    async def test_cancel_before_connected(self) -> None:
        port = await serve(self, "tcp:0:interface=127.0.0.1", Factory.forProtocol(Echo))
        for scheme in ("ws", "wss"):
            relay = parse_relay_url(f"{scheme}://localhost:{port}", insecure=False)
            d = client_endpoint(reactor, relay, None).connect(Factory.forProtocol(Collector))
            d.cancel()
            await self.assertFailure(d, CancelledError)

    async def test_failures_logged_when_asked(self) -> None:
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        port = await _free_port()
        relay = parse_relay_url(f"ws://127.0.0.1:{port}", insecure=False)
        endpoint = client_endpoint(reactor, relay, None, log_failures=True)
        await self.assertFailure(
            endpoint.connect(Factory.forProtocol(Collector)), RelayConnectError
        )
        texts = [str(e.get("why")) for e in events if "why" in e]
        self.assertEqual(texts, [f"connection refused by 127.0.0.1:{port}"])


class _Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class _Silent(Protocol):
    def __init__(self, accepted: Deferred[None]) -> None:
        self._accepted = accepted

    def connectionMade(self) -> None:
        self._accepted.callback(None)


class _Closer(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


async def _free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
    number: int = port.getHost().port  # type: ignore[attr-defined]
    await port.stopListening()
    return number


class TrustRootTests(SynchronousTestCase):
    def test_missing_file(self) -> None:
        e = self.assertRaises(ValueError, load_trust_root, "/nonexistent/ca.pem")
        self.assertEqual(
            str(e), "--ca /nonexistent/ca.pem: cannot read it: No such file or directory"
        )

    def test_not_pem(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("hello\n")
        e = self.assertRaises(ValueError, load_trust_root, path)
        self.assertEqual(str(e), f"--ca {path}: no PEM certificate found in it")

    def test_a_store_that_trusts_some_root_is_kept(self) -> None:
        """The system store is used as it is when it trusts any root of the bundle."""
        path = write_ca(CA.create("one"), self.mktemp())
        with open(path, "rb") as f:
            knows_it = trustRootFromCertificates([Certificate.loadPEM(f.read())])
        self.assertIs(choose_trust_root(knows_it, path), knows_it)
        other = write_ca(CA.create("two"), self.mktemp())
        fallback = choose_trust_root(knows_it, other)
        self.assertIsNot(fallback, knows_it)

    def test_default_is_decided_once(self) -> None:
        self.assertIs(_trust.default_trust_root(), load_trust_root(None))
        self.assertIs(load_trust_root(None), load_trust_root(None))

    def test_several_cas_in_one_file(self) -> None:
        path = self.mktemp()
        write_ca(CA.create("one"), path)
        with open(path, "ab") as f, open(write_ca(CA.create("two"), path + ".2"), "rb") as g:
            f.write(g.read())
        self.assertIsNotNone(load_trust_root(path))


class ExplainTests(SynchronousTestCase):
    """explain_connect_error on raw failures, without the endpoint's context."""

    def test_raw_errors(self) -> None:
        cases = [
            (ConnectionRefusedError(), "connection refused"),
            (
                SSL.Error([("SSL routines", "", "certificate verify failed")]),
                "TLS: certificate not signed by a trusted CA (use --ca FILE?)",
            ),
            (
                VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("wrong.example"))]),
                "TLS: certificate is not valid for host 'wrong.example'",
            ),
            (RelayConnectError("as given"), "as given"),
            (KeyError("x"), "KeyError: 'x'"),
        ]
        for error, text in cases:
            self.assertEqual(explain_connect_error(Failure(error)), text)

    def test_with_context(self) -> None:
        from twisted.internet.error import DNSLookupError, TimeoutError

        from nbbridge.transport._explain import ConnectContext, describe

        context = ConnectContext("relay.example.com", 443)
        self.assertEqual(
            describe(DNSLookupError("x"), context), "cannot resolve host name 'relay.example.com'"
        )
        self.assertEqual(
            describe(TimeoutError(), context), "connection to relay.example.com:443 timed out"
        )


class HandshakeTimeoutTests(SynchronousTestCase):
    """A server that accepts TCP but never finishes the TLS handshake must not hang us."""

    def test_times_out(self) -> None:
        from twisted.internet.error import ConnectionAborted
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from nbbridge.transport import HANDSHAKE_TIMEOUT
        from nbbridge.transport._explain import ConnectContext
        from nbbridge.transport._tls import _GateFactory

        class FakeTLS(StringTransport):
            aborted = False

            def getHandle(self) -> None:
                return None

            def abortConnection(self) -> None:
                self.aborted = True

        clock = Clock()
        gates = _GateFactory(
            Factory.forProtocol(Collector),
            clock,
            lambda peer, cert: ConnectContext("relay.example.com", 443, peer),
        )
        gate = gates.buildProtocol(None)  # type: ignore[arg-type]
        tls = FakeTLS()
        gate.makeConnection(tls)  # type: ignore[union-attr]
        clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(tls.aborted)
        clock.advance(0.1)
        self.assertTrue(tls.aborted)
        gate.connectionLost(Failure(ConnectionAborted()))  # type: ignore[union-attr]
        f = self.failureResultOf(gate.verified, RelayConnectError)  # type: ignore[union-attr]
        self.assertEqual(str(f.value), "TLS handshake with relay.example.com:443 timed out")
        self.assertEqual(clock.getDelayedCalls(), [])


class AddressLiteralTests(SynchronousTestCase):
    """A relay given by address connects at once; only a name goes to the resolver (a
    getaddrinfo in Twisted's thread pool and back, two thread switches per connection)."""

    def connect(self, url: str) -> MemoryReactorClock:
        resolved: list[str] = []

        class Resolver:
            def resolveHostName(self, receiver: object, hostName: str, **kw: object) -> object:
                resolved.append(hostName)
                return receiver

        @implementer(IReactorPluggableNameResolver)
        class Reactor(MemoryReactorClock):
            def installNameResolver(self, resolver: object) -> object:
                raise NotImplementedError

        reactor = Reactor()
        # (Newer MemoryReactors bring a resolver of their own; this one replaces it.)
        reactor.nameResolver = Resolver()  # type: ignore[assignment]
        self.resolved = resolved
        client_endpoint(reactor, parse_relay_url(url), None).connect(Factory.forProtocol(Protocol))
        return reactor

    def test_addresses_connect_without_resolving(self) -> None:
        for url, host in (("ws://127.0.0.1:8000", "127.0.0.1"), ("ws://[::1]:8000", "::1")):
            reactor = self.connect(url)
            self.assertEqual([c[:2] for c in reactor.tcpClients], [(host, 8000)], url)
            self.assertEqual(self.resolved, [], url)

    def test_names_are_resolved(self) -> None:
        reactor = self.connect("wss://relay.example:8000")
        self.assertEqual(reactor.tcpClients, [])
        self.assertEqual(self.resolved, ["relay.example"])
