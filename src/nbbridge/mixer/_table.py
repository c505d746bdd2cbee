"""Which backend holds which kernel and session: a table in the store.

Kernel and session ids are the backends' own UUIDs, so the mixer cannot tell the owner from
an id; it records the owner when a kernel or session is created or listed, under
``mixer:kernel:<id>`` and ``mixer:session:<id>`` (the value: JSON with the backend's name,
None for local, and the kernel's mixed spec name, so that a kernel of a remote that is down
can still be listed, as dead). With a Redis store the table outlives the mixer; with the
memory store it is rebuilt from the backends' own lists (`Mixer.rebuild`) at start-up and
whenever an id is not found.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from nbbridge.store import Store

PREFIX = "mixer:"


@attrs.frozen
class Owner:
    """The backend of a kernel or session (None: local) and the kernel's mixed spec name."""

    backend: str | None
    name: str = ""


class OwnerTable:
    """``kind`` (``kernel``/``session``) and id -> `Owner`, in a `Store`, without TTLs."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def put(self, kind: str, item_id: str, owner: Owner) -> None:
        value = json.dumps({"backend": owner.backend, "name": owner.name}).encode()
        await self._store.set(f"{PREFIX}{kind}:{item_id}", value, None)

    async def get(self, kind: str, item_id: str) -> Owner | None:
        raw = await self._store.get(f"{PREFIX}{kind}:{item_id}")
        if raw is None:
            return None
        data: dict[str, Any] = json.loads(raw)
        return Owner(data.get("backend"), str(data.get("name") or ""))

    async def drop(self, kind: str, item_id: str) -> None:
        await self._store.delete(f"{PREFIX}{kind}:{item_id}")

    async def all(self, kind: str) -> dict[str, Owner]:
        prefix = f"{PREFIX}{kind}:"
        out = {}
        for key in await self._store.scan(prefix):
            owner = await self.get(kind, key[len(prefix) :])
            if owner is not None:
                out[key[len(prefix) :]] = owner
        return out
