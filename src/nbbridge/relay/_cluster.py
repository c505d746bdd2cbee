"""What one relay asks another over the bus when several share a store (scale-out).

Relays never talk to each other directly: the store says which relay holds an agent's
control connection (`AgentRegistry`: name -> that relay's advertise URL), and a pub/sub bus
beside it carries two small messages, each to one relay's own channel:

* ``dial`` — "a client waits for agent A at my URL: tell A to dial it". The relay holding A's
  control connection passes the dial message on, URL unchanged; the data connection reaches
  the relay where the client waits and is spliced there as on one relay.
* ``claimed`` — "agent A has just registered with me": the older holder checks the registry
  and, if the name is no longer its own, closes its connection to A (the newest wins
  everywhere, at once rather than at its next refresh).

Nothing else crosses between relays. The messages are encoded and decoded by pure
functions; `Cluster` is the relay core's part that sends and acts on them (sans-IO like the
core: the bus and the store are injected).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbbridge.contract import CloseCode, Dial, dial_message, parse_control_message, valid_name
from nbbridge.store import Bus, Refresh, Subscription

from ._auth import Refusal

if TYPE_CHECKING:
    from ._core import ControlPeer, PendingLink, Relay

#: Every relay listens on its own channel: this prefix and its advertise URL.
CHANNEL_PREFIX = "nbbridge:relay:"
#: A bus message bigger than this is not one of ours (a dial is ~200 bytes).
MAX_MESSAGE = 4096


def channel_for(where: str) -> str:
    """The bus channel of the relay that names itself WHERE (its advertise URL)."""
    return CHANNEL_PREFIX + where


@attrs.frozen
class DialRequest:
    """Ask the holder of AGENT's control connection to have it dial URL for LINK_ID."""

    agent: str
    link_id: str
    url: str


@attrs.frozen
class Claimed:
    """AGENT registered at relay WHERE: an older holder should check whether it lost it."""

    agent: str
    where: str


def encode(message: DialRequest | Claimed) -> bytes:
    """The bus message for MESSAGE (JSON)."""
    if isinstance(message, DialRequest):
        # The dial message the agent will get, verbatim: one definition of its shape.
        body = json.loads(dial_message(message.link_id, message.url))
        return json.dumps({"op": "dial", "agent": message.agent, "dial": body}).encode()
    return json.dumps({"op": "claimed", "agent": message.agent, "where": message.where}).encode()


def decode(payload: bytes) -> DialRequest | Claimed:
    """Parse a bus message; ValueError says what is wrong with it."""
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"bus message of {len(payload)} bytes (at most {MAX_MESSAGE})")
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"bus message is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ValueError("bus message is not a JSON object")
    agent = message.get("agent")
    if not isinstance(agent, str) or not valid_name(agent):
        raise ValueError("bus message without a valid agent name")
    op = message.get("op")
    if op == "claimed":
        where = message.get("where")
        if not isinstance(where, str) or not where:
            raise ValueError("claimed message without where")
        return Claimed(agent, where)
    if op != "dial":
        raise ValueError(f"unknown bus op {op!r}")
    # The same checks the agent makes: a data URL naming this link of this agent.
    dial = parse_control_message(json.dumps(message.get("dial")))
    if not isinstance(dial, Dial) or not dial.url.rstrip("/").endswith(
        f"/v1/agents/{agent}/data/{dial.link_id}"
    ):
        raise ValueError("dial message for another agent")
    return DialRequest(agent, dial.link_id, dial.url)


def _short(link_id: str) -> str:
    return link_id[:6]


