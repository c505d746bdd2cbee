"""The pairing rendezvous, sans-IO: nameplates, matching the two sides, carrying their bytes.

An agent with its agent token opens a nameplate (a small number) and waits; the client joins
it by number with no token (the code is its secret). The relay then carries the two sides'
messages, which are SPAKE2 messages and ciphertext (`nbbridge.pairing`): it never sees a key,
a token or the code's words, and cannot complete the exchange itself.

Nameplates live in the store (`relay:pair:<n>`) with the code's TTL, so they expire by
themselves; a join *takes* the nameplate, so a code serves one attempt, right or wrong. The
live connections and their timers stay here, in one relay's memory: behind a load balancer
the nameplate message carries this relay's advertise URL, so the laptop is told to join
here. Opens and joins are rate-limited per address and in all, and an agent may hold only a
few open nameplates at once.
"""

from __future__ import annotations

import random
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from nbbridge.contract import NAMEPLATE_MAX, CloseCode, joined_message, nameplate_message
from nbbridge.store import ExpiringRecords, Store
from nbbridge.websocket import RefusalLog

from ._auth import Authority, Refusal
from ._config import Limits

#: Messages each side may send through the rendezvous (SPAKE2, confirm, offer, done + slack).
MAX_MESSAGES = 8
#: The largest message a pairing side may send (an offer is well under 4 KiB).
MAX_PAIR_MESSAGE = 16 * 1024
_ALLOCATION_TRIES = 12
_MAX_TRACKED_ADDRESSES = 4096


class PairPeer(Protocol):
    """One side's WebSocket, as the rendezvous sees it."""

    @property
    def gone(self) -> bool:
        """Whether the connection has closed (it may, while the store answers)."""

    def send_text(self, text: str) -> None:
        """Send a text message (relay -> agent: nameplate, joined)."""

    def send_binary(self, data: bytes) -> None:
        """Send a binary message carried from the other side."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with CODE and REASON."""


@attrs.frozen
class NameplateRecord:
    """A nameplate in the store: whose it is, and which relay process holds the agent."""

    agent: str
    where: str


@attrs.define(eq=False)
class _Pairing:
    """One nameplate opened here: the waiting agent, and the client once it joined."""

    nameplate: int
    agent: str
    agent_peer: PairPeer
    timer: IDelayedCall | None = None
    client_peer: PairPeer | None = None
    sent: dict[int, int] = attrs.field(factory=dict)

    def partner(self, peer: PairPeer) -> PairPeer | None:
        return self.client_peer if peer is self.agent_peer else self.agent_peer


@attrs.define
class _Window:
    """At most COUNT events per minute (a fixed window; enough against guessing floods)."""

    count: int
    start: float
    used: int = 0

    def allow(self, now: float) -> bool:
        if now - self.start >= 60.0:
            self.start, self.used = now, 0
        if self.used >= self.count:
            return False
        self.used += 1
        return True


