"""The Redis backend: `RedisStore` and `RedisBus` over txredisapi's protocol.

txredisapi gives the RESP protocol and its commands; the connections are ours, so that they
behave as a relay needs:

* **two connections**, one for commands (the store, PUBLISH) and one in subscriber mode
  (Redis serves nothing else on a connection that subscribes);
* each kept up by a `ClientService` with backoff, for ever: after Redis restarts, both come
  back on their own, the subscriber re-subscribes to every channel with a local receiver;
* **fail fast**: while a connection is not up (connecting, authenticating, refused), every
  operation errbacks with `StoreUnavailable` at once, and commands in flight when the
  connection drops errback too; a Redis that stops answering is cut after `REPLY_TIMEOUT`;
* each connection, once open, authenticates (AUTH), selects the database, checks the Redis
  version (GETDEL needs 6.2) and only then counts as up: a wrong password is a clear reason
  in `health`, not a stream of errors on every call.

Pub/sub channels are server-wide in Redis (not per database), so the bus puts the database
number in front of every channel name: deployments on different databases of one Redis do
not hear each other.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import txredisapi
from OpenSSL import SSL
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._observer import Waiters
from ._backend import Health, HealthWatcher, StoreUnavailable, StoreURL
from ._bus import ReceiverTable, Subscription, _Entry, check_channel, check_message, check_receiver
from ._interface import check_key, check_ttl, check_value

if TYPE_CHECKING:
    from nbbridge._internals import IOpenSSLTrustRoot

T = TypeVar("T")

#: A Redis that has not answered a command in this long is cut off (and reconnected).
REPLY_TIMEOUT = 10.0
#: Giving up on one connection attempt.
CONNECT_TIMEOUT = 5.0
#: GETDEL (the store's `take`) came with Redis 6.2.
MIN_VERSION = (6, 2)

_DELETE_IF = (
    b"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
#: expire_if over many keys: KEYS are the keys, ARGV[1] the TTL (ms), ARGV[2..] their values.
_EXPIRE_IF_MANY = (
    b"local held = {} for i, key in ipairs(KEYS) do "
    b"if redis.call('GET', key) == ARGV[i + 1] then "
    b"held[i] = redis.call('PEXPIRE', key, ARGV[1]) else held[i] = 0 end end return held"
)
#: keys per call of _EXPIRE_IF_MANY (a script blocks Redis while it runs: keep each short)
_BATCH = 1000
_EXPIRE_IF = (
    b"if redis.call('GET', KEYS[1]) == ARGV[1] then "
    b"return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)


def _ms(ttl: float) -> int:
    """TTL seconds as Redis's whole milliseconds, rounded up (never shorter than asked)."""
    return max(1, math.ceil(check_ttl(ttl) * 1000))


def _glob_escape(prefix: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)


# -- connections ---------------------------------------------------------------------------


class _CommandProtocol(txredisapi.BaseRedisProtocol):  # type: ignore[misc]
    """txredisapi's protocol, reporting to its link when it opens and closes."""

    link: _Link

    def connectionMade(self) -> None:
        super().connectionMade()  # no password nor db given: it only marks itself usable
        self.link.opened(self)

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.link.closed(self, why)


class _SubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    link: _Link
    on_message: Callable[[bytes, bytes], None]

    def connectionMade(self) -> None:
        super().connectionMade()
        self.link.opened(self)

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.link.closed(self, why)

    def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
        self.on_message(channel, message)


class _LinkFactory(Factory):
    def __init__(self, link: _Link, protocol_class: type[Any]) -> None:
        self._link = link
        self._protocol_class = protocol_class

    def buildProtocol(self, addr: object) -> Any:
        # Values stay bytes (charset None) and are never turned into numbers.
        protocol = self._protocol_class(
            charset=None, convertNumbers=False, replyTimeout=REPLY_TIMEOUT
        )
        protocol.factory = self
        protocol.link = self._link
        self._link.prepare(protocol)
        return protocol

    # txredisapi's protocol calls these when its own AUTH/SELECT fail; ours never asks it to.
    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        pass


