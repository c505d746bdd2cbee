# Autobahn's protocol API is untyped.
# mypy: disable-error-code="no-untyped-call"
"""One end of a pairing over a WebSocket to the relay's rendezvous: the thin Twisted part.

`PairingSession` turns WebSocket callbacks into calls on the sans-IO `Exchange` and reports
the outcome through one Deferred; `run_pairing` connects and waits for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from nbbridge.contract import (
    CloseCode,
    Joined,
    bearer_headers,
    pair_join_path,
    pair_open_path,
    parse_pair_message,
)
from nbbridge.transport import RelayURL, client_endpoint, websocket_client_factory
from nbbridge.websocket import truncate_reason

from ._code import Code, new_code
from ._exchange import Exchange, PairingFailed, PeerDone, PeerOffer, Role, Send

#: What to do with the other side's offer (write the files); raise PairingFailed to refuse.
OfferHandler = Callable[[bytes], None]


class PairingSession:
    """One end's pairing over one WebSocket.

    `result` fires once both ends are done and the WebSocket has closed, or fails with
    `PairingFailed`.
    """

    _log = Logger()

    def __init__(
        self,
        role: Role,
        offer: bytes,
        on_offer: OfferHandler,
        *,
        code: Code | None = None,
        on_code: Callable[[Code, float], None] | None = None,
    ) -> None:
        if (role is Role.CLIENT) != (code is not None):
            raise ValueError("the client knows the code; the agent learns it from the relay")
        self.role = role
        self._offer = offer
        self._on_offer = on_offer
        self._on_code = on_code
        self.exchange = Exchange(role, code, offer) if code is not None else None
        self.result: Deferred[None] = Deferred()
        #: agent side: the URL of the relay holding the rendezvous, if the relay named one
        #: (several relays behind a load balancer); the laptop must join through it
        self.relay_url: str | None = None
        self._ws: WebSocketClientProtocol | None = None
        self._failure: PairingFailed | None = None

    def opened(self, ws: WebSocketClientProtocol) -> None:
        self._ws = ws
        if self.exchange is not None:  # the client: the agent is there already
            self._send(self.exchange.start())

    def text(self, payload: bytes) -> None:
        """A message from the relay itself (agent side: the nameplate, then 'joined')."""
        try:
            message = parse_pair_message(payload)
        except ValueError as e:
            self._fail(PairingFailed(f"the relay sent something unexpected: {e}"))
            return
        if isinstance(message, Joined):
            if self.exchange is None:
                self._fail(PairingFailed("the relay said 'joined' before giving a code"))
                return
            self._send(self.exchange.start())
            return
        if self.role is not Role.AGENT or self.exchange is not None:
            self._fail(PairingFailed("the relay sent a second code"))
            return
        code = new_code(message.nameplate)
        self.relay_url = message.relay
        self.exchange = Exchange(Role.AGENT, code, self._offer)
        if self._on_code is not None:
            self._on_code(code, message.ttl)

    def binary(self, payload: bytes) -> None:
        """A message from the other side, carried by the relay."""
        if self.exchange is None or self.result.called:
            self._fail(PairingFailed("the other side spoke before the exchange began"))
            return
        try:
            for event in self.exchange.receive(payload):
                if isinstance(event, Send):
                    self._send(event.data)
                elif isinstance(event, PeerOffer):
                    self._on_offer(event.offer)
                    self._send(self.exchange.done())
                elif isinstance(event, PeerDone):
                    pass
            if self.exchange.finished:
                self._finish()
        except PairingFailed as e:
            self._fail(e)

    def closed(self, code: int | None, reason: str | None) -> None:
        """The WebSocket closed (CODE and REASON as the relay said, if it did)."""
        if self.result.called:
            return
        if self.exchange is not None and self.exchange.finished:
            # Only now is everything we sent (our 'done' included) known to be delivered.
            self.result.callback(None)
            return
        if self._failure is not None:
            self.result.errback(self._failure)
            return
        why = reason or "no reason given"
        if code in (CloseCode.PAIR_CODE_GONE, CloseCode.PAIR_PEER_LEFT):
            failure = PairingFailed(why)
        elif code is not None and 4400 <= code < 4500:
            failure = PairingFailed(f"the relay refused: {why} ({code})")
        else:
            failure = PairingFailed(f"the connection to the relay closed: {why}")
        self.result.errback(failure)

    def abort(self, why: str) -> None:
        """Give up (a local deadline): close and fail with WHY."""
        self._fail(PairingFailed(why))

    def _send(self, data: bytes) -> None:
        if self._ws is not None:
            self._ws.sendMessage(data, isBinary=True)

    def _finish(self) -> None:
        # Success is reported once the close handshake is over (`closed`), not now: a
        # process that exits now could drop our 'done' still in its write buffer.
        if self._ws is not None:
            self._ws.sendClose(int(CloseCode.NORMAL), "paired")

    def _fail(self, failure: PairingFailed) -> None:
        if self.result.called or self._failure is not None:
            return
        self._failure = failure
        if self._ws is not None:
            # The reason is the one line the other side shows too (no secret is in it).
            reason = truncate_reason(f"pairing failed: {failure}").decode("utf-8")
            self._ws.sendClose(int(CloseCode.NORMAL), reason)
        else:
            self.result.errback(failure)


class _PairProtocol(WebSocketClientProtocol):
    session: PairingSession

    def onOpen(self) -> None:
        self.factory.session.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session: PairingSession = self.factory.session
        if isBinary:
            session.binary(payload)
        else:
            session.text(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.session.closed(code, reason)


async def run_pairing(
    reactor: Any,
    relay: RelayURL,
    session: PairingSession,
    *,
    agent: str | None = None,
    token: str | None = None,
    nameplate: int | None = None,
    ca_file: str | None = None,
    timeout: float,
) -> None:
    """Connect SESSION to the relay's rendezvous and wait until it is done or fails.

    The agent side gives AGENT and its TOKEN; the client side gives the code's NAMEPLATE.
    Connection failures arrive as `RelayConnectError`, everything else as `PairingFailed`.
    """
    if session.role is Role.AGENT:
        assert agent is not None and token is not None
        path, headers = pair_open_path(agent), bearer_headers(token)
    else:
        assert nameplate is not None
        path, headers = pair_join_path(nameplate), {}
    factory = websocket_client_factory(relay.url_for(path), headers, _PairProtocol, reactor=reactor)
    factory.session = session  # type: ignore[attr-defined]
    endpoint = client_endpoint(reactor, relay, ca_file)
    clock: IReactorTime = reactor
    deadline: IDelayedCall = clock.callLater(
        timeout, session.abort, f"gave up after {timeout:g} s without an answer"
    )
    try:
        await endpoint.connect(factory)
        await session.result
    finally:
        if deadline.active():
            deadline.cancel()
