"""The agent: keeps a control connection to the relay and answers each dial with a data link.

Each data link carries the responder side of a Noise session (only clients whose keys are in
the authorized-keys file get through) and a mux session whose acceptor opens channels only to
the services this agent exposes: it is never an open proxy. The acceptor is pluggable
(`nbbridge.mux.Acceptor`): a fixed `ServiceMap` from `--expose`, or one that adds instances
at run time.

Routes and control messages come from `nbbridge.contract`. A dial names the URL to dial
back to; the agent accepts only its own relay's origin (scale-out across relays will add an
allow-list), checks the link id against the contract, and bounds how many dials it answers
at once, so a confused or hostile relay cannot make it open connections without limit.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbbridge.contract import (
    DEFAULT_DIAL_TIMEOUT,
    Dial,
    Registered,
    bearer_headers,
    control_path,
    parse_control_message,
)
from nbbridge.crypto import (
    RESPONDER_HANDSHAKE_TIMEOUT,
    AuthorizedKeys,
    PrivateKey,
    PublicKey,
    Responder,
    SecureProtocol,
)
from nbbridge.mux import (
    DEFAULT_CHANNEL_LIMITS,
    DEFAULT_GRACE,
    RESUME_FEATURE,
    Acceptor,
    ChannelLimits,
    LinkEnd,
    MuxSession,
    SessionRegistry,
    features_payload,
)
from nbbridge.transport import RelayURL, client_endpoint, websocket_client_factory
from nbbridge.websocket import StreamClientProtocol, bind

#: Data connections the agent opens at once, before their client is authenticated.
MAX_PENDING_DIALS = 16
#: Dials beyond those that wait their turn (the relay's default links_per_agent).
MAX_QUEUED_DIALS = 64
#: Seconds a queued dial stays worth answering: the relay's default dial_timeout, after
#: which it has given up the link and closed its client (4408).
QUEUED_DIAL_LIFETIME = DEFAULT_DIAL_TIMEOUT


class _ControlProtocol(StreamClientProtocol):
    """The agent's control connection: registration, and dial requests from the relay."""

    def onOpen(self) -> None:
        """Nothing runs inside a control connection; wait for the relay's "registered"."""

    def textReceived(self, text: str) -> None:
        agent: Agent = self.owner
        try:
            message = parse_control_message(text)
        except ValueError as e:
            self._log.warn("relay sent an unusable control message ({why}); ignored", why=e)
            return
        if isinstance(message, Dial):
            agent.dial(message)
        elif isinstance(message, Registered):
            agent.control_up(self)

    def closed(self, code: int | None, reason: str) -> None:
        agent: Agent = self.owner
        agent.control_down(code, reason)


class _DataProtocol(StreamClientProtocol):
    """One data link: Noise responder and mux over a WebSocket the relay splices to a client."""

    link_end: LinkEnd | None = None

    @property
    def session(self) -> MuxSession | None:  # type: ignore[override]
        """The session this link carries: a new one, or the one a RESUME named."""
        return self.link_end.session if self.link_end is not None else None

    def make_inner(self) -> IProtocol:
        agent: Agent = self.owner
        session = MuxSession(
            initiator=False,
            acceptor=agent.acceptor,
            label=f"link {self.factory.link_id[:6]}",
            clock=agent.clock,
            max_channels=agent.channel_limits.max_channels,
            max_pending_accepts=agent.channel_limits.max_pending_accepts,
            resume_grace=agent.resume_grace or None,
            registry=agent.sessions,
        )
        self.link_end = LinkEnd(session)
        # Our handshake reply says whether we resume sessions (older clients ignore it).
        features = features_payload(RESUME_FEATURE) if agent.resume_grace else b""
        # The handshake ends only with the client's first authenticated record, so a replayed
        # handshake message never counts as a client and is dropped after the deadline.
        secure = SecureProtocol(
            self.link_end,
            Responder(agent.key, agent.is_authorized, payload=features),
            agent.clock,
            handshake_timeout=agent.handshake_timeout,
        )
        secure.handshake.addCallbacks(self._secured, self._refused)
        agent.links.add(self)
        return secure

    def _secured(self, client: PublicKey) -> None:
        agent: Agent = self.owner
        agent.dial_done(self)
        self._log.info("client {client} connected", client=agent.describe_client(client))

    def _refused(self, failure: Failure) -> None:
        self.owner.dial_done(self)
        # Also a client that never proved its key (a replayed handshake): said, not "connected".
        self._log.warn("link refused: {why}", why=failure.getErrorMessage())

    def closed(self, code: int | None, reason: str) -> None:
        self.owner.dial_done(self)
        self.owner.links.discard(self)