class Rendezvous:
    """Nameplates and the pairings through them; decisions and bookkeeping only."""

    _log = Logger()

    def __init__(
        self,
        authority: Authority,
        limits: Limits,
        clock: IReactorTime,
        store: Store,
        where: str,
        rng: random.Random | None = None,
        advertise_url: str | None = None,
    ) -> None:
        self._authority = authority
        self._limits = limits
        self._clock = clock
        self._where = where
        #: told to the agent with its nameplate, so the laptop joins this relay (scale-out)
        self._advertise_url = advertise_url
        self._rng = rng or random.SystemRandom()
        self._nameplates = ExpiringRecords(store, "relay:pair:", NameplateRecord)
        self._open: dict[int, _Pairing] = {}
        self._by_peer: dict[PairPeer, _Pairing] = {}
        #: clients whose join waits on the store, with what they sent meanwhile: a client
        #: speaks as soon as its WebSocket is open, and a store over the network (Redis)
        #: answers after that; their messages are handed on once the join is done
        self._joining: dict[PairPeer, list[bytes]] = {}
        self._total = _Window(limits.pairings_per_minute, clock.seconds())
        self._per_address: dict[str, _Window] = {}
        self.refusals = RefusalLog(clock)
        #: pairings that reached the exchange (joined), for status and tests
        self.joined = 0

    def _rate_refusal(self, address: str) -> Refusal | None:
        now = self._clock.seconds()
        if address not in self._limits.per_ip_exempt:
            if len(self._per_address) >= _MAX_TRACKED_ADDRESSES:
                self._per_address = {
                    a: w for a, w in self._per_address.items() if now - w.start < 60.0
                }
            window = self._per_address.get(address)
            if window is None:
                if len(self._per_address) >= _MAX_TRACKED_ADDRESSES:
                    return self._refused("pairings_per_minute", address, "too many addresses")
                window = self._per_address[address] = _Window(
                    self._limits.pairings_per_ip_per_minute, now
                )
            if not window.allow(now):
                limit = self._limits.pairings_per_ip_per_minute
                return self._refused(
                    "pairings_per_ip_per_minute", address, f"pairings_per_ip_per_minute = {limit}"
                )
        if not self._total.allow(now):
            limit = self._limits.pairings_per_minute
            return self._refused("pairings_per_minute", address, f"pairings_per_minute = {limit}")
        return None

    def _refused(self, limit: str, address: str, detail: str) -> Refusal:
        self.refusals.refused(limit, address, f"pairing refused: {detail}")
        return Refusal(CloseCode.LIMIT, f"too many pairing attempts ({detail}); wait a minute")

    def open(self, agent: str, token: str | None, peer: PairPeer, address: str) -> Deferred[None]:
        """Agent AGENT (proven by TOKEN) asks for a nameplate; fires once answered or refused."""
        refusal = self._authority.check_agent(agent, token) or self._rate_refusal(address)
        if refusal is None:
            held = sum(1 for p in self._open.values() if p.agent == agent)
            if held >= self._limits.pairings_per_agent:
                refusal = self._refused(
                    "pairings_per_agent",
                    address,
                    f"agent {agent!r} has {held} codes open (pairings_per_agent)",
                )
        if refusal is not None:
            peer.close(refusal.code, refusal.reason)
            return Deferred.fromCoroutine(_nothing())
        return Deferred.fromCoroutine(self._allocate(agent, peer))

    async def _allocate(self, agent: str, peer: PairPeer) -> None:
        ttl = self._limits.pairing_code_ttl
        record = NameplateRecord(agent, self._where)
        for attempt in range(_ALLOCATION_TRIES):
            # Short numbers first; longer ones only when the short ones are busy.
            top = min(NAMEPLATE_MAX, 10 ** (2 + attempt // 3) - 1)
            nameplate = self._rng.randint(1, top)
            try:
                added = await self._nameplates.add(str(nameplate), record, ttl)
            except Exception as e:
                self._log.error("pairing: the store failed: {error}", error=str(e))
                peer.close(CloseCode.RELAY_ERROR, "the relay cannot store a pairing code now")
                return
            if added:
                break
        else:
            peer.close(CloseCode.LIMIT, "no free pairing code: try again in a minute")
            return
        if peer.gone:
            # The agent left while the store answered.
            self._free(nameplate)
            return
        pairing = _Pairing(nameplate, agent, peer)
        pairing.timer = self._clock.callLater(ttl, self._expired, pairing)
        self._open[nameplate] = pairing
        self._by_peer[peer] = pairing
        self._log.info(
            "pairing: agent {agent} opened code {nameplate}", agent=agent, nameplate=nameplate
        )
        peer.send_text(nameplate_message(nameplate, ttl, self._advertise_url))

    def _expired(self, pairing: _Pairing) -> None:
        pairing.timer = None
        if pairing.client_peer is None:
            pairing.agent_peer.close(CloseCode.PAIR_CODE_GONE, "the code expired unused")
        else:
            reason = "the pairing took too long"
            pairing.agent_peer.close(CloseCode.PAIR_PEER_LEFT, reason)
            pairing.client_peer.close(CloseCode.PAIR_PEER_LEFT, reason)
        self._forget(pairing)

    def join(self, nameplate: int, peer: PairPeer, address: str) -> Deferred[None]:
        """A client typed a code with NAMEPLATE: burn the nameplate and pair it with its agent."""
        refusal = self._rate_refusal(address)
        if refusal is not None:
            peer.close(refusal.code, refusal.reason)
            return Deferred.fromCoroutine(_nothing())
        self._joining[peer] = []
        return Deferred.fromCoroutine(self._join(nameplate, peer))

    async def _join(self, nameplate: int, peer: PairPeer) -> None:
        try:
            await self._join_now(nameplate, peer)
        finally:
            early = self._joining.pop(peer, [])
        if self._by_peer.get(peer) is not None:
            for data in early:
                self.carry(peer, data)

    async def _join_now(self, nameplate: int, peer: PairPeer) -> None:
        try:
            record = await self._nameplates.take(str(nameplate))
        except Exception as e:
            self._log.error("pairing: the store failed: {error}", error=str(e))
            peer.close(CloseCode.RELAY_ERROR, "the relay cannot read pairing codes now")
            return
        pairing = self._open.get(nameplate)
        if record is not None and record.where != self._where:
            # Relays sharing a store: the agent waits at another relay, and a rendezvous
            # lives in one relay's memory. The code is used up all the same (one try each).
            peer.close(
                CloseCode.PAIR_CODE_GONE,
                f"this pairing code was opened at another relay ({record.where}); use the "
                "--relay URL the GPU host printed (it names that relay); ask for a new code",
            )
            return
        if record is None or pairing is None:
            peer.close(
                CloseCode.PAIR_CODE_GONE,
                "no such pairing code: it is mistyped, used or expired; ask for a new one",
            )
            return
        if peer.gone:
            # The client left while the store answered: the code is used all the same.
            pairing.agent_peer.close(CloseCode.PAIR_PEER_LEFT, "the other side left at once")
            self._forget(pairing)
            return
        if pairing.timer is not None and pairing.timer.active():
            pairing.timer.cancel()
        pairing.timer = self._clock.callLater(self._limits.pairing_timeout, self._expired, pairing)
        pairing.client_peer = peer
        self._by_peer[peer] = pairing
        self.joined += 1
        self._log.info(
            "pairing: a client joined agent {agent}'s code {nameplate}",
            agent=pairing.agent,
            nameplate=nameplate,
        )
        pairing.agent_peer.send_text(joined_message())

    def carry(self, peer: PairPeer, data: bytes) -> None:
        """PEER sent DATA: hand it to the other side, unread."""
        early = self._joining.get(peer)
        if early is not None:
            if len(early) >= MAX_MESSAGES:
                peer.close(CloseCode.LIMIT, f"a pairing side sends at most {MAX_MESSAGES} messages")
                return
            early.append(data)
            return
        pairing = self._by_peer.get(peer)
        partner = pairing.partner(peer) if pairing is not None else None
        if pairing is None or partner is None:
            peer.close(CloseCode.NOT_PERMITTED, "nothing to send before the other side joined")
            return
        count = pairing.sent.get(id(peer), 0) + 1
        pairing.sent[id(peer)] = count
        if count > MAX_MESSAGES:
            peer.close(CloseCode.LIMIT, f"a pairing side sends at most {MAX_MESSAGES} messages")
            return
        partner.send_binary(data)

    def left(self, peer: PairPeer, code: int | None, reason: str | None) -> None:
        """PEER's connection closed (CODE and REASON as it said, if it did)."""
        self._joining.pop(peer, None)
        pairing = self._by_peer.get(peer)
        if pairing is None:
            return
        partner = pairing.partner(peer)
        if partner is not None:
            why = f"the other side left: {reason}" if reason else "the other side left"
            partner.close(CloseCode.PAIR_PEER_LEFT, why)
        self._forget(pairing)

    def _forget(self, pairing: _Pairing) -> None:
        if pairing.timer is not None and pairing.timer.active():
            pairing.timer.cancel()
        pairing.timer = None
        if self._open.get(pairing.nameplate) is pairing:
            del self._open[pairing.nameplate]
            if pairing.client_peer is None:
                # Never joined: free the number now rather than at its TTL.
                self._free(pairing.nameplate)
        for peer in (pairing.agent_peer, pairing.client_peer):
            if peer is not None and self._by_peer.get(peer) is pairing:
                del self._by_peer[peer]

    def _free(self, nameplate: int) -> None:
        d = self._nameplates.delete(str(nameplate))
        d.addErrback(
            lambda f: self._log.warn(
                "pairing: could not free code {nameplate}: {error}",
                nameplate=nameplate,
                error=f.getErrorMessage(),
            )
        )

    @property
    def waiting(self) -> int:
        """Codes open and not yet joined."""
        return sum(1 for p in self._open.values() if p.client_peer is None)


async def _nothing() -> None:
    return None
