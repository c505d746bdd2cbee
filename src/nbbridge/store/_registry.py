"""Which agents are online, and where: one expiring key per agent name.

A relay registers each agent whose control connection it holds, naming itself by ``where``
(its advertise URL, or an id of its own), refreshes the entries while the connections live,
and removes an entry when its connection ends — only if the entry is still its own, since the
agent may meanwhile have connected to another relay, whose newer entry must stay. A relay
that dies leaves entries that expire on their own after the TTL.
"""

from __future__ import annotations

import enum
from typing import Any

from twisted.internet.defer import Deferred

from ._interface import Store, check_ttl

#: How long an entry lives without a refresh; its holder refreshes it every TTL/3.
DEFAULT_AGENT_TTL = 30.0


class Refresh(enum.Enum):
    """What a refresh found."""

    #: the entry was still this holder's; its TTL starts again
    HELD = "held"
    #: the entry had gone (the store was restarted or flushed, or the holder stalled past the
    #: TTL) and no one else had claimed the name: it is written again
    RESTORED = "restored"
    #: another holder has the name now (a newer connection of the agent, elsewhere)
    LOST = "lost"


class AgentRegistry:
    """Agent name -> where its control connection lives, in any `Store`."""

    def __init__(
        self, store: Store, *, ttl: float = DEFAULT_AGENT_TTL, prefix: str = "relay:agent:"
    ) -> None:
        self.store = store
        self.ttl = check_ttl(ttl)
        self._prefix = prefix

    @property
    def refresh_interval(self) -> float:
        """How often a holder refreshes its entries: three chances before one expires."""
        return self.ttl / 3

    def _key(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError(f"an agent name is a non-empty str, not {name!r}")
        return self._prefix + name

    def register(self, name: str, where: str) -> Deferred[None]:
        """NAME is online at WHERE; the newest registration wins over any older one."""
        return self.store.set(self._key(name), _encode(where), self.ttl)

    def refresh(self, name: str, where: str) -> Deferred[Refresh]:
        """Extend NAME's entry if WHERE still holds it; write it again if it has vanished."""
        key, value = self._key(name), _encode(where)
        # Callbacks rather than a coroutine: a relay refreshes every entry it holds each
        # round (10 000 agents: 10 000 refreshes every 10 s), and this is the cheaper path.
        d: Deferred[Any] = self.store.expire_if(key, value, self.ttl)
        return d.addCallback(self._refreshed, key, value)

    def _refreshed(self, held: bool, key: str, value: bytes) -> Refresh | Deferred[Refresh]:
        if held:
            return Refresh.HELD
        # Absent, or someone else's. `add` tells the two apart atomically: it writes only
        # into an empty slot, so a newer holder's entry is never overwritten by a refresh.
        d = self.store.add(key, value, self.ttl)
        return d.addCallback(lambda added: Refresh.RESTORED if added else Refresh.LOST)

    def where(self, name: str) -> Deferred[str | None]:
        """Where NAME's control connection lives, or None if it is offline everywhere."""
        return Deferred.fromCoroutine(self._where(self._key(name)))

    async def _where(self, key: str) -> str | None:
        value = await self.store.get(key)
        return value.decode() if value is not None else None

    def unregister(self, name: str, where: str) -> Deferred[bool]:
        """NAME went offline at WHERE: remove its entry if WHERE still holds it."""
        return self.store.delete_if(self._key(name), _encode(where))

    def names(self) -> Deferred[list[str]]:
        """The names registered now, sorted (for listings; see `Store.scan`)."""
        return Deferred.fromCoroutine(self._names())

    async def _names(self) -> list[str]:
        keys = await self.store.scan(self._prefix)
        return [key[len(self._prefix) :] for key in keys]


def _encode(where: str) -> bytes:
    if not isinstance(where, str) or not where:
        raise ValueError(f"where an agent lives is a non-empty str, not {where!r}")
    return where.encode()
