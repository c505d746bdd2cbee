"""Resumption, the session's part: suspend on a lost link, resume on a new one (docs/resume.md).

``Resumable`` is a mixin of ``MuxSession``, kept apart so that each module stays readable: it
holds what the session does with the frames HELLO, RESUME, RESUMED and ACK, and when its link
is lost or replaced. The decisions themselves (secrets, proofs, what to re-send) are the pure
functions of ``_resume``; this only carries them out on the session's channels. ``LinkEnd``
is what a link's secure channel wraps, so that a session can move from link to link.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbbridge.wire import (
    ENTRY_DISCARD,
    Ack,
    FrameDecoder,
    Hello,
    Reason,
    Resume,
    Resumed,
    ResumeEntry,
    encode,
)

from ._channel import Channel
from ._errors import SessionClosed
from ._resume import (
    AGENT_PROOF,
    CLIENT_PROOF,
    DEFAULT_GRACE,
    RESUME_FEATURE,
    RESUME_VERSION,
    ResumeSecrets,
    SessionRegistry,
    peer_features,
    plan_channel,
)

if TYPE_CHECKING:
    from ._session import MuxSession


class Resumable:
    """What a MuxSession does to outlive its link (mixed into MuxSession, state there)."""

    if TYPE_CHECKING:
        _log: Logger
        transport: ITransport | None
        label: str
        channels: dict[int, Channel]
        opening: dict[int, Deferred[Channel]]
        _open_requests: dict[int, tuple[str, tuple[tuple[str, str], ...], int]]
        _accepting: dict[int, tuple[Deferred[IProtocol], Channel]]
        _draining: OrderedDict[int, int]
        _finishing: dict[int, Channel]
        _initiator: bool
        _grace: float | None
        _registry: SessionRegistry | None
        _secrets: ResumeSecrets | None
        _peer_key: object | None
        _peer_grace: int | None
        _suspended_at: float | None
        _grace_call: IDelayedCall | None
        _resuming: bool
        _link: LinkEnd | None
        _handed_to: MuxSession | None
        _clock: IReactorTime
        _connected: bool
        _paused: bool
        _decoder: FrameDecoder
        _closed_reason: str | None
        on_ready: Callable[[MuxSession], None] | None
        on_suspended: Callable[[str], None] | None
        on_resumed: Callable[[float], None] | None
        suspensions: int
        resumes: int
        last_suspended_for: float | None
        resent_bytes: int
        bytes_out: int

        def _write(self, data: bytes) -> None: ...
        def _write_session(self, data: bytes) -> None: ...
        def _send_reset(self, cid: int, code: int, reason: str) -> None: ...
        def _protocol_error(self, reason: str) -> None: ...
        def _abandon_accept(self, cid: int, why: str) -> bool: ...
        def _forget_open(self, cid: int) -> None: ...
        def _remember_closed(self, cid: int) -> None: ...
        def _end(self, reason: str) -> None: ...
        def makeConnection(self, transport: ITransport) -> None: ...

    def _start_fresh(self) -> None:
        """A new session on this link: the client offers resumption if the agent can."""
        transport = self.transport
        secret = getattr(transport, "session_secret", None)
        features = peer_features(getattr(transport, "peer_payload", b""))
        if self._initiator and self._grace and secret and RESUME_FEATURE in features:
            self._write_session(encode(Hello(RESUME_VERSION, int(self._grace))))
            self._become_resumable(secret)
        if self.on_ready is not None:
            self.on_ready(cast("MuxSession", self))

    def _become_resumable(self, secret: bytes) -> None:
        self._secrets = ResumeSecrets.derive(secret)
        self._peer_key = getattr(self.transport, "remote_static", None)
        if self._registry is not None:
            self._registry.add(self._secrets.session_id, cast("MuxSession", self))

    def _on_hello(self, frame: Hello) -> None:
        if self._initiator:
            self._peer_grace = frame.grace
            return
        if self._secrets is not None or self.channels or self._accepting:
            self._protocol_error("HELLO after the session started")
            return
        secret = getattr(self.transport, "session_secret", None)
        if not self._grace or not secret:
            return  # we did not offer resumption: the session stays an ordinary one
        self._peer_grace = frame.grace
        self._become_resumable(secret)
        self._write_session(encode(Hello(RESUME_VERSION, int(self._grace))))

    def _grace_period(self) -> float:
        grace = float(self._grace or DEFAULT_GRACE)
        if self._initiator and self._peer_grace is not None:
            # The agent's bound is the one that counts: it will not wait longer than it said.
            grace = min(grace, float(self._peer_grace))
        return grace

    def _suspend(self, why: str) -> None:
        """The link is lost: keep the channels, paused, and wait for a new one."""
        first = self._suspended_at is None
        self._connected = False
        self._resuming = False
        self.transport = None
        self._link = None
        self._decoder = FrameDecoder()
        for ch in list(self.channels.values()):
            if self._paused:
                ch._resume_producer("session")
        self._paused = False
        if not first:
            self._log.info(
                "{label}: link lost again while resuming: {why}", label=self.label, why=why
            )
            return
        self._suspended_at = self._clock.seconds()
        self.suspensions += 1
        # Opens under way cannot be carried over: whoever waits is told, as for a lost link.
        opening, self.opening = self.opening, {}
        for cid in list(self._open_requests):
            self._forget_open(cid)
        for cid in list(self._accepting):
            self._abandon_accept(cid, f"link lost while connecting: {why}")
            self._remember_closed(cid)
        for ch in list(self.channels.values()):
            ch._suspend()
        grace = self._grace_period()
        self._grace_call = self._clock.callLater(grace, self._expire, grace)
        self._log.info(
            "{label}: link lost ({why}); session suspended, {n} channels kept for up to "
            "{grace:g} s",
            label=self.label,
            why=why,
            n=len(self.channels),
            grace=grace,
        )
        for d in opening.values():
            d.errback(SessionClosed(f"link lost while the channel was being opened: {why}"))
        if self._registry is not None and self._secrets is not None:
            self._registry.suspended(cast("MuxSession", self))
        if self.on_suspended is not None:
            self.on_suspended(why)

    def _stop_grace(self) -> None:
        if self._grace_call is not None and self._grace_call.active():
            self._grace_call.cancel()
        self._grace_call = None

    def _expire(self, grace: float) -> None:
        self._grace_call = None
        n = len(self.channels)
        self._log.warn(
            "{label}: session not resumed within the {grace:g} s grace period: ended, "
            "{n} channels reset",
            label=self.label,
            grace=grace,
            n=n,
        )
        self._end(f"link not back within the {grace:g} s grace period")

    def _entries(self) -> tuple[ResumeEntry, ...]:
        """Where each channel we know stands: what we sent as RESUME or RESUMED."""
        entries = [ch._position().entry() for ch in self.channels.values()]
        for cid, ch in self._finishing.items():
            if cid not in self.channels:
                entries.append(ch._position(discarding=cid in self._draining).entry())
        for cid in self._draining:
            if cid not in self.channels and cid not in self._finishing:
                entries.append(ResumeEntry(cid, ENTRY_DISCARD, 0, 0))
        return tuple(entries)

    def _send_resume(self) -> None:
        """Client, on a new link: ask the agent to go on with this session."""
        secrets = self._secrets
        handshake_hash = getattr(self.transport, "handshake_hash", None)
        features = peer_features(getattr(self.transport, "peer_payload", b""))
        if secrets is None or handshake_hash is None or RESUME_FEATURE not in features:
            self._restart_fresh("the agent does not resume sessions (older, or resumption off)")
            return
        self._resuming = True
        proof = secrets.proof(CLIENT_PROOF, handshake_hash)
        self._write_session(encode(Resume(secrets.session_id, proof, self._entries())))

    def _on_resume(self, frame: Resume) -> None:
        """Agent, on a fresh link: a client asks to go on with one of our sessions."""
        if self._initiator or self._registry is None:
            self._protocol_error("unexpected RESUME")
            return
        if self._secrets is not None or self.channels or self._accepting or self.opening:
            self._protocol_error("RESUME after the session started")
            return
        transport = self.transport
        client = getattr(transport, "remote_static", None)
        target, why = self._registry.claim(
            frame.session_id, frame.proof, getattr(transport, "handshake_hash", None), client
        )
        if target is None or target is self or transport is None:
            self._log.warn(
                "{label}: refused to resume a session for client {client}: {why}",
                label=self.label,
                client=client,
                why=why,
            )
            self._write_session(encode(Resumed(Reason.RESUME_REFUSED, bytes(32), (), why)))
            return
        link = self._link
        transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport = None
        self._connected = False
        self._link = None
        self._handed_to = target
        if link is not None:
            link.session = target
        target._adopt(transport, link, frame)

    def _adopt(self, transport: object, link: LinkEnd | None, frame: Resume) -> None:
        """Agent: take over the link a RESUME for this session came on, and answer it."""
        if self._connected and self.transport is not None:
            # Still on an older link whose loss has not reached us (a client that changed
            # networks): that link is dropped, and what it carried is re-sent on the new one.
            old = self.transport
            old.unregisterProducer()  # type: ignore[attr-defined]
            self._suspend("replaced by a newer link from the same client")
            old.abortConnection()  # type: ignore[attr-defined]
        self._link = link
        self.makeConnection(cast(ITransport, transport))
        secrets = self._secrets
        handshake_hash = getattr(transport, "handshake_hash", None)
        assert secrets is not None and handshake_hash is not None
        proof = secrets.proof(AGENT_PROOF, handshake_hash)
        self._write_session(encode(Resumed(0, proof, self._entries())))
        self._finish_resume(frame.entries)

    def _on_resumed(self, frame: Resumed) -> None:
        """Client: the agent's answer to our RESUME."""
        if not self._resuming or self._secrets is None:
            self._protocol_error("unexpected RESUMED")
            return
        self._resuming = False
        if frame.code != 0:
            self._restart_fresh(f"the agent refused: {frame.text}")
            return
        handshake_hash = getattr(self.transport, "handshake_hash", None)
        if handshake_hash is None or not self._secrets.check(
            AGENT_PROOF, handshake_hash, frame.proof
        ):
            self._protocol_error("RESUMED with a bad proof")
            return
        self._finish_resume(frame.entries)

    def _finish_resume(self, theirs: tuple[ResumeEntry, ...]) -> None:
        """Both sides' entries are known: re-send what the peer lacks, and go on."""
        now = self._clock.seconds()
        started = now if self._suspended_at is None else self._suspended_at
        duration = now - started
        self._suspended_at = None
        self._stop_grace()
        before = self.bytes_out
        self._apply_entries(theirs)
        self.resumes += 1
        self.last_suspended_for = duration
        self.resent_bytes += self.bytes_out - before
        self._log.info(
            "{label}: session resumed after {duration:.1f} s: {n} channels go on, "
            "{resent} bytes sent again",
            label=self.label,
            duration=duration,
            n=len(self.channels),
            resent=self.bytes_out - before,
        )
        if self.on_resumed is not None:
            self.on_resumed(duration)
        if self.on_ready is not None:
            self.on_ready(cast("MuxSession", self))

    def _apply_entries(self, theirs: tuple[ResumeEntry, ...]) -> None:
        by_id = {e.channel: e for e in theirs}
        for cid, ch in list(self.channels.items()):
            plan = plan_channel(ch._position(), by_id.pop(cid, None))
            if plan.reset is not None:
                self._log.warn(
                    "{label}: channel {cid} ({service}) reset on resume: {why}",
                    label=self.label,
                    cid=cid,
                    service=ch.service,
                    why=plan.reset,
                )
                ch.reset(Reason.SESSION_CLOSED, plan.reset)
                continue
            ch._resume(plan)
        for cid, ch in list(self._finishing.items()):
            entry = by_id.pop(cid, None)
            if entry is None:
                del self._finishing[cid]
                continue
            plan = plan_channel(ch._position(discarding=cid in self._draining), entry)
            if plan.reset is not None:
                del self._finishing[cid]
                self._send_reset(cid, Reason.SESSION_CLOSED, plan.reset)
                continue
            ch._resume(plan)
            if plan.fin_acked and not ch._owes_peer():
                del self._finishing[cid]
        for cid in list(by_id):
            if cid in self._draining:
                del by_id[cid]
        for cid in by_id:
            # The peer has a channel we no longer know (reset or ended while apart).
            self._send_reset(cid, Reason.SESSION_CLOSED, f"unknown channel {cid} after resume")

    def _restart_fresh(self, why: str) -> None:
        """Client: the session cannot be resumed; reset its channels, start anew on this link."""
        channels, self.channels = self.channels, {}
        self._log.warn(
            "{label}: session could not be resumed ({why}): {n} channels reset",
            label=self.label,
            why=why,
            n=len(channels),
        )
        self._stop_grace()
        self._finishing.clear()
        self._draining.clear()
        self._resuming = False
        self._suspended_at = None
        self._secrets = None
        for ch in channels.values():
            ch._on_session_lost(f"session could not be resumed: {why}")
        self._start_fresh()

    def _on_ack(self, frame: Ack) -> None:
        cid = frame.channel
        ch = self.channels.get(cid) or self._finishing.get(cid)
        if ch is not None and ch._on_ack(frame.received, frame.fin) and cid in self._finishing:
            del self._finishing[cid]


class LinkEnd(Protocol):
    """One link's end of a session: what the secure channel wraps.

    A resumable session outlives its links, so the link does not talk to it directly: each
    link gets a LinkEnd, and only the one the session is attached through is heard. Events of
    a link the session left (replaced by a newer one) are ignored. On the agent a LinkEnd
    starts with a fresh session and moves to the one a RESUME names.
    """

    def __init__(self, session: MuxSession) -> None:
        self.session = session

    def connectionMade(self) -> None:
        self.session._link = self
        self.session.makeConnection(self.transport)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        if self.session._link is self:
            self.session.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.session._link is self:
            self.session._link = None
            self.session.connectionLost(reason)
