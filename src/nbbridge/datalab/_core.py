"""The datalab's decisions: signed starts and stops, nonces, views, sessions.

No HTTP here: the web resources pass in what a request said (query values, headers, the path
of the uploaded file) and turn an answer or an `ApiError` into a response.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import parse_qs

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ._api import (
    DEFAULT_FRESHNESS,
    ApiError,
    check_fresh,
    check_signature,
    parse_timestamp,
    replay_key,
    sanitize_filename,
)
from ._instances import Instances
from ._records import DatalabState, InstanceRecord, NonceRecord, SessionRecord

DEFAULT_NONCE_TTL = 600.0
#: How long a browser session is kept if its instance does not end first.
DEFAULT_SESSION_TTL = 24 * 3600.0


@attrs.frozen
class DatalabConfig:
    """What the datalab is told at start: its key and its time limits."""

    sign_key: bytes = attrs.field(repr=False)
    freshness: float = DEFAULT_FRESHNESS
    nonce_ttl: float = DEFAULT_NONCE_TTL
    session_ttl: float = DEFAULT_SESSION_TTL


def new_secret() -> str:
    """A URL-safe random id of 256 bits (nonces, session ids)."""
    return secrets.token_urlsafe(32)


class Datalab:
    """Checks signed requests and keeps nonces and sessions for the instances it starts."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        config: DatalabConfig,
        state: DatalabState,
        instances: Instances,
    ) -> None:
        self._clock = clock
        self.config = config
        self.state = state
        self.instances = instances

    def precheck_start(self, query: str, signature: str | None, algorithm: str | None) -> None:
        """Signature and freshness of a start, from its headers alone (before the body).

        The checks that need no store: an unsigned or stale upload is refused before a byte
        of its body is stored. (Replay needs the store; it is checked once the body is in.)
        """
        values = parse_qs(query, keep_blank_values=True)
        ts_values, names = values.get("ts"), values.get("filename")
        if not ts_values or not names:
            return  # refused with its own message after the body
        check_signature(self.config.sign_key, ts_values[0], names[0], signature, algorithm)
        check_fresh(parse_timestamp(ts_values[0]), self._clock.seconds(), self.config.freshness)

    async def _check_signed(
        self, ts_text: str | None, subject: str, signature: str | None, algorithm: str | None
    ) -> None:
        """Signature, then freshness, then replay: only a signed request is remembered."""
        if ts_text is None:
            raise ApiError(400, "BAD_REQUEST", "the query parameter ts is required")
        check_signature(self.config.sign_key, ts_text, subject, signature, algorithm)
        ts = parse_timestamp(ts_text)
        check_fresh(ts, self._clock.seconds(), self.config.freshness)
        assert signature is not None
        # Remembered twice the window: a request stamped at the far future edge stays
        # acceptable that long.
        if not await self.state.replays.first_time(
            replay_key(ts_text, subject, signature), 2 * self.config.freshness
        ):
            raise ApiError(409, "REPLAY", "this exact request was accepted before")

    async def start(
        self,
        ts_text: str | None,
        filename: str | None,
        signature: str | None,
        algorithm: str | None,
        upload: str,
    ) -> str:
        """Start an instance for the uploaded file at UPLOAD; answer its new nonce.

        UPLOAD is taken over: moved into the instance, or removed on a refusal.
        """
        try:
            if filename is None:
                raise ApiError(400, "BAD_FILENAME", "the query parameter filename is required")
            await self._check_signed(ts_text, filename, signature, algorithm)
            name = sanitize_filename(filename)
            record = await self.instances.start(name, upload)
        finally:
            if os.path.exists(upload):
                os.unlink(upload)
        nonce = new_secret()
        await self.state.nonces.put(nonce, NonceRecord(record.id), self.config.nonce_ttl)
        self._log.info("instance {id} started for an upload", id=record.id)
        return nonce

    async def stop(
        self, ts_text: str | None, nonce: str | None, signature: str | None, algorithm: str | None
    ) -> None:
        """Stop the instance a nonce names (signed like start, with the nonce for the name)."""
        if not nonce:
            raise ApiError(400, "BAD_REQUEST", "the query parameter nonce is required")
        await self._check_signed(ts_text, nonce, signature, algorithm)
        record = await self._nonce_instance(nonce)
        if not await self.instances.stop(record.id):
            raise ApiError(404, "NOT_FOUND", "that instance is not running here")

    async def _nonce_instance(self, nonce: str) -> InstanceRecord:
        found = await self.state.nonces.get(nonce) if nonce else None
        if found is None:
            raise ApiError(404, "NOT_FOUND", "unknown or expired nonce")
        record = await self.instances.lookup(found.instance)
        if record is None:
            raise ApiError(404, "NOT_FOUND", "the instance of that nonce has ended")
        return record

    async def view(self, nonce: str) -> str:
        """A new session id for the instance NONCE names (the browser's cookie)."""
        record = await self._nonce_instance(nonce)
        session = new_secret()
        await self.state.sessions.put(session, SessionRecord(record.id), self.config.session_ttl)
        self.instances.touch(record.id)
        return session

    async def static(self, nonce: str) -> InstanceRecord:
        """The instance NONCE names, for a file download."""
        record = await self._nonce_instance(nonce)
        self.instances.touch(record.id)
        return record

    async def session(self, session: str | None) -> InstanceRecord:
        """The instance a session cookie names: 401 without one, 403 for anything unknown."""
        if not session:
            raise ApiError(401, "NO_SESSION", "no datalab session: open the view link again")
        found = await self.state.sessions.get(session)
        if found is None:
            raise ApiError(403, "BAD_SESSION", "unknown or expired datalab session")
        record = await self.instances.lookup(found.instance)
        if record is None:
            raise ApiError(403, "BAD_SESSION", "the instance of this session has ended")
        self.instances.touch(record.id)
        return record
