"""Small typed views of a store: expiring attrs records, and replay memory.

`ExpiringRecords` keeps flat attrs records (nonces and sessions for datalab, reservations
for the gateway) as JSON under one key prefix; `take` hands a one-time record to exactly one
caller. `ReplayMemory` answers "have I seen this before?" for as long as a TTL.
"""

from __future__ import annotations

import json
from typing import Any, Generic, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ._interface import Store, check_ttl

R = TypeVar("R")


class RecordError(Exception):
    """A stored value is not a record of the expected type (written by another version?)."""


class ExpiringRecords(Generic[R]):
    """Records of RECORD_TYPE (a flat attrs class of JSON types) under PREFIX, with TTLs.

    Record ids may be secrets (a nonce): they are never logged nor put in an error message.
    """

    _log = Logger()

    def __init__(self, store: Store, prefix: str, record_type: type[R]) -> None:
        self._type = record_type
        if not attrs.has(record_type):
            raise TypeError(f"{record_type.__name__} is not an attrs class")
        if not prefix:
            raise ValueError("records need a key prefix of their own")
        self.store = store
        self._prefix = prefix

    def _key(self, record_id: str) -> str:
        if not isinstance(record_id, str) or not record_id:
            raise ValueError("a record id is a non-empty str")
        return self._prefix + record_id

    def put(self, record_id: str, record: R, ttl: float | None) -> Deferred[None]:
        """Store RECORD as RECORD_ID (replacing any), for TTL s (None: until deleted)."""
        return self.store.set(self._key(record_id), self._encode(record), ttl)

    def add(self, record_id: str, record: R, ttl: float | None) -> Deferred[bool]:
        """Store RECORD only if RECORD_ID is free; True if stored."""
        return self.store.add(self._key(record_id), self._encode(record), ttl)

    def get(self, record_id: str) -> Deferred[R | None]:
        """The record, or None if absent or expired; `RecordError` if it cannot be read."""
        d = self.store.get(self._key(record_id))
        return d.addCallback(self._decode)

    def take(self, record_id: str) -> Deferred[R | None]:
        """The record, removed in the same step: of several takers only one gets it."""
        d = self.store.take(self._key(record_id))
        return d.addCallback(self._decode)

    def delete(self, record_id: str) -> Deferred[bool]:
        """Remove the record; True if it was there."""
        return self.store.delete(self._key(record_id))

    def refresh(self, record_id: str, ttl: float) -> Deferred[bool]:
        """The record now expires TTL s from now; False if it is gone already."""
        return self.store.expire(self._key(record_id), ttl)

    def _encode(self, record: R) -> bytes:
        if not isinstance(record, self._type):
            raise TypeError(f"expected a {self._type.__name__}, not {type(record).__name__}")
        try:
            data = json.dumps(
                attrs.asdict(record),  # type: ignore[arg-type]  # checked in __init__
                sort_keys=True,
                separators=(",", ":"),
            )
        except (TypeError, ValueError) as e:
            raise TypeError(f"a {self._type.__name__} must hold JSON types only: {e}") from None
        # Refuse what would not come back equal (a tuple read back as a list, a nested
        # record as a dict) now, rather than surprise the reader later.
        if self._build(json.loads(data)) != record:
            raise TypeError(f"a {self._type.__name__} does not survive JSON unchanged")
        return data.encode()

    def _decode(self, value: bytes | None) -> R | None:
        if value is None:
            return None
        try:
            return self._build(json.loads(value))
        except (ValueError, TypeError) as e:
            self._log.warn(
                "unreadable {type} under {prefix}: {error}",
                type=self._type.__name__,
                prefix=self._prefix,
                error=str(e),
            )
            raise RecordError(
                f"a value under {self._prefix!r} is not a {self._type.__name__}: {e}"
            ) from None

    def _build(self, data: Any) -> R:
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        return self._type(**data)


class ReplayMemory:
    """Remembers keys for a while, so a message or token seen once is refused the next time."""

    def __init__(self, store: Store, prefix: str) -> None:
        if not prefix:
            raise ValueError("replay memory needs a key prefix of its own")
        self.store = store
        self._prefix = prefix

    def first_time(self, key: str, ttl: float) -> Deferred[bool]:
        """True the first time KEY is seen within TTL s; False for every repeat (even racing)."""
        if not isinstance(key, str) or not key:
            raise ValueError("a replay key is a non-empty str")
        return self.store.add(self._prefix + key, b"1", check_ttl(ttl))
