"""nbbridge.store: the state services keep, behind small async interfaces with expiring keys.

* `Store` — the one backend interface: str keys, bytes values, TTLs enforced by the store,
  every operation atomic and answered by a Deferred (docs/store.md maps each to Redis).
* `MemoryStore(clock)` — the in-process implementation, the default for one relay.
* Typed facades over any `Store`: `AgentRegistry` (which agents are online, and where),
  `ExpiringRecords` (nonces, sessions, reservations as attrs records), `ReplayMemory`.

The store imports no service; services (relay, datalab, gateway) build on it.
"""

from ._interface import Store, check_key, check_ttl, check_value
from ._memory import MemoryStore
from ._records import ExpiringRecords, RecordError, ReplayMemory
from ._registry import DEFAULT_AGENT_TTL, AgentRegistry, Refresh

__all__ = [
    "DEFAULT_AGENT_TTL",
    "AgentRegistry",
    "ExpiringRecords",
    "MemoryStore",
    "RecordError",
    "Refresh",
    "ReplayMemory",
    "Store",
    "check_key",
    "check_ttl",
    "check_value",
]
