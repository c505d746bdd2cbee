"""A link to one agent: a WebSocket to the relay carrying Noise and the mux, kept up.

The link is opened on first use and, once used, kept up: after a loss it is re-opened with
exponential backoff (with jitter, capped at 60 s). Connections that need it while it is down
wait for it, up to ``wait`` seconds; a refusal that waiting cannot cure (the agent is offline,
our token or key is refused, the agent's key is not the pinned one, the relay's certificate is
refused) fails them at once, so the user's program sees a prompt close rather than a hang. The
link keeps retrying in the background all the same.

With an agent that can resume (docs/resume.md), the session outlives the link: when the link
is lost its channels are suspended (the user's connections stay open, unread), and the next
link resumes them after a fresh handshake. Only a session that cannot be resumed, or whose
grace period ends first, resets its channels.
"""

from __future__ import annotations

import enum
import os
import random
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbbridge._internals import auto_ping_pending
from nbbridge._observer import Waiters
from nbbridge.contract import bearer_headers, link_path
from nbbridge.crypto import HandshakeError, Initiator, PrivateKey, PublicKey, SecureProtocol
from nbbridge.mux import (
    DEFAULT_CHANNEL_LIMITS,
    DEFAULT_GRACE,
    ChannelEndpoint,
    ChannelLimits,
    LinkEnd,
    MuxSession,
)
from nbbridge.transport import (
    RelayCertificateError,
    RelayURL,
    client_endpoint,
    explain_connect_error,
    websocket_client_factory,
)
from nbbridge.websocket import LinkClosed, StreamClientProtocol, bind


