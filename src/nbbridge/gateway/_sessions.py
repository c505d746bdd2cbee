"""Reservations and the service instances they start.

``reserve(service)`` picks a free index of the service (``count`` is the limit: reserved plus
running), and stores a reservation under a fresh token (192 random bits) in the store, with
``--timeout`` as its TTL. A WebSocket with ``?token=T`` takes the reservation (once: of two
takers only one gets it), starts the instance's script, connects to the socket it reports
and is spliced to it; when the WebSocket closes, the instance is stopped and its index freed.
A reservation not used in time is dropped and its index freed.

Tokens are secrets: never logged, never in an error message.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import attrs
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    maybeDeferred,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from nbbridge.contract import CloseCode
from nbbridge.store import ExpiringRecords, Store

from ._scripts import DEFAULT_READY_TIMEOUT, Address, RemoteServiceScript, ServiceSpec
from ._splice import SERVICE_UNAVAILABLE, GatewayWebSocket, Opened, Opener, Refused
from ._target import connect_service

#: Close code: the token is unknown, used or expired.
BAD_TOKEN = CloseCode.BAD_TOKEN


@attrs.frozen
class Reservation:
    """What a token reserves (kept in the store)."""

    service: str
    index: int
    user: str


class ApiError(Exception):
    """A REST request is refused: HTTP STATUS and a message for the JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.define
class _Pool:
    """One service's indices: which are reserved (by token) and which run (their script)."""

    spec: ServiceSpec
    reserved: dict[str, tuple[int, Any]] = attrs.field(factory=dict)
    running: dict[int, RemoteServiceScript | None] = attrs.field(factory=dict)

    def taken(self) -> set[int]:
        return {i for i, _ in self.reserved.values()} | set(self.running)

    def free_index(self) -> int | None:
        taken = self.taken()
        return next((i for i in range(self.spec.count) if i not in taken), None)


