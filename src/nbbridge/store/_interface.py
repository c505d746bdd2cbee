"""The store's one backend interface: str keys, bytes values, expiring keys, Deferreds.

Every service keeps its state (which agent is where, one-time nonces, sessions, reservations,
replay memory) through this small set of operations so that the memory store (one process)
and a Redis store (several relays, issue 13) are interchangeable. Each operation is a single
atomic step on one key — in Redis one command or one short Lua script — so no caller ever
needs a lock or a read-modify-write of its own:

==============================  ===========================================================
operation                       Redis
==============================  ===========================================================
``get(key)``                    ``GET key``
``set(key, value, ttl)``        ``SET key value [PX ms]``
``add(key, value, ttl)``        ``SET key value NX [PX ms]``
``take(key)``                   ``GETDEL key`` (Redis >= 6.2)
``delete(key)``                 ``DEL key``
``delete_if(key, value)``       Lua: ``if GET == value then DEL``
``expire(key, ttl)``            ``PEXPIRE key ms``
``expire_if(key, value, ttl)``  Lua: ``if GET == value then PEXPIRE``
``expire_if_many(items, ttl)``  the same Lua over many keys (one call per 1 000 keys)
``scan(prefix)``                ``SCAN 0 MATCH <escaped prefix>* ...`` (not a snapshot)
==============================  ===========================================================

TTLs are seconds (float) and are enforced by the store: once a key's TTL has passed it reads
as absent, whoever asks, with no timer of the caller's. Namespaces are key prefixes
(``"relay:agent:"``, ``"datalab:nonce:"`` ...); the facades in this package add them.

Arguments are checked at once: a wrong type or a TTL that is not a positive finite number
raises `TypeError`/`ValueError` before anything is stored (a caller's bug, not the store's);
the store's own failures (a lost connection to Redis) arrive as errbacks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred


class Store(Protocol):
    """State with expiring keys; every operation is atomic and answers with a Deferred."""

    def get(self, key: str) -> Deferred[bytes | None]:
        """The value of KEY, or None if it is absent or expired."""

    def set(self, key: str, value: bytes, ttl: float | None) -> Deferred[None]:
        """Store VALUE at KEY (replacing any value), expiring after TTL s (None: never)."""

    def add(self, key: str, value: bytes, ttl: float | None) -> Deferred[bool]:
        """Store VALUE at KEY only if KEY is absent; True if stored (exactly one of a race wins)."""

    def take(self, key: str) -> Deferred[bytes | None]:
        """Get and delete KEY in one step: of several takers, only one gets the value."""

    def delete(self, key: str) -> Deferred[bool]:
        """Delete KEY; True if it was there."""

    def delete_if(self, key: str, value: bytes) -> Deferred[bool]:
        """Delete KEY only if it still holds VALUE (a holder removes only its own entry)."""

    def expire(self, key: str, ttl: float) -> Deferred[bool]:
        """KEY now expires TTL s from now; False (and nothing changes) if it is absent."""

    def expire_if(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        """Like `expire`, only if KEY still holds VALUE (a holder refreshes only its own entry)."""

    def expire_if_many(
        self, items: Sequence[tuple[str, bytes]], ttl: float
    ) -> Deferred[list[bool]]:
        """`expire_if` for each (key, value) of ITEMS, in order; each is atomic on its key.

        What a holder of many entries (a relay's 10 000 agents) does every refresh round, in
        a few round trips instead of one per key. Not atomic across keys.
        """

    def scan(self, prefix: str) -> Deferred[list[str]]:
        """The keys present that start with PREFIX, sorted (for listings, not for decisions).

        Not a snapshot: with Redis, a key added or removed during the scan may or may not be
        listed; a key present throughout is.
        """


def check_key(key: object) -> str:
    """KEY if it is a non-empty str, else a clear error."""
    if not isinstance(key, str):
        raise TypeError(f"store keys are str, not {type(key).__name__}")
    if not key:
        raise ValueError("store keys must not be empty")
    return key


def check_value(value: object) -> bytes:
    """VALUE if it is bytes, else a clear error (encode text and JSON before storing)."""
    if not isinstance(value, bytes):
        raise TypeError(f"store values are bytes, not {type(value).__name__}")
    return value


def check_ttl(ttl: object) -> float:
    """TTL as seconds if it is a positive finite number, else a clear error.

    Redis counts in whole milliseconds; a Redis store rounds up, so a TTL is never shorter
    than asked.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"a TTL is a number of seconds, not {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"a TTL must be a positive number of seconds, not {ttl!r}")
    return float(ttl)
