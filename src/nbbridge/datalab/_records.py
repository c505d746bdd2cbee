"""What datalab keeps in the store: nonces, browser sessions and running instances.

Each is a flat attrs record under its own key prefix (``nbbridge.store.ExpiringRecords``), so
the memory store and Redis hold the same JSON and a restarted daemon sharing a Redis store
reads what its predecessor wrote. Record ids (nonces, session ids) are secrets: the store's
facades never log them, and neither does datalab.
"""

from __future__ import annotations

import attrs

from nbbridge.store import ExpiringRecords, ReplayMemory, Store

NONCE_PREFIX = "datalab:nonce:"
SESSION_PREFIX = "datalab:session:"
INSTANCE_PREFIX = "datalab:instance:"
REPLAY_PREFIX = "datalab:replay:"


@attrs.frozen
class NonceRecord:
    """A nonce handed to a front-end: which instance its ``view``/``static`` URLs reach."""

    instance: str


@attrs.frozen
class SessionRecord:
    """A browser's session cookie: the instance its requests are proxied to."""

    instance: str


@attrs.frozen
class InstanceRecord:
    """A running Jupyter instance: how to reach it, and its token (never sent to a browser).

    ``launcher`` names who runs it (``subprocess``: ``host:port`` on this machine; ``agent``:
    the agent's channel service, reached by ``id``).
    """

    id: str
    launcher: str
    filename: str
    token: str
    host: str = ""
    port: int = 0


@attrs.frozen
class DatalabState:
    """The four kinds of state over one store."""

    nonces: ExpiringRecords[NonceRecord]
    sessions: ExpiringRecords[SessionRecord]
    instances: ExpiringRecords[InstanceRecord]
    replays: ReplayMemory

    @classmethod
    def over(cls, store: Store) -> DatalabState:
        return cls(
            ExpiringRecords(store, NONCE_PREFIX, NonceRecord),
            ExpiringRecords(store, SESSION_PREFIX, SessionRecord),
            ExpiringRecords(store, INSTANCE_PREFIX, InstanceRecord),
            ReplayMemory(store, REPLAY_PREFIX),
        )