class Agent(MultiService):
    """Exposes ``services`` to authorized clients through the relay, under ``name``.

    :param handshake_timeout: seconds a data link may take to prove its client's key.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        relay: RelayURL,
        name: str,
        token: str,
        key: PrivateKey,
        authorized: AuthorizedKeys,
        acceptor: Acceptor,
        ca_file: str | None = None,
        *,
        max_pending_dials: int = MAX_PENDING_DIALS,
        handshake_timeout: float = RESPONDER_HANDSHAKE_TIMEOUT,
        channel_limits: ChannelLimits = DEFAULT_CHANNEL_LIMITS,
        resume_grace: float = DEFAULT_GRACE,
    ) -> None:
        super().__init__()
        #: seconds a session whose link was lost waits for its client (0: never resumes)
        self.resume_grace = resume_grace
        #: resumable sessions by id, suspended or not
        self.sessions = SessionRegistry()
        self.handshake_timeout = handshake_timeout
        self.channel_limits = channel_limits
        self.reactor = reactor
        self.clock = reactor
        self.relay = relay
        self.agent_name = name
        self.key = key
        self.authorized = authorized
        self.acceptor = acceptor
        self.links: set[_DataProtocol] = set()
        #: data connections dialled and not yet authenticated (or failed)
        self._dialling: set[object] = set()
        self._max_pending_dials = max_pending_dials
        #: dials beyond the pending ones, oldest first: (when, url, dial)
        self._queued_dials: deque[tuple[float, str, Dial]] = deque()
        self._token = token
        self._ca_file = ca_file
        self.online = False
        self._stopping = False
        factory = self._factory(relay.url_for(control_path(name)), _ControlProtocol, text=True)
        self.control = ClientService(
            client_endpoint(reactor, relay, ca_file),
            factory,
            retryPolicy=backoffPolicy(initialDelay=1.0, maxDelay=60.0, jitter=random.random),
            clock=reactor,
        )
        self.control.setServiceParent(self)

    def _factory(self, url: str, protocol: type[StreamClientProtocol], text: bool) -> Any:
        headers = bearer_headers(self._token)
        factory = websocket_client_factory(url, headers, protocol, text=text, reactor=self.reactor)
        return bind(factory, self)

    def is_authorized(self, client: PublicKey) -> bool:
        return client in self.authorized

    def describe_client(self, client: PublicKey) -> str:
        label = self.authorized.label_for(client)
        text = client.to_text()
        return f"{label} ({text[:12]}…)" if label else text

    def control_up(self, protocol: _ControlProtocol) -> None:
        self.online = True
        self._log.info(
            "agent {name} online at {relay}, exposing {services}",
            name=self.agent_name,
            relay=self.relay.netloc,
            services=", ".join(sorted(getattr(self.acceptor, "services", ()))) or "nothing",
        )

    def control_down(self, code: int | None, reason: str) -> None:
        if self._stopping:
            self._log.info("control connection to the relay closed: agent stopping")
        elif self.online or code not in (None, 1006):
            self._log.warn(
                "control connection to the relay closed ({code}): {reason}",
                code=code,
                reason=reason or "connection lost",
            )
        self.online = False

    def dial(self, dial: Dial) -> None:
        """The relay has a client for us: open the data connection it asked for."""
        url = self.dial_url(dial)
        if url is None:
            self._log.warn("relay asked for a data connection to another origin or agent; refused")
            return
        if len(self._dialling) >= self._max_pending_dials:
            # The relay's own cap counts dials until the data connection arrives, ours until
            # the client is authenticated: a burst of clients may pass the one and not the
            # other. Dropped, each of their links would wait out the relay's dial timeout.
            if len(self._queued_dials) >= MAX_QUEUED_DIALS:
                self._log.warn(
                    "{n} data connections are still being set up and {q} dials wait; dial refused",
                    n=len(self._dialling),
                    q=len(self._queued_dials),
                )
                return
            self._queued_dials.append((self.reactor.seconds(), url, dial))
            return
        self._start_dial(url, dial)

    def _start_dial(self, url: str, dial: Dial) -> None:
        factory = self._factory(url, _DataProtocol, text=False)
        factory.link_id = dial.link_id
        token = object()
        self._dialling.add(token)
        factory.dialling = token
        d = client_endpoint(self.reactor, self.relay, self._ca_file).connect(factory)

        def failed(f: Failure) -> None:
            self._dial_ended(token)
            self._log.warn("cannot open data link: {why}", why=f.getErrorMessage())

        d.addErrback(failed)

    def dial_url(self, dial: Dial) -> str | None:
        """The absolute URL DIAL names, or None unless it is this agent's route at its relay."""
        # A path is a route of the relay URL we use (which may have a path of its own).
        url = dial.url if urlsplit(dial.url).scheme else self.relay.url_for(dial.url)
        ours, theirs = urlsplit(self.relay.url_for("/")), urlsplit(url)
        if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):
            return None
        if not theirs.path.endswith(f"/v1/agents/{self.agent_name}/data/{dial.link_id}"):
            return None
        return url

    def dial_done(self, link: _DataProtocol) -> None:
        """LINK's client is authenticated, refused, or gone: it no longer counts as pending."""
        self._dial_ended(link.factory.dialling)

    def _dial_ended(self, token: object) -> None:
        """A dial no longer pending: the oldest queued one still worth answering starts."""
        if token not in self._dialling:
            return
        self._dialling.discard(token)
        now = self.reactor.seconds()
        while self._queued_dials and len(self._dialling) < self._max_pending_dials:
            queued_at, url, dial = self._queued_dials.popleft()
            if now - queued_at < QUEUED_DIAL_LIFETIME and not self._stopping:
                self._start_dial(url, dial)

    def stopService(self) -> Deferred[None]:
        self._stopping = True
        closing = []
        sessions = {link.session for link in self.links if link.session is not None}
        sessions.update(self.sessions)
        for session in sessions:
            if session.closed_reason is None and (session.is_open or session.resumable):
                closing.append(session.when_closed())
                session.close("agent stopping")
        d = super().stopService()
        return DeferredList([d, *closing]).addCallback(lambda _: None)  # type: ignore[arg-type]