class _Link:
    """One connection to Redis, kept up by a ClientService; usable once its handshake is done."""

    _log = Logger()

    def __init__(
        self,
        role: str,
        endpoint: IStreamClientEndpoint,
        protocol_class: type[Any],
        *,
        db: int,
        password: str | None,
        clock: IReactorTime,
        on_change: Callable[[], None],
        prepare: Callable[[Any], None] = lambda p: None,
        after_handshake: Callable[[Any], Deferred[object]] | None = None,
    ) -> None:
        self.role = role
        self._db = db
        self._password = password
        self._on_change = on_change
        self._prepare = prepare
        self._after_handshake = after_handshake
        self.protocol: Any = None  # the connection, once its handshake is done
        self.reason = "connecting"
        self._service = ClientService(
            _ObservedEndpoint(endpoint, self),
            _LinkFactory(self, protocol_class),
            retryPolicy=backoffPolicy(
                initialDelay=0.1, factor=1.5, maxDelay=2.0, jitter=lambda: random.uniform(0, 0.1)
            ),
            clock=clock,
        )

    def start(self) -> None:
        self._service.startService()

    def stop(self) -> Deferred[None]:
        d: Deferred[None] = self._service.stopService()
        return d

    @property
    def up(self) -> bool:
        return self.protocol is not None

    def prepare(self, protocol: Any) -> None:
        self._prepare(protocol)

    def opened(self, protocol: Any) -> None:
        Deferred.fromCoroutine(self._handshake(protocol))

    async def _handshake(self, protocol: Any) -> None:
        try:
            if self._password is not None:
                await _check(protocol.execute_command("AUTH", self._password), "AUTH")
            if self.role == "commands":
                await _check(protocol.execute_command("SELECT", self._db), "SELECT")
                info = await _check(protocol.execute_command("INFO", "server"), "INFO")
                _check_version(info)
            else:
                await _check(protocol.execute_command("PING"), "PING")
            if self._after_handshake is not None:
                await self._after_handshake(protocol)
        except Exception as e:
            reason = _explain(e)
            if reason != self.reason:
                self._log.error("redis ({role}): {reason}", role=self.role, reason=reason)
            self.reason = reason
            protocol.transport.loseConnection()
            self._on_change()
            return
        if not protocol.connected:  # lost during the handshake
            return
        self.protocol = protocol
        self._log.info("redis ({role}): connected", role=self.role)
        self._on_change()

    def closed(self, protocol: Any, why: Failure) -> None:
        if protocol is not self.protocol:
            # One that never completed its handshake: its reason is known already, unless
            # TLS (rediss://) failed under it, which the pending command only saw as a loss.
            if why.check(SSL.Error) is not None:
                self.failed_attempt(
                    "TLS with Redis failed (its certificate is not signed by a CA in "
                    "--store-ca-file, or the system's CAs without one, or does not name "
                    f"the host): {why.getErrorMessage()}"
                )
            return
        self.protocol = None
        self.reason = f"the connection to Redis was lost ({why.getErrorMessage()})"
        self._log.warn("redis ({role}): {reason}", role=self.role, reason=self.reason)
        self._on_change()

    def failed_attempt(self, why: str) -> None:
        if why != self.reason:
            self._log.warn("redis ({role}): {reason}", role=self.role, reason=why)
        self.reason = why
        self._on_change()


@implementer(IStreamClientEndpoint)
class _ObservedEndpoint:
    """An endpoint that tells its link why an attempt to connect failed (for `health`)."""

    def __init__(self, endpoint: IStreamClientEndpoint, link: _Link) -> None:
        self._endpoint = endpoint
        self._link = link

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = self._endpoint.connect(factory)

        def failed(failure: Failure) -> Failure:
            self._link.failed_attempt(f"cannot connect to Redis: {failure.getErrorMessage()}")
            return failure

        return d.addErrback(failed)


async def _check(d: Deferred[T], command: str) -> T:
    """D's reply; a reply that is an error (txredisapi hands some over as values) raises."""
    reply = await d
    if isinstance(reply, Exception):
        raise reply
    return reply


