"""SecureProtocol: the secure channel as a Twisted protocol wrapping another one.

It sits on any byte transport (TCP, an in-memory pipe, a WebSocket byte-stream
adapter) and is itself the transport of the protocol it wraps, which only sees
the connection once the handshake has proved who is on the other end. All the
protocol logic lives in the sans-IO Initiator/Responder; this class only moves
bytes and callbacks between them and Twisted.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IProducer,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbbridge._observer import OneShotObserver

from ._errors import HandshakeError, SecureChannelError
from ._keys import PublicKey
from ._secure import MAX_PLAINTEXT, HandshakeComplete, Initiator, Responder

#: The initiator's default: it covers the relay dialling the agent, not only one round trip.
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
#: A responder waits for one round trip only; a stream that has not proven its key by then is
#: a replay, a scan or a broken client, and holding it would hold a link slot at the relay.
RESPONDER_HANDSHAKE_TIMEOUT = 5.0


@implementer(ITransport, IConsumer, IPushProducer)
class SecureProtocol(Protocol):
    """Noise IK end to end over a byte stream, presented as a transport to `wrapped`.

    The first write of a reactor turn is sent at once; later writes in the same
    turn are coalesced until the next turn (or until 1 MiB are waiting) and
    sent as one record, because a record per small write would cost 21 bytes
    and an AEAD call each.

    :param wrapped: the protocol to run inside the channel.
    :param role: an Initiator (pins the peer key) or a Responder (checks it).
    :param clock: for coalescing writes, firing waiters and the handshake timeout.
    :param handshake_timeout: seconds to wait for the handshake, or None. A responder's
        handshake ends with the initiator's first authenticated record, so this also bounds
        how long a replayed handshake message can hold the stream.
    """

    _log = Logger()

    def __init__(
        self,
        wrapped: IProtocol,
        role: Initiator | Responder,
        clock: IReactorTime,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        self._wrapped = wrapped
        self._role = role
        self._clock = clock
        self._handshake_timeout = handshake_timeout
        self._timeout_call: IDelayedCall | None = None
        self._wbuf: list[bytes] = []
        self._wlen = 0
        self._flush_call: IDelayedCall | None = None
        self._result: PublicKey | SecureChannelError | None = None
        self._settled: OneShotObserver[PublicKey] = OneShotObserver(clock)
        self._inner_connected = False
        self._closing = False
        self._failed = False
        self._lost = False

    # -- what users of the channel see ---------------------------------------------------------

    @property
    def handshake(self) -> Deferred[PublicKey]:
        """A new Deferred firing (on a later turn) with the peer's key, or a HandshakeError.

        Each access gives its own Deferred, so a failure nobody asked about is
        never reported as an unhandled error.
        """
        return self._settled.when_fired()

    @property
    def remote_static(self) -> PublicKey | None:
        """The peer's static key once the handshake has completed."""
        return self._role.remote_static

    @property
    def handshake_hash(self) -> bytes | None:
        """The Noise handshake hash (a channel binding) once the handshake has completed."""
        return self._role.handshake_hash

    @property
    def peer_payload(self) -> bytes:
        """The payload of the peer's handshake message (the responder's feature flags)."""
        return self._role.peer_payload

    @property
    def session_secret(self) -> bytes | None:
        """A secret exported from this handshake that only the two ends know (see docs)."""
        return self._role.session_secret

    # -- events from the byte transport below ------------------------------------------------

    def connectionMade(self) -> None:
        if self._handshake_timeout is not None:
            self._timeout_call = self._clock.callLater(
                self._handshake_timeout, self._handshake_timed_out
            )
        first = self._role.start()
        if first:
            self._below().write(first)

    def dataReceived(self, data: bytes | memoryview) -> None:
        events = self._role.receive_data(data)
        reply = self._role.data_to_send()
        if reply:
            self._below().write(reply)
        for event in events:
            if isinstance(event, bytes):
                if self._inner_connected:
                    self._wrapped.dataReceived(event)
            elif isinstance(event, HandshakeComplete):
                self._handshake_done(event)
            else:
                self._channel_failed(event)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancel_timers()
        self._drop_writes()
        error = self._role.connection_lost()
        if self._result is None:
            error = error or HandshakeError("connection closed before the handshake finished")
            self._log.info("secure channel closed during the handshake: {reason}", reason=error)
            self._resolve(error)
        if self._inner_connected:
            self._inner_connected = False
            if error is not None and not self._failed:
                self._log.warn("secure channel ended: {reason}", reason=error.reason)
            self._wrapped.connectionLost(Failure(error) if error is not None else reason)

    # -- ITransport / IConsumer / IPushProducer for the wrapped protocol ---------------------

    def write(self, data: bytes) -> None:
        if not data or self._closing or self._failed or self._lost or not self._inner_connected:
            return
        self._wbuf.append(data)
        self._wlen += len(data)
        if self._wlen >= MAX_PLAINTEXT:
            self._flush()
        elif self._flush_call is None:
            # The first write of a turn goes out at once (a request/response pays no extra
            # turn); what else is written in the same turn waits for the next and goes as one.
            self._flush()
            self._flush_call = self._clock.callLater(0, self._flush)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self._closing or self._lost:
            return
        self._flush()
        self._closing = True
        self._below().loseConnection()

    def abortConnection(self) -> None:
        """Close at once, dropping anything not yet sent."""
        if self._lost:
            return
        self._closing = True
        self._cancel_timers()
        self._drop_writes()
        below: Any = self._below()
        if hasattr(below, "abortConnection"):
            below.abortConnection()
        else:
            below.loseConnection()

    def getPeer(self) -> IAddress:
        return self._below().getPeer()

    def getHost(self) -> IAddress:
        return self._below().getHost()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        below: Any = self._below()
        below.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        below: Any = self._below()
        below.unregisterProducer()

    def pauseProducing(self) -> None:
        below: Any = self._below()
        below.pauseProducing()

    def resumeProducing(self) -> None:
        below: Any = self._below()
        below.resumeProducing()

    def stopProducing(self) -> None:
        below: Any = self._below()
        below.stopProducing()

    # -- internals ----------------------------------------------------------------------------

    def _below(self) -> ITransport:
        if self.transport is None:
            raise RuntimeError("SecureProtocol is not connected to a transport")
        return self.transport

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._wbuf or self._failed or self._lost:
            return
        data = self._wbuf[0] if len(self._wbuf) == 1 else b"".join(self._wbuf)
        self._drop_writes()
        try:
            pieces = self._role.encrypt_pieces(data)
        except SecureChannelError as e:
            self._channel_failed(e)
            return
        self._below().writeSequence(pieces)

    def _handshake_done(self, event: HandshakeComplete) -> None:
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None
        self._log.info(
            "secure channel up with {peer} ({key})", peer=self._peer_text(), key=event.remote_static
        )
        self._resolve(event.remote_static)
        self._inner_connected = True
        self._wrapped.makeConnection(self)

    def _handshake_timed_out(self) -> None:
        self._timeout_call = None
        if self._result is None and not self._lost and self._handshake_timeout is not None:
            self._channel_failed(self._role.timed_out(self._handshake_timeout))

    def _channel_failed(self, error: SecureChannelError) -> None:
        """The session is dead: say why, close the stream, tell whoever was waiting."""
        if self._failed:
            return
        self._failed = True
        self._cancel_timers()
        self._drop_writes()
        self._log.warn(
            "secure channel with {peer} failed: {reason}",
            peer=self._peer_text(),
            reason=error.reason,
        )
        self._resolve(error)
        if not self._lost:
            self._below().loseConnection()
        if self._inner_connected:
            self._inner_connected = False
            self._wrapped.connectionLost(Failure(error))

    def _drop_writes(self) -> None:
        self._wbuf.clear()
        self._wlen = 0

    def _cancel_timers(self) -> None:
        for call in (self._flush_call, self._timeout_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._timeout_call = None

    def _resolve(self, result: PublicKey | SecureChannelError) -> None:
        """Settle the handshake; if the channel ended first, its waiters get a HandshakeError."""
        if self._result is not None:
            return
        if isinstance(result, SecureChannelError) and not isinstance(result, HandshakeError):
            result = HandshakeError(result.reason)
        self._result = result
        self._settled.fire(Failure(result) if isinstance(result, SecureChannelError) else result)

    def _peer_text(self) -> str:
        try:
            return str(self._below().getPeer())
        except Exception:
            return "?"