class Sessions:
    """The reservations and instances of every configured service (an `Opener`)."""

    _log = Logger()

    def __init__(
        self,
        specs: Iterable[ServiceSpec],
        store: Store,
        clock: Any,
        timeout: float,
        fallback: Opener,
    ) -> None:
        self._pools = {spec.name: _Pool(spec) for spec in specs}
        self._records = ExpiringRecords(store, "gateway:reservation:", Reservation)
        self._clock = clock
        self._timeout = timeout
        self._fallback = fallback
        self._started = time.time()
        #: WebSockets spliced to an instance
        self.connections = 0
        #: every open WebSocket of the gateway (set by the tap once its factory exists)
        self.open_websockets: Callable[[], int] | None = None
        self._stopping: set[Deferred[Any]] = set()
        self._idle: list[Deferred[None]] = []

    # -- REST ------------------------------------------------------------------------------------

    async def reserve(
        self, service: str, user: str, groups: frozenset[str] | None
    ) -> dict[str, Any]:
        """Reserve an instance of SERVICE for USER (GROUPS None: any group, loopback)."""
        pool = self._pools.get(service)
        if pool is None:
            raise ApiError(404, f"unknown service: {service}")
        group = pool.spec.group
        if group is not None and groups is not None and group not in groups:
            raise ApiError(403, f"service {service} is only for group {group}")
        index = pool.free_index()
        if index is None:
            raise ApiError(503, f"all {pool.spec.count} instances of {service} are taken")
        token = secrets.token_urlsafe(24)
        timer = self._clock.callLater(self._timeout, self._expire, service, token)
        pool.reserved[token] = (index, timer)
        try:
            await self._records.put(token, Reservation(service, index, user), self._timeout)
        except Exception:
            self._drop(pool, token)
            raise
        self._log.info(
            "reserved {service} #{index} for {user}", service=service, index=index, user=user
        )
        return {"token": token, "service": service, "expires_in": self._timeout}

    def _drop(self, pool: _Pool, token: str) -> None:
        _, timer = pool.reserved.pop(token, (None, None))
        if timer is not None and timer.active():
            timer.cancel()

    def _expire(self, service: str, token: str) -> None:
        pool = self._pools[service]
        if token in pool.reserved:
            index, _ = pool.reserved.pop(token)
            self._log.info(
                "a reservation of {service} #{index} expired unused", service=service, index=index
            )
            self._records.delete(token).addErrback(
                lambda f: self._log.failure("dropping an expired reservation failed", f)
            )

    def status(self) -> dict[str, Any]:
        services = {}
        for name, pool in self._pools.items():
            services[name] = {
                "count": pool.spec.count,
                "in_use": len(pool.running),
                "reserved": len(pool.reserved),
                "file_ext": pool.spec.file_ext,
                "group": pool.spec.group,
            }
        return {
            "services": services,
            "reservations": sum(len(p.reserved) for p in self._pools.values()),
            "connections": (
                self.open_websockets() if self.open_websockets is not None else self.connections
            ),
            "uptime": round(time.time() - self._started, 3),
        }

    # -- WebSockets ------------------------------------------------------------------------------

    def open(self, token: str | None, ws: GatewayWebSocket) -> Deferred[Opened]:
        if token is None:
            return self._fallback.open(None, ws)
        return Deferred.fromCoroutine(self._open(token, ws))

    async def _open(self, token: str, ws: GatewayWebSocket) -> Opened:
        record = await self._records.take(token)
        pool = self._pools.get(record.service) if record is not None else None
        if record is None or pool is None or token not in pool.reserved:
            self._log.info("{label}: refused an unknown, used or expired token", label=ws.label)
            raise Refused(BAD_TOKEN, "unknown, used or expired reservation token")
        index, _ = pool.reserved[token]
        self._drop(pool, token)
        pool.running[index] = None
        script: RemoteServiceScript | None = None
        name = pool.spec.name
        timeout = float(pool.spec.options.get("ready_timeout", DEFAULT_READY_TIMEOUT))
        protocol_wait = None
        try:
            script = pool.spec.build(self._clock)
            pool.running[index] = script
            ready = maybeDeferred(script.start, index)
            ready.addTimeout(timeout, self._clock)
            host, port = cast(Address, await ready)
            self._log.info(
                "{service} #{index} listens on {host}:{port}",
                service=name,
                index=index,
                host=host,
                port=port,
            )
            protocol_wait = connect_service(
                HostnameEndpoint(self._clock, host, port), ws, self._clock
            )
            protocol = await protocol_wait
        except BaseException as e:
            self._finish(pool, index, script)
            if isinstance(e, CancelledError):
                raise
            if isinstance(e, TimeoutError) and protocol_wait is None:
                why = f"it reported no socket within {timeout:g} s"
            else:
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self._log.warn(
                "{service} #{index} failed to start: {why}", service=name, index=index, why=why
            )
            raise Refused(SERVICE_UNAVAILABLE, f"{name} failed to start: {why}") from None
        self.connections += 1
        self._log.info(
            "{label}: spliced to {service} #{index}", label=ws.label, service=name, index=index
        )

        def release() -> None:
            self.connections -= 1
            self._finish(pool, index, script)

        return Opened(protocol, release)

    def _finish(self, pool: _Pool, index: int, script: RemoteServiceScript | None) -> Deferred[Any]:
        """Stop SCRIPT's instance; its index is free once it has stopped."""
        if script is None:
            pool.running.pop(index, None)
            return Deferred.fromCoroutine(_nothing())
        d = maybeDeferred(script.stop)
        self._stopping.add(d)

        def done(result: Any) -> None:
            self._stopping.discard(d)
            if pool.running.get(index) is script:
                del pool.running[index]
            if hasattr(result, "getErrorMessage"):
                self._log.warn(
                    "stopping {service} #{index} failed: {why}",
                    service=pool.spec.name,
                    index=index,
                    why=result.getErrorMessage(),
                )
            if not self._stopping and not any(p.running for p in self._pools.values()):
                idle, self._idle = self._idle, []
                for waiter in idle:
                    waiter.callback(None)

        return d.addBoth(done)

    def idle(self) -> Deferred[None]:
        """Fires once no instance runs or is stopping."""
        d: Deferred[None] = Deferred()
        if not self._stopping and not any(p.running for p in self._pools.values()):
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    def stop_all(self) -> Deferred[Any]:
        """Stop every running instance (the gateway is stopping)."""
        waits = []
        for pool in self._pools.values():
            for token in list(pool.reserved):
                self._drop(pool, token)
            for index, script in list(pool.running.items()):
                waits.append(self._finish(pool, index, script))
        return DeferredList(waits)


async def _nothing() -> None:
    return None
