"""Resumption, sans-IO: the secrets, the retransmit buffer, and what to do with a peer's entries.

A resumable session (docs/resume.md) outlives its link. Everything here is pure logic over
bytes and numbers, with no transport and no clock, so the state machine is unit-tested
with plain values; ``MuxSession`` carries out what it decides.

* :class:`ResumeSecrets` — the session id and the resume key, both derived from the secret
  exported by the session's first Noise handshake, and the proofs that bind a RESUME (and
  its answer) to the fresh handshake of the new link.
* :class:`Retransmit` — a channel's bytes sent but not yet acknowledged.
* :func:`plan_channel` — for one channel of ours and the peer's entry for it (or none):
  what to re-send, what credit to take, whether to re-send CLOSE, or why to reset.
* :class:`SessionRegistry` — the agent's suspended sessions, by id; a RESUME is checked here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import attrs

from nbbridge.wire import ENTRY_DISCARD, ENTRY_FIN, PROOF_SIZE, SESSION_ID_SIZE, ResumeEntry

if TYPE_CHECKING:
    from ._session import MuxSession

#: The feature token a peer puts in its handshake payload when it can resume sessions.
RESUME_FEATURE: Final = b"resume/1"
#: The version carried by HELLO.
RESUME_VERSION: Final = 1
#: The default grace period, in seconds: how long a suspended session waits for its link.
DEFAULT_GRACE: Final = 600


def features_payload(*features: bytes) -> bytes:
    """The handshake payload naming FEATURES (space-separated tokens)."""
    return b" ".join(features)


def peer_features(payload: bytes | None) -> frozenset[bytes]:
    """The feature tokens in a peer's handshake payload (older peers send none)."""
    return frozenset((payload or b"").split())


def _keyed(secret: bytes, label: bytes, size: int = 32) -> bytes:
    return hashlib.blake2s(label, key=secret, digest_size=size).digest()


@attrs.frozen
class ResumeSecrets:
    """What identifies a session and proves a resumer took part in it.

    Both come from the session secret Noise exported at the session's first handshake,
    which only the client and the agent know (the handshake hash, by contrast, can be
    computed by anyone who saw the handshake messages, the relay included).
    """

    session_id: bytes
    key: bytes = attrs.field(repr=False)

    @classmethod
    def derive(cls, session_secret: bytes) -> ResumeSecrets:
        return cls(
            _keyed(session_secret, b"nbbridge/1 session id", SESSION_ID_SIZE),
            _keyed(session_secret, b"nbbridge/1 resume key"),
        )

    def proof(self, role: bytes, handshake_hash: bytes) -> bytes:
        """HMAC-BLAKE2s over the new link's handshake hash: valid for that link only."""
        mac = hmac.new(self.key, b"nbbridge/1 " + role + b"\x00" + handshake_hash, "blake2s")
        digest = mac.digest()
        assert len(digest) == PROOF_SIZE
        return digest

    def check(self, role: bytes, handshake_hash: bytes, proof: bytes) -> bool:
        return hmac.compare_digest(self.proof(role, handshake_hash), proof)


#: The two proofs' roles: the client's RESUME and the agent's RESUMED.
CLIENT_PROOF: Final = b"resume"
AGENT_PROOF: Final = b"resumed"


class Retransmit:
    """The bytes of one direction of a channel from ``acked`` to ``sent``, kept for a resend.

    Flow control bounds them: the peer acknowledges as it consumes, and the sender may be at
    most one window ahead of what the peer consumed, so this holds about one window.
    """

    __slots__ = ("_chunks", "acked", "sent")

    def __init__(self, sent: int = 0) -> None:
        self._chunks: deque[bytes] = deque()
        self.acked = sent
        self.sent = sent

    def __len__(self) -> int:
        return self.sent - self.acked

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self.sent += len(data)

    def ack(self, offset: int) -> None:
        """The peer holds everything before OFFSET: forget it (a stale ack does nothing)."""
        drop = min(offset, self.sent) - self.acked
        chunks = self._chunks
        while drop > 0 and chunks:
            first = chunks[0]
            if len(first) <= drop:
                chunks.popleft()
                drop -= len(first)
                self.acked += len(first)
            else:
                chunks[0] = first[drop:]
                self.acked += drop
                drop = 0

    def since(self, offset: int) -> list[bytes]:
        """The bytes from OFFSET (acked <= OFFSET <= sent) to the end, in order."""
        skip = offset - self.acked
        out: list[bytes] = []
        for chunk in self._chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            out.append(chunk[skip:] if skip else chunk)
            skip = 0
        return out


