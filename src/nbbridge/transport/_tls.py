"""Client endpoints to the relay: TLS verified by service-identity, with errors that say why.

``client_endpoint`` returns an ``IStreamClientEndpoint`` whose ``connect()`` fires only once the
connection is usable: for ``wss://`` that means after the TLS handshake *and* the certificate
check. A handshake that fails therefore fails the connect attempt itself (so ClientService
backs off as for any failed attempt) with a :class:`RelayConnectError` whose text names the
problem ("certificate ... is not valid for host ...", "not signed by a trusted CA"), and the
application protocol never sees an unverified connection.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs
from cryptography import x509
from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._explain import ConnectContext, RelayConnectError, refusal
from ._trust import load_trust_root
from ._url import RelayURL

#: Twisted 26.4 added ``wrapClientTLS(clock=)``, the clock its TLS layer batches small writes
#: on. Older ones, which setup.cfg still allows, take the global reactor: the same one as
#: ``client_endpoint``'s everywhere but in a test that injects another.
_TLS_TAKES_CLOCK = "clock" in inspect.signature(wrapClientTLS).parameters

#: Seconds for the TCP connect to each resolved address.
CONNECT_TIMEOUT = 15.0
#: Seconds from TCP connected to TLS verified; a silent server must not hang an agent forever.
HANDSHAKE_TIMEOUT = 15.0


def client_endpoint(
    reactor: Any,
    relay: RelayURL,
    ca_file: str | None,
    *,
    log_failures: bool = False,
) -> IStreamClientEndpoint:
    """An endpoint that connects to ``relay``: TLS for ``wss://``, plain TCP for ``ws://``.

    ``connect()`` fires once the connection is usable (for TLS: handshake done, certificate
    verified) and fails with :class:`RelayConnectError` otherwise.

    :param reactor: provides IReactorTCP, IReactorTime and name resolution (any real reactor).
    :param ca_file: PEM file with the CA(s) to trust instead of the system store (``--ca``).
    :param log_failures: log each failed attempt with its reason. ClientService only logs
        "scheduling retry", so its users want this; callers that log the failure themselves
        leave it off.
    :raises ValueError: ``ca_file`` is unusable (see :func:`load_trust_root`).
    """
    tcp = _tcp_endpoint(reactor, relay.host, relay.port)
    if not relay.secure:
        return _RelayEndpoint(reactor, relay, tcp, None, log_failures)
    creator = optionsForClientTLS(relay.host, trustRoot=load_trust_root(ca_file))
    if _TLS_TAKES_CLOCK:
        tls = wrapClientTLS(creator, tcp, clock=reactor)
    else:
        tls = wrapClientTLS(creator, tcp)
    return _RelayEndpoint(reactor, relay, tls, ca_file, log_failures)


def _tcp_endpoint(reactor: Any, host: str, port: int) -> IStreamClientEndpoint:
    """TCP to HOST: an address connects at once, a name is resolved first (all its addresses
    tried, IPv6 and IPv4 raced).

    Resolving is a getaddrinfo call in Twisted's thread pool and a hand-back to the reactor
    thread: two thread switches for every link a client opens and every data connection an
    agent dials, which for an address literal finds nothing to resolve. On a busy machine each
    switch waits for a core.
    """
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    return HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)


@implementer(IStreamClientEndpoint)
@attrs.frozen
class _RelayEndpoint:
    """Connects through ``_inner``; for TLS, holds the protocol back until the peer is verified."""

    _log = Logger()

    _clock: IReactorTime
    _relay: RelayURL
    _inner: IStreamClientEndpoint
    _ca_file: str | None
    _log_failures: bool = False

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt: Deferred[Any]
        if self._relay.secure:
            gates = _GateFactory(protocolFactory, self._clock, self._context)
            attempt = self._inner.connect(gates)
            attempt.addCallback(_verified)
        else:
            attempt = self._inner.connect(protocolFactory)
        cancelling = False

        def cancel(result: Deferred[IProtocol]) -> None:
            # Twisted reports a cancel during name resolution as a DNS failure: remember
            # that it was a cancel, so callers (ClientService.stopService) see CancelledError.
            nonlocal cancelling
            cancelling = True
            attempt.cancel()

        result: Deferred[IProtocol] = Deferred(cancel)

        def done(outcome: Any) -> None:
            if result.called:
                # Cancelled, yet connected anyway: nobody will use this connection.
                transport = getattr(outcome, "transport", None)
                if transport is not None:
                    transport.abortConnection()
                return
            if cancelling:
                result.errback(CancelledError())
            elif isinstance(outcome, Failure):
                result.errback(self._explain(outcome))
            else:
                result.callback(outcome)

        attempt.addBoth(done)
        return result

    def _context(self, peer: str | None, cert: x509.Certificate | None) -> ConnectContext:
        return ConnectContext(
            host=self._relay.host,
            port=self._relay.port,
            peer=peer,
            ca_file=self._ca_file,
            certificate=cert,
        )

    def _explain(self, failure: Failure) -> Failure:
        value = failure.value
        if isinstance(value, CancelledError | error.ConnectingCancelledError):
            return failure
        if not isinstance(value, RelayConnectError):
            assert value is not None
            value = refusal(value, self._context(None, None))
        if self._log_failures:
            self._log.warn("cannot connect to {relay}: {why}", relay=str(self._relay), why=value)
        return Failure(value)  # type: ignore[no-untyped-call, unused-ignore]

    def __str__(self) -> str:
        return str(self._relay)


def _verified(gate: Any) -> Deferred[IProtocol]:
    verified: Deferred[IProtocol] = gate.verified
    return verified


@implementer(IProtocolFactory)
class _GateFactory:
    """Puts a :class:`_HandshakeGate` in front of each protocol of the wrapped factory."""

    def __init__(
        self,
        wrapped: IProtocolFactory,
        clock: IReactorTime,
        context: Callable[[str | None, x509.Certificate | None], ConnectContext],
    ) -> None:
        self._wrapped = wrapped
        self._clock = clock
        self._context = context

    def doStart(self) -> None:
        self._wrapped.doStart()

    def doStop(self) -> None:
        self._wrapped.doStop()

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        app = self._wrapped.buildProtocol(addr)
        if app is None:
            # Raised, not returned: the TLS wrapper cannot carry None, the endpoint reports this.
            raise error.NoProtocol()
        return _HandshakeGate(app, self._clock, self._context)


@implementer(IHandshakeListener)
class _HandshakeGate(Protocol):
    """Stands in for the application protocol until the TLS handshake is verified.

    Twisted checks the certificate (trust chain, then service-identity for the host name)
    during the handshake. On ``handshakeCompleted`` the gate hands the TLS transport to the
    application protocol and steps out (the TLS layer's ``wrappedProtocol`` becomes the
    application protocol, so the gate costs nothing afterwards). A connection lost before
    that becomes a clear :class:`RelayConnectError` on ``verified``.
    """

    def __init__(
        self,
        app: IProtocol,
        clock: IReactorTime,
        context: Callable[[str | None, x509.Certificate | None], ConnectContext],
    ) -> None:
        self._app = app
        self._clock = clock
        self._context = context
        self._tls: Any = None
        self.verified: Deferred[IProtocol] = Deferred(self._cancel)
        self._timer: IDelayedCall | None = None
        self._timed_out = False

    def makeConnection(self, transport: ITransport) -> None:
        self._tls = transport
        super().makeConnection(transport)  # type: ignore[no-untyped-call, unused-ignore]

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(HANDSHAKE_TIMEOUT, self._time_out)

    def handshakeCompleted(self) -> None:
        self._stop_timer()
        if self.verified.called:
            return
        tls = self._tls
        if getattr(tls, "disconnecting", False):
            # Twisted before 26.4 checks the host name once the handshake is done and, on a
            # mismatch, aborts the connection but still reports the handshake complete: the
            # app must not get it. connectionLost follows, the VerificationError its reason.
            return
        tls.wrappedProtocol = self._app
        self._app.makeConnection(tls)
        self.verified.callback(self._app)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Only reached before the handshake completed: afterwards the app is wrapped instead.
        self._stop_timer()
        if not self.verified.called:
            self.verified.errback(self._refusal(reason))

    def _refusal(self, reason: Failure) -> RelayConnectError:
        context = self._context(self._peer(), self._certificate())
        if self._timed_out:
            return RelayConnectError(f"TLS handshake with {context.host}:{context.port} timed out")
        value = reason.value
        if value is None or isinstance(value, error.ConnectionDone | error.ConnectionLost):
            return RelayConnectError(
                f"{context.host}:{context.port} closed the connection during the TLS handshake"
            )
        return refusal(value, context)

    def _peer(self) -> str | None:
        address = self._tls.getPeer()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else None

    def _certificate(self) -> x509.Certificate | None:
        handle = self._tls.getHandle()
        if not isinstance(handle, SSL.Connection):
            return None
        # After a failed verification OpenSSL keeps no "peer certificate", but it keeps the
        # chain the server sent; on the client side its first entry is the server's own.
        chain = handle.get_peer_cert_chain()
        return chain[0].to_cryptography() if chain else None

    def _time_out(self) -> None:
        self._timer = None
        self._timed_out = True
        self._tls.abortConnection()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _cancel(self, verified: Deferred[IProtocol]) -> None:
        # connect() was cancelled while the handshake was under way (e.g. stopService).
        self._tls.abortConnection()
