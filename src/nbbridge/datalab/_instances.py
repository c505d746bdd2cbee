"""The instances this daemon started: the limit on their number, idle stops, records.

An instance counts as active while it has an open proxied socket (a kernel WebSocket) and
for ``idle_timeout`` seconds after its last request; then it is stopped. Its record (how to
reach it, its token) lives in the store from start to stop, so sessions and nonces naming a
stopped instance lead nowhere.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ._api import ApiError
from ._launcher import Launcher
from ._records import INSTANCE_PREFIX, DatalabState, InstanceRecord

DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_MAX_INSTANCES = 10


@attrs.define(eq=False)
class _Activity:
    record: InstanceRecord
    sockets: int = 0
    timer: IDelayedCall | None = None


class Instances:
    """Starts instances through LAUNCHER (at most MAX at once) and stops idle ones."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        launcher: Launcher,
        state: DatalabState,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_instances: int = DEFAULT_MAX_INSTANCES,
    ) -> None:
        self._clock = clock
        self.launcher = launcher
        self._state = state
        self.idle_timeout = idle_timeout
        self.max_instances = max_instances
        self._live: dict[str, _Activity] = {}
        self._starting = 0
        self._closing = False

    def __len__(self) -> int:
        return len(self._live) + self._starting

    def ids(self) -> list[str]:
        return sorted(self._live)

    async def start(self, filename: str, upload: str) -> InstanceRecord:
        """A new instance holding UPLOAD as FILENAME; FULL (503) past the limit."""
        if self._closing:
            raise ApiError(503, "FULL", "the datalab is stopping")
        if len(self) >= self.max_instances:
            raise ApiError(
                503, "FULL", f"all {self.max_instances} instances are in use; try again later"
            )
        instance_id = secrets.token_urlsafe(12)
        self._starting += 1
        try:
            record = await self.launcher.start(instance_id, filename, upload)
        finally:
            self._starting -= 1
        await self._state.instances.put(instance_id, record, None)
        activity = self._live[instance_id] = _Activity(record)
        self._arm(activity)
        self._watch_end(record)
        return record

    def _watch_end(self, record: InstanceRecord) -> None:
        instance_id = record.id
        self.launcher.when_ended(record).addCallback(lambda _: self._ended(instance_id))

    async def lookup(self, instance_id: str) -> InstanceRecord | None:
        """The record of a running instance (from the store: it may run for another process)."""
        return await self._state.instances.get(instance_id)

    def touch(self, instance_id: str) -> None:
        """A request reached the instance: its idle time starts again."""
        activity = self._live.get(instance_id)
        if activity is not None and activity.sockets == 0:
            self._arm(activity)

    def socket_opened(self, instance_id: str) -> Callable[[], None]:
        """A long-lived connection opened; call the answer when it closes."""
        activity = self._live.get(instance_id)
        if activity is None:
            return lambda: None
        activity.sockets += 1
        if activity.timer is not None and activity.timer.active():
            activity.timer.cancel()
        activity.timer = None
        done = False

        def closed() -> None:
            nonlocal done
            if done:
                return
            done = True
            activity.sockets -= 1
            if activity.sockets == 0 and self._live.get(instance_id) is activity:
                self._arm(activity)

        return closed

    def _arm(self, activity: _Activity) -> None:
        if activity.timer is not None and activity.timer.active():
            activity.timer.reset(self.idle_timeout)
        else:
            activity.timer = self._clock.callLater(
                self.idle_timeout, self._idle, activity.record.id
            )

    def _idle(self, instance_id: str) -> None:
        self._log.info(
            "instance {id} idle for {s:g} s: stopping", id=instance_id, s=self.idle_timeout
        )
        d = Deferred.fromCoroutine(self.stop(instance_id))
        d.addErrback(lambda f: self._log.failure("stopping idle instance {id}", f, id=instance_id))

    async def stop(self, instance_id: str) -> bool:
        """Stop the instance; False if this process does not run it."""
        activity = self._live.get(instance_id)
        if activity is None:
            return False
        await self._state.instances.delete(instance_id)
        await self.launcher.stop(activity.record)
        return True

    def _ended(self, instance_id: str) -> None:
        activity = self._live.pop(instance_id, None)
        if activity is None:
            return
        if activity.timer is not None and activity.timer.active():
            activity.timer.cancel()
        d = self._state.instances.delete(instance_id)
        d.addErrback(lambda f: self._log.failure("forgetting instance {id}", f, id=instance_id))

    async def adopt(self) -> list[str]:
        """Take over the running instances of this launcher's kind that the store lists
        (a previous daemon sharing the store left them): their idle timers start now."""
        adopted = []
        for key in await self._state.instances.store.scan(INSTANCE_PREFIX):
            instance_id = key[len(INSTANCE_PREFIX) :]
            if instance_id in self._live:
                continue
            record = await self._state.instances.get(instance_id)
            if record is None or record.launcher != self.launcher.name:
                continue
            activity = self._live[instance_id] = _Activity(record)
            self._arm(activity)
            self.launcher.adopt(record)
            self._watch_end(record)
            adopted.append(instance_id)
        if adopted:
            self._log.info("adopted {n} running instance(s)", n=len(adopted))
        return adopted

    async def close(self, stop_instances: bool = True) -> None:
        """Stop every instance (the daemon is stopping), or only let go of them."""
        self._closing = True
        if stop_instances:
            stops = [Deferred.fromCoroutine(self.stop(i)) for i in list(self._live)]
            await DeferredList(stops, consumeErrors=True)
        for activity in self._live.values():
            if activity.timer is not None and activity.timer.active():
                activity.timer.cancel()
        await self.launcher.close()
