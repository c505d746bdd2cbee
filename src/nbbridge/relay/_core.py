"""The relay's state, sans-IO: agents online, links waiting for a dial, links spliced.

The core never touches a transport or the reactor. It talks to connections through the small
`ControlPeer` and `LinkPeer` interfaces (the Autobahn protocols implement them) and keeps time
with an injected `IReactorTime`, so tests drive it with a `Clock`.

Which agents are online, and where, is also written to an `AgentRegistry` in a store
(`nbbridge.store`; in memory by default): the fact several relays share when they scale out.
The live peers, pending links and timers stay here: they belong to this process. With a bus
(`._cluster`), a client may ask for an agent held by another relay: the registry names that
relay, the bus carries the dial request to it, and the agent dials back here.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbbridge.contract import CloseCode, data_path
from nbbridge.store import AgentRegistry, Bus, MemoryStore, Refresh
from nbbridge.websocket import RefusalLog

from .. import __version__
from ._auth import Authority, Refusal
from ._cluster import Cluster
from ._config import Limits
from ._pairing import Rendezvous


class ControlPeer(Protocol):
    """An agent's control connection, as the core sees it."""

    def send_dial(self, link_id: str, url: str) -> None:
        """Ask the agent to open the data connection for LINK_ID at URL."""

    def send_registered(self, name: str) -> None:
        """Tell the agent it is registered as NAME (only then may it say it is online)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with CODE and REASON."""


class LinkPeer(Protocol):
    """A client's link waiting for its agent, as the core sees it."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with CODE and REASON."""