class Cluster:
    """The relay core among others sharing a store: the bus, and what the store's health is.

    The `Relay` owns one when built with a bus, and calls it where its own table cannot
    answer: an agent registered here (`claim`), a link to an agent not held here
    (`dial_elsewhere`), each refresh round (`probe`), the store's connection changing
    (`health_changed`), `/status` (`status`).
    """

    _log = Logger()

    def __init__(self, relay: Relay, bus: Bus) -> None:
        self.relay = relay
        self.bus = bus
        self._subscription: Subscription | None = None
        self._subscribing = False
        #: why the shared store or bus cannot be used now (None: it can); /status shows it
        self.store_problem: str | None = None
        #: links set up here for agents held by other relays (/status)
        self.remote_dials = 0

    @property
    def where(self) -> str:
        return self.relay.where

    # -- the store's health ------------------------------------------------------------------

    def _ok(self) -> None:
        if self.store_problem is not None:
            self.store_problem = None
            self._log.info("store: connected; links to agents on other relays are served")

    def failed(self, why: str) -> None:
        """The store or the bus failed WHY: say so once, refuse cross-relay work until back."""
        if self.store_problem is None:
            self._log.error(
                "store: unreachable ({why}); links already up carry on, agents here are still "
                "served, links to agents on other relays are refused until it is back",
                why=why,
            )
        self.store_problem = why

    def health_changed(self, connected: bool, reason: str | None) -> None:
        """The shared store's connection was lost, or is back (its `Backend.watch`).

        Back: the store may have restarted empty, so every agent held here is registered
        again now (a refresh restores missing entries), and the bus is listened to again.
        """
        if not connected:
            self.failed(reason or "connection lost")
            return
        self._ok()
        self.relay.refresh_registry()
        self.start()

    async def probe(self, failed: str | None) -> None:
        """After a refresh round: say whether the store answers, and listen on the bus again.

        This relay's own key (``relay:relay:<where>``, expiring like an agent's entry) is
        written each round: it tells an operator which relays are alive, and it tries the
        store even when no agent is held here, so a store that is back is noticed.
        """
        registry = self.relay.registry
        if failed is None:
            try:
                await registry.store.set(f"relay:relay:{self.where}", b"alive", registry.ttl)
            except Exception as e:
                failed = str(e) or type(e).__name__
        if failed is not None:
            self.failed(failed)
            return
        self._ok()
        await self.start()

    # -- this relay's channel ----------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Listen on this relay's own bus channel (again, after a failure). Never fails."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self._subscription is not None or self._subscribing:
            return
        if self.store_problem is not None:
            return  # the store's health watch or the next refresh round calls again
        self._subscribing = True
        try:
            subscription = await self.bus.subscribe(channel_for(self.where), self._received)
        except Exception as e:
            self.failed(f"cannot subscribe to the bus: {e}")
            return
        finally:
            self._subscribing = False
        self._subscription = subscription
        self._log.info("bus: listening for other relays' requests as {where}", where=self.where)

    def stop(self) -> Deferred[None]:
        """Stop listening on the bus (the bus may be down: then there is nothing to undo)."""
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return succeed(None)
        return subscription.cancel().addErrback(lambda _: None)

    def _received(self, payload: bytes) -> None:
        """Another relay asks something of this one: a dial for an agent held here, or a check."""
        try:
            message = decode(payload)
        except ValueError as e:
            self._log.warn("bus: ignored a message: {why}", why=str(e))
            return
        peer = self.relay.peer_of(message.agent)
        if isinstance(message, DialRequest):
            if peer is None:
                # Gone since the other relay read the registry: its dial times out there.
                self._log.info(
                    "link {link} to {agent}: dial from another relay, but the agent is not "
                    "here (any more)",
                    link=_short(message.link_id),
                    agent=message.agent,
                )
                return
            self._log.info(
                "link {link} to {agent}: dialing for a client at another relay",
                link=_short(message.link_id),
                agent=message.agent,
            )
            peer.send_dial(message.link_id, message.url)
        elif peer is not None:
            self._log.info(
                "agent {agent} registered at {where}: checking who holds it",
                agent=message.agent,
                where=message.where,
            )
            self.relay.record("check", message.agent, self._check_holder(message.agent, peer))

    def _check_holder(self, name: str, peer: ControlPeer) -> Deferred[None]:
        d = self.relay.registry.refresh(name, self.where)

        def checked(result: Refresh) -> None:
            if result is Refresh.LOST:
                self.relay.lost(name, peer)

        return d.addCallback(checked)

    # -- what the core asks ------------------------------------------------------------------

    def claim(self, name: str) -> Deferred[None]:
        """Register NAME here; tell the relay that held it before (if any) that it lost it."""
        return Deferred.fromCoroutine(self._claim(name))

    async def _claim(self, name: str) -> None:
        registry = self.relay.registry
        try:
            before = await registry.where(name)
            await registry.register(name, self.where)
        except Exception as e:
            self.failed(str(e))
            raise
        self._ok()
        if before is not None and before != self.where:
            # Best effort: a dead relay gets nothing, and its entry is overwritten already.
            d = self.bus.publish(channel_for(before), encode(Claimed(name, self.where)))
            d.addErrback(self.relay.registry_failed, "tell the older holder of", name)

    def dial_elsewhere(self, pending: PendingLink) -> None:
        """PENDING's agent is not held here: find its relay and ask it to have the agent dial."""
        if self.store_problem is not None:
            self.relay.refuse_pending(pending, self._store_refusal(self.store_problem))
            return
        d = Deferred.fromCoroutine(self._ask_holder(pending))
        d.addErrback(self._ask_failed, pending)

    def _store_refusal(self, why: str) -> Refusal:
        return Refusal(
            CloseCode.RELAY_ERROR,
            f"the relays' shared store is unreachable ({why}): links to agents on other "
            "relays are refused until it is back",
        )

    async def _ask_holder(self, pending: PendingLink) -> None:
        relay = self.relay
        where = await relay.registry.where(pending.agent)
        self._ok()
        if not relay.still_pending(pending):
            return  # the client left meanwhile
        if where is None or where == self.where:
            self._log.info("link to {agent} refused: agent offline", agent=pending.agent)
            relay.refuse_pending(
                pending, Refusal(CloseCode.OFFLINE, f"agent {pending.agent!r} is offline")
            )
            return
        url = relay.dial_url(pending.agent, pending.link_id)
        request = DialRequest(pending.agent, pending.link_id, url)
        received = await self.bus.publish(channel_for(where), encode(request))
        if received == 0 and relay.still_pending(pending):
            self._log.info(
                "link to {agent} refused: its relay {where} does not answer",
                agent=pending.agent,
                where=where,
            )
            relay.refuse_pending(
                pending,
                Refusal(
                    CloseCode.OFFLINE,
                    f"agent {pending.agent!r} is registered at a relay that does not answer "
                    "(it may have just stopped; the agent reconnects to another)",
                ),
            )
            return
        self.remote_dials += 1

    def _ask_failed(self, failure: Failure, pending: PendingLink) -> None:
        why = failure.getErrorMessage()
        self.failed(why)
        if self.relay.still_pending(pending):
            self.relay.refuse_pending(pending, self._store_refusal(why))

    def status(self) -> dict[str, object]:
        """The ``cluster`` part of ``/status``."""
        result: dict[str, object] = {
            "where": self.where,
            "store": "ok" if self.store_problem is None else "unreachable",
            "bus": "listening" if self._subscription is not None else "not listening",
            "remote_dials": self.remote_dials,
        }
        if self.store_problem is not None:
            result["problem"] = self.store_problem
        return result