class LinkDown(ConnectError):
    """No link to the agent could be had; the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(string=reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class LinkState(enum.Enum):
    """Where a link is in its life."""

    #: nobody has asked for it yet (or it went down and nobody asked since)
    IDLE = "idle"
    #: an attempt to open it is under way
    OPENING = "opening"
    #: a session is open
    UP = "up"
    #: it is down and will be tried again after the backoff
    BACKING_OFF = "backing off"
    #: the service stopped; it stays down
    STOPPED = "stopped"


def _is_final(error: BaseException) -> bool:
    """A refusal that retrying right away will not cure."""
    if isinstance(error, HandshakeError | RelayCertificateError):
        return True
    if isinstance(error, LinkClosed):
        return error.code is not None and 4400 <= error.code < 4500
    return False


#: The longest wait between link attempts while a suspended session waits to resume.
SUSPENDED_MAX_BACKOFF = 8.0

#: The start of the payload of our round-trip pings (Autobahn's own carry a timestamp).
_RTT_PING = b"nbbridge-rtt:"


class _LinkProtocol(StreamClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.ready: Deferred[MuxSession] = Deferred()
        self.session: MuxSession | None = None
        self._ping: tuple[bytes, float, Deferred[float]] | None = None

    def ping(self) -> Deferred[float] | None:
        """Send a WebSocket ping; its pong sets the link's ``rtt`` (to the relay and back).

        Skipped (None) while an earlier ping or Autobahn's own heartbeat waits for its pong;
        else a Deferred that fires with the round trip when the pong comes (never, if the
        link closes first).
        """
        if self.state != self.STATE_OPEN or self._ping is not None or auto_ping_pending(self):
            return None
        payload = _RTT_PING + os.urandom(8)
        self._ping = (payload, self.owner.clock.seconds(), Deferred())
        self.sendPing(payload)
        return self._ping[2]

    def onPong(self, payload: bytes) -> None:
        if self._ping is not None and payload == self._ping[0]:
            _, sent, measured = self._ping
            self._ping = None
            self.owner.rtt = rtt = self.owner.clock.seconds() - sent
            measured.callback(rtt)

    def make_inner(self) -> IProtocol:
        link: AgentLink = self.owner
        # A suspended session goes on over this link; otherwise a new one starts.
        self.session = link.suspended_session() or MuxSession(
            initiator=True,
            label=f"session with {link.agent}",
            clock=link.clock,
            max_channels=link.channel_limits.max_channels,
            max_pending_accepts=link.channel_limits.max_pending_accepts,
            resume_grace=link.resume_grace or None,
        )
        # Ready once usable: at once for a new session, after RESUMED for a resumed one.
        self.session.on_ready = self._ready
        secure = SecureProtocol(
            LinkEnd(self.session), Initiator(link.key, link.agent_key), link.clock
        )
        secure.handshake.addErrback(self._refused)
        return secure

    def _ready(self, session: MuxSession) -> None:
        if not self.ready.called:
            self.ready.callback(session)

    def _refused(self, failure: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(failure)

    def closed(self, code: int | None, reason: str) -> None:
        if not self.ready.called:
            self.ready.errback(LinkClosed(code, reason))
        self.owner.link_closed(self, str(LinkClosed(code, reason)))


class AgentLink(Service):
    """A service giving MuxSessions (and channel endpoints) to agent ``agent`` via the relay.

    This is the public way for anything in nbbridge to reach an agent's services: the
    client's port forwards, and every later consumer (datalab, gateway, mixer), use
    ``endpoint(service)``. Stopping the service closes the link and fails whoever waits.

    :param wait: how long a connection waits for a link that is down before it fails.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        relay: RelayURL,
        agent: str,
        agent_key: PublicKey,
        key: PrivateKey,
        token: str,
        ca_file: str | None = None,
        *,
        wait: float = 30.0,
        attempt_timeout: float = 30.0,
        max_backoff: float = 60.0,
        channel_limits: ChannelLimits = DEFAULT_CHANNEL_LIMITS,
        resume_grace: float = DEFAULT_GRACE,
    ) -> None:
        self.reactor: IReactorTCP = reactor
        self.clock: IReactorTime = reactor
        self.relay = relay
        self.agent = agent
        self.agent_key = agent_key
        self.key = key
        self._token = token
        self._ca_file = ca_file
        self._wait = wait
        self._attempt_timeout = attempt_timeout
        self._max_backoff = max_backoff
        self.channel_limits = channel_limits
        #: seconds a session waits for its link to come back (0: never resumes)
        self.resume_grace = resume_grace
        self.state = LinkState.IDLE
        self._session: MuxSession | None = None
        self._attempt: Deferred[MuxSession] | None = None
        self._retry: IDelayedCall | None = None
        self._waiters: Waiters[MuxSession] = Waiters(self.clock)
        self._delay = 1.0
        self._last_error = "not connected yet"
        self._last_final_at: float | None = None
        self._protocol: _LinkProtocol | None = None
        #: how often the link came up again after it was up once
        self.reconnects = 0
        #: when the current session came up (reactor seconds), None while down
        self.up_since: float | None = None
        #: the last measured WebSocket round trip to the relay, in seconds (see ``ping``)
        self.rtt: float | None = None
        self._ups = 0

    @property
    def last_error(self) -> str:
        """Why the link is not up, or was last lost."""
        return self._last_error

    def ping(self) -> Deferred[float] | None:
        """Measure the round trip to the relay once more, if up: it lands in ``rtt``, and the
        Deferred returned fires with it (None: no ping sent, one is on its way already)."""
        if self.state is LinkState.UP and self._protocol is not None:
            return self._protocol.ping()
        return None

    @property
    def current_session(self) -> MuxSession | None:
        """The session, open or suspended (None: none yet, or it ended)."""
        return self._session

    def suspended_session(self) -> MuxSession | None:
        """The session waiting for a link to resume on, if there is one."""
        session = self._session
        if session is not None and session.suspended_since is not None:
            return session
        return None

    @property
    def url(self) -> str:
        return self.relay.url_for(link_path(self.agent))

    def endpoint(self, service: str, metadata: Mapping[str, str] | None = None) -> ChannelEndpoint:
        """An ``IStreamClientEndpoint`` whose connections are channels to SERVICE on the agent."""
        return ChannelEndpoint(self.session, service, metadata)

    def session(self) -> Deferred[MuxSession]:
        """The open session, or a new Deferred that fires when one is up (or fails: LinkDown)."""
        if self.state is LinkState.UP and self._session is not None and self._session.is_open:
            return succeed(self._session)
        if self.state is LinkState.STOPPED:
            return fail(LinkDown("the client is stopping"))
        recently_refused = (
            self._last_final_at is not None and self.clock.seconds() - self._last_final_at < 1.0
        )
        if self.state is not LinkState.OPENING and recently_refused:
            return fail(LinkDown(self._last_error))
        d = self._waiters.wait()
        d.addTimeout(self._wait, self.clock, onTimeoutCancel=self._timed_out)
        if self.state is not LinkState.OPENING:
            self._connect()
        return d

    def stopService(self) -> Deferred[object]:
        """Close the link and fail whoever waits for it; fires once the link is closed."""
        super().stopService()
        self.state = LinkState.STOPPED
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        self._waiters.fire(Failure(LinkDown("the client is stopping")))
        session = self._session
        if session is not None and session.closed_reason is None:
            closed = session.when_closed()
            session.close("client stopping")
            return closed  # type: ignore[return-value]
        return succeed(None)

    # --- inside ------------------------------------------------------------------------------

    def _timed_out(self, result: object, timeout: float) -> Failure:
        # Returned as a Failure: a plain value would become the waiter's *result*.
        why = f"no link to agent {self.agent!r} after {timeout:g} s: {self._last_error}"
        return Failure(LinkDown(why))

    def _connect(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self.state = LinkState.OPENING
        self._attempt = Deferred.fromCoroutine(self._open())
        self._attempt.addTimeout(self._attempt_timeout, self.clock)
        self._attempt.addCallbacks(self._up, self._failed)

    async def _open(self) -> MuxSession:
        factory = bind(
            websocket_client_factory(
                self.url, bearer_headers(self._token), _LinkProtocol, reactor=self.reactor
            ),
            self,
        )
        endpoint = client_endpoint(self.reactor, self.relay, self._ca_file)
        protocol: Any = await endpoint.connect(factory)
        try:
            session: MuxSession = await protocol.ready
            self._protocol = protocol
            return session
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
            raise

    def _up(self, session: MuxSession) -> None:
        self._attempt = None
        if self.state is LinkState.STOPPED:
            session.close("client stopping")
            return
        self.state = LinkState.UP
        if session is not self._session:
            self._session = session
            session.when_closed().addCallback(self._session_ended, session)
        if self._ups:
            self.reconnects += 1
        self._ups += 1
        self.up_since = self.clock.seconds()
        self._delay = 1.0
        self._last_final_at = None
        self._log.info(
            "link to agent {agent} via {relay} is up", agent=self.agent, relay=self.relay.netloc
        )
        self._waiters.fire(session)

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        error = failure.value
        assert error is not None
        if self.state is LinkState.STOPPED:
            return
        self.state = LinkState.IDLE
        if isinstance(error, CancelledError):
            self._last_error = "the relay did not answer in time"
        elif isinstance(error, ConnectError) and not isinstance(error, LinkClosed):
            self._last_error = explain_connect_error(failure)
        else:
            self._last_error = str(error)
        self._log.warn(
            "cannot open link to agent {agent}: {why}", agent=self.agent, why=self._last_error
        )
        if _is_final(error):
            self._last_final_at = self.clock.seconds()
            self._waiters.fire(Failure(LinkDown(self._last_error)))
        self._schedule_retry()

    def link_closed(self, protocol: _LinkProtocol, reason: str) -> None:
        """PROTOCOL's WebSocket closed; if it was our link, the link is lost."""
        if protocol is self._protocol and self.state is LinkState.UP:
            self._lost(reason)

    def _session_ended(self, reason: str, session: MuxSession) -> None:
        if self._session is session:
            self._session = None
            if self.state is LinkState.UP:
                # Ended while its link looked up (a link without a WebSocket, in tests).
                self._lost(reason)

    def _lost(self, reason: str) -> None:
        if self._session is not None and self._session.suspended_since is None:
            self._session = None
        self._protocol = None
        self.up_since = None
        self.rtt = None
        self._last_error = f"link lost: {reason}"
        if self.state is LinkState.STOPPED:
            return
        self.state = LinkState.IDLE
        self._log.warn("link to agent {agent} lost: {reason}", agent=self.agent, reason=reason)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        # Only a link someone asked for gets here: once used, it is kept up.
        cap = self._max_backoff
        if self.suspended_session() is not None:
            # Connections are waiting, open, for this link: look for it more often, so that
            # they go on within seconds of the relay's return, not a minute.
            cap = min(cap, SUSPENDED_MAX_BACKOFF)
        delay = min(self._delay, cap) * (0.5 + random.random() / 2)
        self._delay = min(self._delay * 2, cap)
        self.state = LinkState.BACKING_OFF
        self._retry = self.clock.callLater(delay, self._connect)