def _check_version(info: object) -> None:
    text = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("redis_version:"):
            version = line.split(":", 1)[1].strip()
            numbers = tuple(int(n) for n in version.split(".")[:2] if n.isdigit())
            if numbers < MIN_VERSION:
                raise _Refused(
                    f"Redis {version} is too old: nbbridge needs Redis 6.2 or newer (GETDEL)"
                )
            return


class _Refused(Exception):
    pass


def _explain(e: BaseException) -> str:
    """Why a connection is not usable, in words for a log and /status (never the password)."""
    if isinstance(e, _Refused):
        return str(e)
    message = str(e)
    if "WRONGPASS" in message or "invalid password" in message:
        return "Redis refused the password (check --store-password-file)"
    if "NOAUTH" in message:
        return (
            "Redis asks for a password: give it with --store-password-file or "
            "$NBBRIDGE_REDIS_PASSWORD"
        )
    if "without any password configured" in message or "AUTH <password> called" in message:
        return "a password was given but Redis has none set (requirepass)"
    if "DB index is out of range" in message or "invalid DB index" in message:
        return f"Redis has no such database ({message})"
    return f"Redis failed the connection's set-up: {message}"


def _unavailable(reason: str) -> StoreUnavailable:
    return StoreUnavailable(f"the store (Redis) is not available: {reason}")


def _translate(failure: Failure) -> Failure:
    """txredisapi's errors as `StoreUnavailable` (callers log it and try again later)."""
    if failure.check(StoreUnavailable):
        return failure
    if failure.check(txredisapi.ConnectionError):
        return Failure(_unavailable(f"the connection to Redis was lost ({failure.value})"))
    if failure.check(txredisapi.ResponseError):
        return Failure(_unavailable(f"Redis answered with an error: {failure.value}"))
    return failure


# -- the store -----------------------------------------------------------------------------