def new_link_id() -> str:
    """A one-time, unguessable link id (192 random bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def short(link_id: str) -> str:
    """Enough of a link id to follow it in logs, not enough to use it."""
    return link_id[:6]


@attrs.define(eq=False)
class AgentState:
    """What the relay knows about one agent name: its control peer (if online) and counters."""

    name: str
    peer: ControlPeer | None = None
    since: float = 0.0
    links: int = 0
    #: links waiting for this agent's dial answer: the relay's only table of them (a data
    #: connection names its agent, so a link is found here), so no second one can disagree
    pending: dict[str, PendingLink] = attrs.field(factory=dict)
    bytes: int = 0
    #: spliced links by client name (for links_per_client)
    client_links: dict[str, int] = attrs.field(factory=dict)

    def held_by(self, client: str) -> int:
        """Links CLIENT holds to this agent: spliced or waiting for the dial answer."""
        waiting = sum(1 for p in self.pending.values() if p.client == client)
        return self.client_links.get(client, 0) + waiting


@attrs.define(eq=False)
class PendingLink:
    """A client's link waiting for the agent's data connection."""

    link_id: str
    agent: str
    client: str
    peer: LinkPeer
    timer: IDelayedCall | None = None


@attrs.define(eq=False)
class ActiveLink:
    """A spliced link: client and agent data connection joined."""

    link_id: str
    agent: str
    client: str
    bytes: int = 0
    ended: bool = False


class Relay:
    """Registry of agents and links, and the decisions about them."""

    _log = Logger()

    def __init__(
        self,
        authority: Authority,
        limits: Limits,
        clock: IReactorTime,
        make_link_id: Callable[[], str] = new_link_id,
        advertise_url: str | None = None,
        registry: AgentRegistry | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.authority = authority
        #: where agents dial back to reach this relay, when several share the work (else the
        #: dial names only the data route, resolved against the URL the agent already uses)
        self.advertise_url = advertise_url.rstrip("/") if advertise_url else None
        self.limits = limits
        #: the relay's time (the hub beside it keeps the same)
        self.clock = clock
        self._make_link_id = make_link_id
        #: which agents are online and where, in a store (kept here: the peers themselves)
        self.registry = registry if registry is not None else AgentRegistry(MemoryStore(clock))
        #: how this relay names itself in the registry: its URL, or an id of this process
        self.where = self.advertise_url or f"relay:{secrets.token_hex(8)}"
        #: pairing rendezvous (`nbbridge pair`): nameplates in the same store
        self.pairing = Rendezvous(
            authority,
            limits,
            clock,
            self.registry.store,
            self.where,
            advertise_url=self.advertise_url,
        )
        self._agents: dict[str, AgentState] = {}
        #: agents whose control connection is open here (kept, not counted per registration:
        #: counting made registering 10 000 agents quadratic)
        self._online = 0
        self._links = 0
        self._bytes = 0
        #: dials an agent never answered: timed out, or the agent went offline first (/metrics)
        self.dial_failures = 0
        #: refusals for a limit, logged at most once a minute per limit (a flood of opens by
        #: one client must not fill the log)
        self.refusals = RefusalLog(clock)
        #: relays sharing the store, over its bus (None: this relay works alone)
        self.cluster = Cluster(self, bus) if bus is not None else None

    # -- agents ------------------------------------------------------------------------------

    def register_agent(self, name: str, token: str | None, peer: ControlPeer) -> Refusal | None:
        """An agent's control connection opened; register it, replacing an older one."""
        refusal = self.authority.check_agent(name, token)
        if refusal is not None:
            self._log.info("agent {agent} refused: {reason}", agent=name, reason=refusal.reason)
            return refusal
        state = self._agents.get(name)
        if (state is None or state.peer is None) and self._online >= self.limits.max_agents:
            reason = f"relay serves at most {self.limits.max_agents} agents (max_agents)"
            return self._over_limit("max_agents", f"agent {name}", reason)
        if state is None:
            state = self._agents[name] = AgentState(name)
        old, state.peer, state.since = state.peer, peer, self.clock.seconds()
        if old is None:
            self._online += 1
        if self.cluster is None:
            self.record("register", name, self.registry.register(name, self.where))
        else:
            self.record("register", name, self.cluster.claim(name))
        peer.send_registered(name)
        if old is not None:
            # The newer connection wins: the old one is usually a dead network path (sleep,
            # Wi-Fi change) that has not timed out yet.
            self._log.info("agent {agent} reconnected; closing its older connection", agent=name)
            old.close(CloseCode.REPLACED, "replaced by a newer connection of this agent")
            for link_id in state.pending:
                peer.send_dial(link_id, self.dial_url(name, link_id))
        else:
            self._log.info("agent {agent} online", agent=name)
        return None

    def agent_gone(self, agent: str, peer: ControlPeer) -> None:
        """AGENT's control connection PEER closed; if it was the current one, AGENT is offline.

        PEER may be an older connection already replaced by a newer one (closed with 4409), or
        one that was refused: then nothing changes. The caller names the agent, so this is one
        lookup rather than a search of every agent.
        """
        state = self._agents.get(agent)
        if state is None or state.peer is not peer:
            return
        state.peer = None
        self._online -= 1
        self._log.info("agent {agent} offline", agent=state.name)
        self.record("unregister", agent, self.registry.unregister(agent, self.where))
        for pending in list(state.pending.values()):
            self._drop_pending(pending)
            self.dial_failures += 1
            pending.peer.close(
                CloseCode.OFFLINE, f"agent {state.name!r} went offline before answering"
            )
        self._forget_if_idle(state)

    def _forget_if_idle(self, state: AgentState) -> None:
        if state.peer is None and state.links == 0 and not state.pending:
            del self._agents[state.name]

    def _over_limit(self, limit: str, who: str, reason: str) -> Refusal:
        """Refuse WHO (4429) for LIMIT with REASON, logged at most once a minute per limit."""
        self.refusals.refused(limit, who, reason)
        return Refusal(CloseCode.LIMIT, reason)

    # -- the registry in the store -----------------------------------------------------------

    def record(self, what: str, agent: str, d: Deferred[Any]) -> None:
        """Let a registry write run on; if it fails, say so (the local state stands)."""
        d.addErrback(self.registry_failed, what, agent)

    def registry_failed(self, failure: Failure, what: str, agent: str) -> None:
        self._log.error(
            "registry: could not {what} agent {agent}: {error}",
            what=what,
            agent=agent,
            error=failure.getErrorMessage(),
        )

    def refresh_registry(self) -> Deferred[None]:
        """Refresh the entry of every agent online here, before its TTL ends.

        The relay service calls this every `registry.refresh_interval`. It never fails: a
        problem is logged, and the next round tries again.
        """
        return Deferred.fromCoroutine(self._refresh_registry())

    async def _refresh_registry(self) -> None:
        online: list[tuple[str, ControlPeer]] = []
        for state in self._agents.values():
            if state.peer is not None:
                online.append((state.name, state.peer))
        try:
            # One call for them all: a few round trips per round, not one per agent.
            results = await self.registry.refresh_many([name for name, _ in online], self.where)
        except Exception as e:
            if online:  # one line for the round, not one per agent
                more = f" (and {len(online) - 1} more)" if len(online) > 1 else ""
                self.registry_failed(Failure(), "refresh", online[0][0] + more)
            if self.cluster is not None:
                await self.cluster.probe(str(e) or type(e).__name__)
            return
        if self.cluster is not None:
            await self.cluster.probe(None)
        for (name, peer), result in zip(online, results, strict=True):
            if result is Refresh.RESTORED:
                self._log.info("registry: entry of agent {agent} written again", agent=name)
                if not self.is_online(name):
                    # It went offline while the refresh ran: take the entry back out. (A
                    # newer connection of it here keeps the entry: it names this relay too.)
                    self.record("unregister", name, self.registry.unregister(name, self.where))
            elif result is Refresh.LOST:
                # Another relay registered a newer connection of this agent: it wins.
                self.lost(name, peer)

    def _holds(self, agent: str, peer: ControlPeer) -> bool:
        state = self._agents.get(agent)
        return state is not None and state.peer is peer

    # -- for the cluster (relays sharing a store: `._cluster`) ---------------------------------

    def peer_of(self, agent: str) -> ControlPeer | None:
        """AGENT's control connection here, or None."""
        state = self._agents.get(agent)
        return state.peer if state is not None else None

    def lost(self, agent: str, peer: ControlPeer) -> None:
        """The registry says another relay holds AGENT now: close PEER if still ours."""
        if self._holds(agent, peer):
            self._log.info(
                "agent {agent} registered elsewhere since; closing its connection here",
                agent=agent,
            )
            peer.close(CloseCode.REPLACED, "replaced by a newer connection of this agent")

    def still_pending(self, pending: PendingLink) -> bool:
        """Whether PENDING still waits for its dial answer (its client has not left)."""
        return self._find_pending(pending.agent, pending.link_id) is pending

    def refuse_pending(self, pending: PendingLink, refusal: Refusal) -> None:
        """Close PENDING's client with REFUSAL and forget the link."""
        self._drop_pending(pending)
        state = self._agents.get(pending.agent)
        if state is not None:
            self._forget_if_idle(state)
        pending.peer.close(refusal.code, refusal.reason)

    # -- links -------------------------------------------------------------------------------

    def request_link(self, agent: str, token: str | None, peer: LinkPeer) -> Refusal | PendingLink:
        """A client opened a link to AGENT: refuse it, or ask the agent to dial."""
        who = self.authority.check_client(agent, token)
        if isinstance(who, Refusal):
            self._log.info("link to {agent} refused: {reason}", agent=agent, reason=who.reason)
            return who
        link = f"link from {who.name} to {agent}"
        state = self._agents.get(agent)
        if (state is None or state.peer is None) and self.cluster is None:
            self._log.info("link to {agent} refused: agent offline", agent=agent)
            return Refusal(CloseCode.OFFLINE, f"agent {agent!r} is offline")
        if state is None:
            # Held by another relay, perhaps: kept while a link to it waits or is spliced here.
            state = AgentState(agent)
        if len(state.pending) >= self.limits.pending_dials_per_agent:
            n = len(state.pending)
            reason = f"agent {agent!r} has {n} dials pending (pending_dials_per_agent)"
            return self._over_limit("pending_dials_per_agent", link, reason)
        if state.links + len(state.pending) >= self.limits.links_per_agent:
            limit = self.limits.links_per_agent
            reason = f"agent {agent!r} has reached its limit of {limit} links (links_per_agent)"
            return self._over_limit("links_per_agent", link, reason)
        quota = self.limits.links_per_client
        # Without a relay.toml every client is "anyone": one quota would be everyone's.
        if not self.authority.open and state.held_by(who.name) >= quota:
            reason = f"client {who.name!r} holds {quota} links to this agent (links_per_client)"
            return self._over_limit("links_per_client", link, reason)
        link_id = self._make_link_id()
        pending = PendingLink(link_id, agent, who.name, peer)
        pending.timer = self.clock.callLater(self.limits.dial_timeout, self._dial_expired, pending)
        state.pending[link_id] = pending
        self._agents[agent] = state
        # No line of its own: "spliced", "no answer" or "client left" follows, naming it.
        if state.peer is not None:
            state.peer.send_dial(link_id, self.dial_url(agent, link_id))
        else:
            assert self.cluster is not None  # else refused as offline above
            self.cluster.dial_elsewhere(pending)
        return pending

    def dial_url(self, agent: str, link_id: str) -> str:
        """The URL (or path) the agent dials to answer LINK_ID."""
        return f"{self.advertise_url or ''}{data_path(agent, link_id)}"

    def _find_pending(self, agent: str, link_id: str) -> PendingLink | None:
        state = self._agents.get(agent)
        return state.pending.get(link_id) if state is not None else None

    def _drop_pending(self, pending: PendingLink) -> None:
        state = self._agents.get(pending.agent)
        if state is not None:
            state.pending.pop(pending.link_id, None)
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None

    def _dial_expired(self, pending: PendingLink) -> None:
        pending.timer = None
        self._drop_pending(pending)
        self.dial_failures += 1
        seconds = f"{self.limits.dial_timeout:g}"
        self._log.info(
            "link {link} from {client} to {agent}: no answer within {seconds} s",
            link=short(pending.link_id),
            client=pending.client,
            agent=pending.agent,
            seconds=seconds,
        )
        pending.peer.close(
            CloseCode.DIAL_TIMEOUT,
            f"agent {pending.agent!r} did not answer the dial within {seconds} s",
        )
        state = self._agents.get(pending.agent)
        if state is not None:
            self._forget_if_idle(state)

    def abandon_link(self, pending: PendingLink) -> None:
        """The client closed its link before the agent answered."""
        if self._find_pending(pending.agent, pending.link_id) is not pending:
            return
        self._drop_pending(pending)
        self._log.info(
            "link {link} from {client} to {agent}: client left before the agent answered",
            link=short(pending.link_id),
            client=pending.client,
            agent=pending.agent,
        )

    def answer_dial(
        self, agent: str, link_id: str, token: str | None
    ) -> Refusal | tuple[LinkPeer, ActiveLink]:
        """Agent AGENT opened the data connection for LINK_ID: hand back the waiting client."""
        refusal = self.authority.check_agent(agent, token)
        if refusal is not None:
            self._log.info(
                "data connection of {agent} refused: {reason}", agent=agent, reason=refusal.reason
            )
            return refusal
        # Only AGENT's own table is searched: another agent cannot answer AGENT's dial.
        pending = self._find_pending(agent, link_id)
        if pending is None:
            self._log.info("data connection of {agent}: no such link waiting", agent=agent)
            return Refusal(CloseCode.OFFLINE, "no link with this id is waiting (expired or used)")
        self._drop_pending(pending)
        link = ActiveLink(link_id, agent, pending.client)
        state = self._agents[agent]  # exists: pending links keep their agent's state
        state.links += 1
        state.client_links[link.client] = state.client_links.get(link.client, 0) + 1
        self._links += 1
        self._log.info(
            "link {link} from {client} to {agent}: spliced",
            link=short(link_id),
            client=pending.client,
            agent=agent,
        )
        return pending.peer, link

    def carried(self, link: ActiveLink, size: int) -> None:
        """SIZE payload bytes went through LINK (either direction)."""
        link.bytes += size
        self._bytes += size
        state = self._agents.get(link.agent)
        if state is not None:
            state.bytes += size

    def link_ended(self, link: ActiveLink) -> None:
        """A spliced link closed (either side)."""
        if link.ended:
            return
        link.ended = True
        self._links -= 1
        state = self._agents.get(link.agent)
        if state is not None:
            state.links -= 1
            left = state.client_links.pop(link.client, 0) - 1
            if left > 0:
                state.client_links[link.client] = left
            self._forget_if_idle(state)
        self._log.info(
            "link {link} to {agent} closed after {bytes} bytes",
            link=short(link.link_id),
            agent=link.agent,
            bytes=link.bytes,
        )

    # -- status ------------------------------------------------------------------------------

    def status(self, *, admin: bool = False) -> dict[str, Any]:
        """Counters for GET /status; with ADMIN, also each online agent. Never a secret."""
        online = sorted(
            (s for s in self._agents.values() if s.peer is not None), key=lambda s: s.name
        )
        result: dict[str, Any] = {
            "version": __version__,
            "agents_online": len(online),
            "links": self._links,
            "bytes": self._bytes,
        }
        if self.cluster is not None:
            result["cluster"] = self.cluster.status()
        if admin:
            result["agents"] = [
                {
                    "name": s.name,
                    "since": _iso(s.since),
                    "links": s.links,
                    "bytes": s.bytes,
                }
                for s in online
            ]
        return result

    def is_online(self, agent: str) -> bool:
        """Whether AGENT has a control connection."""
        state = self._agents.get(agent)
        return state is not None and state.peer is not None

    @property
    def pending_count(self) -> int:
        """How many links wait for a dial answer (summed over agents, for /status and /metrics)."""
        return sum(len(s.pending) for s in self._agents.values())


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")
