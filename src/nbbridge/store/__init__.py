"""nbbridge.store: the state services keep, behind small async interfaces with expiring keys.

* `Store` — the one backend interface: str keys, bytes values, TTLs enforced by the store,
  every operation atomic and answered by a Deferred (docs/store.md maps each to Redis).
* `MemoryStore(clock)` — the in-process implementation, the default for one relay.
* `Bus` — publish/subscribe between the relays that share a store; `MemoryBus(clock)` in
  one process, Redis pub/sub otherwise.
* `open_store(url, password=...)` — a `Backend` (``.store``, ``.bus``, ``.health``,
  ``watch``, ``close``) for ``memory`` or ``redis://HOST:PORT/DB``; `read_password` reads
  the Redis password from a file or ``$NBBRIDGE_REDIS_PASSWORD``; `STORE_CREDENTIAL_OPTIONS`
  are the daemons' ``--store-password-file`` and ``--store-ca-file`` option rows.
* Typed facades over any `Store`: `AgentRegistry` (which agents are online, and where),
  `ExpiringRecords` (nonces, sessions, reservations as attrs records), `ReplayMemory`.

The store imports no service; services (relay, datalab, gateway) build on it.
"""

from ._backend import (
    PASSWORD_ENV,
    STORE_CREDENTIAL_OPTIONS,
    Backend,
    Health,
    HealthWatcher,
    MemoryBackend,
    StoreUnavailable,
    StoreURL,
    StoreURLError,
    open_store,
    parse_store_url,
    read_password,
)
from ._bus import Bus, MemoryBus, Receiver, Subscription
from ._interface import Store, check_key, check_ttl, check_value
from ._memory import MemoryStore
from ._records import ExpiringRecords, RecordError, ReplayMemory
from ._registry import DEFAULT_AGENT_TTL, AgentRegistry, Refresh

__all__ = [
    "DEFAULT_AGENT_TTL",
    "PASSWORD_ENV",
    "STORE_CREDENTIAL_OPTIONS",
    "AgentRegistry",
    "Backend",
    "Bus",
    "ExpiringRecords",
    "Health",
    "HealthWatcher",
    "MemoryBackend",
    "MemoryBus",
    "MemoryStore",
    "Receiver",
    "RecordError",
    "Refresh",
    "ReplayMemory",
    "Store",
    "StoreURL",
    "StoreURLError",
    "StoreUnavailable",
    "Subscription",
    "check_key",
    "check_ttl",
    "check_value",
    "open_store",
    "parse_store_url",
    "read_password",
]