@attrs.frozen
class ChannelPosition:
    """Where one of our channels stands, as the resume plan needs it."""

    channel: int
    #: bytes we acknowledged-or-not but hold (the peer re-sends from here)
    received: int
    #: the absolute offset up to which the peer may send
    limit: int
    fin_received: bool
    #: the retransmit buffer's range (what we can re-send)
    acked: int
    sent: int
    fin_sent: bool
    #: we closed both ways and drop what comes (tell the peer: do not re-send)
    discarding: bool = False

    def entry(self) -> ResumeEntry:
        if self.discarding:
            return ResumeEntry(self.channel, ENTRY_DISCARD, 0, 0)
        flags = ENTRY_FIN if self.fin_received else 0
        return ResumeEntry(self.channel, flags, self.received, self.limit)


@attrs.frozen
class ChannelPlan:
    """What to do for one channel after both sides' entries are known."""

    #: re-send our bytes from this offset (None: nothing to re-send)
    resend_from: int | None = None
    #: re-send our CLOSE after the bytes
    resend_close: bool = False
    #: our send credit from now on, counted from ``sent``
    credit: int = 0
    #: the peer holds our CLOSE: the channel's sending side is fully acknowledged
    fin_acked: bool = False
    #: reset the channel, for this reason (None: it goes on)
    reset: str | None = None


#: Credit for a peer that drops what we send (it closed both ways): any will do.
DISCARD_CREDIT: Final = 0x7FFFFFFF


def plan_channel(ours: ChannelPosition, theirs: ResumeEntry | None) -> ChannelPlan:
    """The plan for one channel of ours, given the peer's entry for it (None: it has none)."""
    if theirs is None:
        return ChannelPlan(reset="the other end no longer has this channel")
    if theirs.flags & ENTRY_DISCARD:
        return ChannelPlan(credit=DISCARD_CREDIT, resend_close=ours.fin_sent, fin_acked=False)
    received = theirs.received
    if not ours.acked <= received <= ours.sent:
        return ChannelPlan(
            reset=(
                f"cannot resume: the other end holds {received} bytes, and this end kept "
                f"bytes {ours.acked} to {ours.sent} only"
            )
        )
    fin_acked = ours.fin_sent and bool(theirs.flags & ENTRY_FIN)
    if theirs.flags & ENTRY_FIN and not ours.fin_sent:
        return ChannelPlan(reset="cannot resume: the other end claims a CLOSE never sent")
    credit = max(0, theirs.limit - ours.sent)
    return ChannelPlan(
        resend_from=received if received < ours.sent else None,
        resend_close=ours.fin_sent and not fin_acked,
        credit=credit,
        fin_acked=fin_acked,
    )


#: Suspended sessions the agent keeps per client key: a client that keeps starting new
#: sessions (restarted, or two laptops sharing a key) cannot pile up suspended ones.
MAX_SESSIONS_PER_CLIENT: Final = 8


class SessionRegistry:
    """The agent's resumable sessions, by session id; RESUME requests are checked here.

    At most ``per_client`` suspended sessions per client key: one more suspending ends the
    oldest suspended session of that key (its channels are reset, and it says so). Sessions
    on a live link are never ended for this: they are bounded by the relay's link limits, and
    ending one would cut a user's working connections only because the same key has others.
    """

    def __init__(self, per_client: int = MAX_SESSIONS_PER_CLIENT) -> None:
        self._sessions: dict[bytes, MuxSession] = {}
        self._per_client = per_client

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[MuxSession]:
        return iter(list(self._sessions.values()))

    def add(self, session_id: bytes, session: MuxSession) -> None:
        self._sessions[session_id] = session

    def suspended(self, session: MuxSession) -> None:
        """SESSION lost its link: end the oldest suspended ones of its key beyond the cap."""
        _, key = session.resume_identity()
        waiting = [
            s
            for s in self._sessions.values()
            if s.suspended_since is not None and s.resume_identity()[1] == key
        ]
        waiting.sort(key=lambda s: s.suspended_since or 0.0)
        for old in waiting[: max(0, len(waiting) - self._per_client)]:
            old.close(
                f"more than {self._per_client} suspended sessions for this client key; "
                "the oldest ends"
            )

    def remove(self, session_id: bytes, session: MuxSession) -> None:
        if self._sessions.get(session_id) is session:
            del self._sessions[session_id]

    def claim(
        self,
        session_id: bytes,
        proof: bytes,
        handshake_hash: bytes | None,
        client_key: object,
    ) -> tuple[MuxSession | None, str]:
        """The session a RESUME names, if the request is genuine; else None and why not.

        Genuine: the session exists, the new link's client key is the session's, and the
        proof was made with the session's resume key over the new link's handshake hash.
        """
        session = self._sessions.get(session_id)
        if session is None:
            return None, "unknown session (its grace period ended, or the agent restarted)"
        secrets, owner = session.resume_identity()
        if secrets is None or handshake_hash is None:
            return None, "the session cannot be resumed"
        if owner is None or client_key is None or owner != client_key:
            return None, "the session belongs to another client key"
        if not secrets.check(CLIENT_PROOF, handshake_hash, proof):
            return None, "bad proof (not made with the session's resume key for this link)"
        return session, ""
