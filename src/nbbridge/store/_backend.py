"""Opening a store by URL: the `Backend` (store + bus + health) a relay is given.

``open_store("memory")`` is one process's store and bus; ``open_store("redis://HOST:PORT/DB",
password=...)`` is a shared Redis, which several relays use at once. Either way the caller
gets a `Backend`: ``.store`` (a `Store`), ``.bus`` (a `Bus`), ``.health`` (connected or lost,
why, since when), ``watch(callback)`` to hear of every change of health (a relay re-registers
its agents when the connection comes back), and ``close()``.

The password never travels in the URL (which is logged): it comes from a file
(``--store-password-file``) or ``$NBBRIDGE_REDIS_PASSWORD`` through `read_password`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Protocol
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ._bus import Bus, MemoryBus
from ._interface import Store
from ._memory import MemoryStore

#: Where `read_password` looks when no password file is given.
PASSWORD_ENV = "NBBRIDGE_REDIS_PASSWORD"

#: The ``twisted.python.usage`` rows of the Redis credentials, for a daemon with a ``--store``
#: flag: one wording everywhere, and the password never in the URL or on a command line.
STORE_CREDENTIAL_OPTIONS: tuple[list[str | None], ...] = (
    [
        "store-password-file",
        None,
        None,
        f"File holding the Redis password (or set {PASSWORD_ENV}).",
    ],
    [
        "store-ca-file",
        None,
        None,
        "PEM file of the CA(s) that signed Redis's certificate, for rediss:// (TLS); "
        "default: the system's CAs.",
    ],
)

#: The default Redis port, when a URL names none.
REDIS_PORT = 6379


class StoreUnavailable(Exception):
    """The store cannot be reached now (Redis down, refusing us, or restarting).

    Operations fail with it at once rather than wait: a caller logs it and tries again later
    (the relay's refresh timer does), nothing hangs on a dead connection.
    """


class StoreURLError(ValueError):
    """A ``--store`` URL nbbridge cannot use. The message never repeats the URL (it may hold
    a secret)."""


@attrs.frozen
class Health:
    """Whether the store is reachable: what a relay logs and shows on ``/status``."""

    connected: bool
    #: POSIX time of the last change
    since: float
    #: why it is not connected (None when it is)
    reason: str | None = None

    def describe(self) -> str:
        """One line for a log or a status page."""
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        if self.connected:
            return f"connected since {when}"
        return f"not connected since {when}: {self.reason}"

    def as_json(self) -> dict[str, object]:
        return {"connected": self.connected, "since": self.since, "reason": self.reason}


#: Told of every change of health.
HealthWatcher = Callable[[Health], None]


class Backend(Protocol):
    """A store, a bus and how the connection to them is."""

    #: the URL without any secret, for logs and status pages
    url: str

    @property
    def store(self) -> Store: ...

    @property
    def bus(self) -> Bus: ...

    @property
    def health(self) -> Health:
        """The connection now."""

    def watch(self, watcher: HealthWatcher) -> Callable[[], None]:
        """Call WATCHER with every change of health from now on; the answer stops it.

        A change to ``connected=True`` after a loss is the moment to re-register what the
        store may have forgotten (Redis restarted empty).
        """

    def when_connected(self) -> Deferred[None]:
        """Fires (on a later turn) once the store is connected: now, or when it next is."""

    def close(self) -> Deferred[None]:
        """Disconnect for good; fires once the connections are closed."""


@attrs.frozen
class StoreURL:
    """A parsed ``--store`` URL."""

    kind: str  # "memory" or "redis"
    host: str = ""
    port: int = REDIS_PORT
    db: int = 0
    tls: bool = False

    def redacted(self) -> str:
        """The URL as it is safe to log (it never holds a password: see `parse_store_url`)."""
        if self.kind == "memory":
            return "memory"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


def parse_store_url(url: str) -> StoreURL:
    """``memory``, ``redis://HOST[:PORT][/DB]`` or ``rediss://...`` (TLS); else `StoreURLError`.

    A password in the URL is refused, so that the URL can be logged as given: passwords come
    from a file or the environment (`read_password`).
    """
    if url == "memory":
        return StoreURL("memory")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise StoreURLError(
            "--store: not a usable URL (expected memory or redis://HOST:PORT/DB)"
        ) from None
    if parts.scheme not in ("redis", "rediss"):
        raise StoreURLError("--store: expected memory, redis://HOST:PORT/DB or rediss://...")
    if parts.username is not None or parts.password is not None:
        raise StoreURLError(
            "--store: put no user or password in the URL (it is logged); give the password "
            f"with --store-password-file or ${PASSWORD_ENV}"
        )
    if not parts.hostname:
        raise StoreURLError("--store: the redis URL names no host (redis://HOST:PORT/DB)")
    if parts.query or parts.fragment:
        raise StoreURLError("--store: a redis URL takes no query or fragment")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise StoreURLError("--store: the database in redis://HOST:PORT/DB is a number")
    return StoreURL(
        "redis",
        host=parts.hostname,
        port=port if port is not None else REDIS_PORT,
        db=int(path) if path else 0,
        tls=parts.scheme == "rediss",
    )


def read_password(path: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The Redis password: the first line of file PATH, else ``$NBBRIDGE_REDIS_PASSWORD``.

    None if neither is given. An unreadable or empty file is an `OSError`/`ValueError` whose
    message names the file, never its content.
    """
    if path is not None:
        with open(path, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
        if not password:
            raise ValueError(f"the password file {path} is empty")
        return password
    env = os.environ if environ is None else environ
    return env.get(PASSWORD_ENV) or None


def open_store(
    url: str,
    *,
    password: str | None = None,
    ca_file: str | None = None,
    reactor: object | None = None,
) -> Backend:
    """The `Backend` for URL (see `parse_store_url`); a Redis one starts connecting at once.

    Connecting goes on in the background (with backoff, for ever): a relay starts even while
    Redis is down, says so through ``health``, and its store operations fail fast with
    `StoreUnavailable` until the connection is up.

    CA_FILE (a PEM file) is what a ``rediss://`` URL's server certificate is checked against,
    instead of the system's CAs (a Redis with a private CA). It is read now: a missing or
    unusable file is a `StoreURLError` at once, not failed handshakes later; with a plain
    ``redis://`` or ``memory`` URL it is refused (there is no TLS for it to apply to).
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    parsed = parse_store_url(url)
    if ca_file is not None and not parsed.tls:
        raise StoreURLError("--store-ca-file needs a rediss:// store URL (TLS to Redis)")
    if parsed.kind == "memory":
        return MemoryBackend(reactor)  # type: ignore[arg-type]
    from ._redis import RedisBackend

    trust = None
    if ca_file is not None:
        from nbbridge.transport import load_trust_root

        try:
            trust = load_trust_root(ca_file)
        except ValueError as e:
            raise StoreURLError(str(e).replace("--ca ", "--store-ca-file ", 1)) from None
    return RedisBackend(parsed, password=password, trust_root=trust, reactor=reactor)


class MemoryBackend:
    """One process's store and bus: always connected."""

    url = "memory"
    _log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._store = MemoryStore(clock)
        self._bus = MemoryBus(clock)
        self._health = Health(True, time.time())

    @property
    def store(self) -> Store:
        return self._store

    @property
    def bus(self) -> Bus:
        return self._bus

    @property
    def health(self) -> Health:
        return self._health

    def watch(self, watcher: HealthWatcher) -> Callable[[], None]:
        return lambda: None  # it never changes

    def when_connected(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._clock.callLater(0, d.callback, None)
        return d

    def close(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._clock.callLater(0, d.callback, None)
        return d