class RedisStore:
    """`Store` in Redis: one command or one short Lua script per operation (docs/store.md)."""

    def __init__(self, link: _Link) -> None:
        self._link = link

    def _call(self, *args: object) -> Deferred[Any]:
        protocol = self._link.protocol
        if protocol is None:
            return fail(_unavailable(self._link.reason))
        d: Deferred[Any] = protocol.execute_command(*args)
        return d.addErrback(_translate)

    def get(self, key: str) -> Deferred[bytes | None]:
        return self._call("GET", _key(key))

    def set(self, key: str, value: bytes, ttl: float | None) -> Deferred[None]:
        args = _set_args(key, value, ttl)
        return self._call("SET", *args).addCallback(lambda _: None)

    def add(self, key: str, value: bytes, ttl: float | None) -> Deferred[bool]:
        args = _set_args(key, value, ttl)
        return self._call("SET", *args, "NX").addCallback(lambda r: r is not None)

    def take(self, key: str) -> Deferred[bytes | None]:
        return self._call("GETDEL", _key(key))

    def delete(self, key: str) -> Deferred[bool]:
        return self._call("DEL", _key(key)).addCallback(lambda n: n == 1)

    def delete_if(self, key: str, value: bytes) -> Deferred[bool]:
        k, v = _key(key), check_value(value)
        return self._call("EVAL", _DELETE_IF, 1, k, v).addCallback(lambda n: n == 1)

    def expire(self, key: str, ttl: float) -> Deferred[bool]:
        ms = _ms(ttl)
        return self._call("PEXPIRE", _key(key), ms).addCallback(lambda n: n == 1)

    def expire_if(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        ms = _ms(ttl)
        k, v = _key(key), check_value(value)
        return self._call("EVAL", _EXPIRE_IF, 1, k, v, ms).addCallback(lambda n: n == 1)

    def expire_if_many(
        self, items: Sequence[tuple[str, bytes]], ttl: float
    ) -> Deferred[list[bool]]:
        ms = _ms(ttl)
        checked = [(_key(key), check_value(value)) for key, value in items]
        batches = [checked[i : i + _BATCH] for i in range(0, len(checked), _BATCH)]
        calls = [
            self._call(
                "EVAL",
                _EXPIRE_IF_MANY,
                len(batch),
                *(k for k, _ in batch),
                ms,
                *(v for _, v in batch),
            )
            for batch in batches
        ]
        return Deferred.fromCoroutine(_gather_flags(calls))

    def scan(self, prefix: str) -> Deferred[list[str]]:
        if not isinstance(prefix, str):
            raise TypeError(f"a key prefix is a str, not {type(prefix).__name__}")
        return Deferred.fromCoroutine(self._scan(_glob_escape(prefix).encode() + b"*"))

    async def _scan(self, pattern: bytes) -> list[str]:
        keys: set[bytes] = set()
        cursor: bytes | int = 0
        while True:
            cursor, batch = await self._call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            keys.update(batch)
            if cursor in (b"0", 0, "0"):
                break
        return sorted(key.decode("utf-8", "surrogateescape") for key in keys)


async def _gather_flags(calls: list[Deferred[Any]]) -> list[bool]:
    """The replies of CALLS (lists of 0/1), in order, as one list of bools.

    Every call is awaited even after one failed, so none is left with an unhandled error.
    """
    flags: list[bool] = []
    failure: BaseException | None = None
    for call in calls:
        try:
            flags.extend(n == 1 for n in await call)
        except Exception as e:
            failure = failure or e
    if failure is not None:
        raise failure
    return flags


def _key(key: str) -> bytes:
    return check_key(key).encode("utf-8")


def _set_args(key: str, value: bytes, ttl: float | None) -> tuple[object, ...]:
    k, v = _key(key), check_value(value)
    return (k, v) if ttl is None else (k, v, "PX", _ms(ttl))


# -- the bus -------------------------------------------------------------------------------


class _RedisSubscription:
    def __init__(self, bus: RedisBus, entry: _Entry) -> None:
        self._bus = bus
        self._entry = entry

    @property
    def channel(self) -> str:
        return self._entry.channel

    def cancel(self) -> Deferred[None]:
        return self._bus._cancel(self._entry)


class RedisBus:
    """`Bus` over Redis pub/sub: one SUBSCRIBE per channel with local receivers."""

    _log = Logger()

    def __init__(self, commands: _Link, db: int) -> None:
        self._commands = commands
        self._subscriber: _Link | None = None
        self._table = ReceiverTable()
        self._prefix = f"nbbridge:{db}:"

    def attach(self, subscriber: _Link) -> None:
        self._subscriber = subscriber

    def _wire(self, channel: str) -> bytes:
        return (self._prefix + channel).encode("utf-8")

    def publish(self, channel: str, message: bytes) -> Deferred[int]:
        wire, message = self._wire(check_channel(channel)), check_message(message)
        protocol = self._commands.protocol
        if protocol is None:
            return fail(_unavailable(self._commands.reason))
        d: Deferred[int] = protocol.execute_command("PUBLISH", wire, message)
        return d.addErrback(_translate)

    def subscribe(self, channel: str, receiver: Callable[[bytes], None]) -> Deferred[Subscription]:
        check_channel(channel), check_receiver(receiver)
        assert self._subscriber is not None
        protocol = self._subscriber.protocol
        if protocol is None:
            return fail(_unavailable(self._subscriber.reason))
        entry = self._table.add(channel, receiver)
        # One SUBSCRIBE per call, even for a channel already subscribed (Redis ignores the
        # repeat): its reply says the subscription is active, in order with any UNSUBSCRIBE.
        d: Deferred[object] = protocol.subscribe([self._wire(channel)])

        def done(_: object) -> Subscription:
            return _RedisSubscription(self, entry)

        def failed(failure: Failure) -> Failure:
            entry.active = False
            self._table.remove(entry)
            return _translate(failure)

        return d.addCallbacks(done, failed)

    def _cancel(self, entry: _Entry) -> Deferred[None]:
        entry.active = False
        if not self._table.remove(entry):
            return succeed(None)
        assert self._subscriber is not None
        protocol = self._subscriber.protocol
        if protocol is None:
            return succeed(None)  # not subscribed on any connection now
        d: Deferred[object] = protocol.unsubscribe([self._wire(entry.channel)])
        # A connection lost meanwhile unsubscribes everything anyway.
        return d.addBoth(lambda _: None)

    # -- the subscriber connection ---------------------------------------------------------

    def prepare(self, protocol: Any) -> None:
        protocol.on_message = self._received

    def resubscribe(self, protocol: Any) -> Deferred[object]:
        """Subscribe a new connection to every channel with local receivers."""
        ds = [protocol.subscribe([self._wire(channel)]) for channel in self._table.channels()]
        done = DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        return done.addCallback(lambda _: None)

    def _received(self, wire: bytes, message: bytes) -> None:
        channel = wire.decode("utf-8", "surrogateescape")
        if channel.startswith(self._prefix):
            self._table.deliver(channel[len(self._prefix) :], message)


# -- the backend ---------------------------------------------------------------------------


class RedisBackend:
    """A Redis store and bus, with the health of their two connections."""

    _log = Logger()

    def __init__(
        self,
        url: StoreURL,
        *,
        password: str | None,
        reactor: Any,
        trust_root: IOpenSSLTrustRoot | None = None,
    ) -> None:
        self.url = url.redacted()
        self._clock: IReactorTime = reactor
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, url.host, url.port, timeout=CONNECT_TIMEOUT
        )
        if url.tls:
            # The server's certificate must name URL's host and chain to TRUST_ROOT (the
            # --store-ca-file) or, without one, to the system's CAs.
            options = (
                optionsForClientTLS(url.host, trustRoot=trust_root)
                if trust_root is not None
                else optionsForClientTLS(url.host)
            )
            endpoint = wrapClientTLS(options, endpoint)
        self._watchers: list[HealthWatcher] = []
        self._connected_waiters: Waiters[None] = Waiters(reactor)
        self._health = Health(False, time.time(), "connecting")
        common: dict[str, Any] = dict(
            db=url.db, password=password, clock=reactor, on_change=self._changed
        )
        self._commands = _Link("commands", endpoint, _CommandProtocol, **common)
        self._store = RedisStore(self._commands)
        self._bus = RedisBus(self._commands, url.db)
        self._subscriber = _Link(
            "subscriptions",
            endpoint,
            _SubscriberProtocol,
            prepare=self._bus.prepare,
            after_handshake=self._bus.resubscribe,
            **common,
        )
        self._bus.attach(self._subscriber)
        self._closed = False
        self._log.info("store: {url}, connecting", url=self.url)
        self._commands.start()
        self._subscriber.start()

    @property
    def store(self) -> RedisStore:
        return self._store

    @property
    def bus(self) -> RedisBus:
        return self._bus

    @property
    def health(self) -> Health:
        return self._health

    def watch(self, watcher: HealthWatcher) -> Callable[[], None]:
        self._watchers.append(watcher)

        def stop() -> None:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

        return stop

    def when_connected(self) -> Deferred[None]:
        if self._health.connected:
            d: Deferred[None] = Deferred()
            self._clock.callLater(0, d.callback, None)
            return d
        return self._connected_waiters.wait()

    def close(self) -> Deferred[None]:
        self._closed = True
        self._watchers.clear()
        ds = [self._commands.stop(), self._subscriber.stop()]
        return DeferredList(ds).addCallback(lambda _: None)

    def _links(self) -> Iterable[_Link]:
        return (self._commands, self._subscriber)

    def _changed(self) -> None:
        down = [link for link in self._links() if not link.up]
        reason = down[0].reason if down else None
        if (not down) == self._health.connected and reason == self._health.reason:
            return
        self._health = Health(not down, time.time(), reason)
        if self._closed:
            return
        if not down:
            self._connected_waiters.fire(None)
        for watcher in list(self._watchers):
            try:
                watcher(self._health)
            except Exception:
                self._log.failure("store: a health watcher failed")
