"""A scripted service for reservation tests: each instance listens on 127.0.0.1 (port 0),
greets and echoes like `Greeter`; starts and stops are reported to `EVENTS`.

Config scripts subclass `ScriptedService` in a file of their own (the gateway loads the
subclass a script file defines, as the original loaded its scripts).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nbbridge.gateway import RemoteServiceScript

from ._harness import GreeterFactory


class Events:
    """What the scripted instances did, in order; waiters for the next matching event."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self._waiters: list[tuple[tuple[str, int], Deferred[None]]] = []

    def add(self, event: tuple[str, int]) -> None:
        self.seen.append(event)
        for wanted, d in list(self._waiters):
            if wanted == event:
                self._waiters.remove((wanted, d))
                d.callback(None)

    def wait(self, event: tuple[str, int]) -> Deferred[None]:
        """Fires when EVENT happens (at once if it already did and was not waited for)."""
        d: Deferred[None] = Deferred()
        if event in self.seen:
            self.seen.remove(event)
            d.callback(None)
        else:
            self._waiters.append((event, d))
        return d

    def reset(self) -> None:
        self.seen.clear()
        self._waiters.clear()


EVENTS = Events()


class ScriptedService(RemoteServiceScript):
    def start(self, index: int) -> tuple[str, int]:
        if self._common_options.get("fail"):
            raise RuntimeError("scripted failure")
        if self._common_options.get("hang"):
            self._port = None
            EVENTS.add(("hang", index))
            return Deferred()  # type: ignore[return-value]  # never reports a socket
        self._index = index
        self._factory = GreeterFactory()
        self._port: Any = self.reactor.listenTCP(0, self._factory, interface="127.0.0.1")
        EVENTS.add(("start", index))
        return ("127.0.0.1", self._port.getHost().port)

    def stop(self) -> Deferred[None]:
        if getattr(self, "_port", None) is None:
            return Deferred.fromCoroutine(_nothing())
        for connection in self._factory.connections:
            connection.transport.loseConnection()  # type: ignore[union-attr]
        d: Deferred[None] = self._port.stopListening()
        EVENTS.add(("stop", self._index))
        return d


SCRIPT = """
from tests.gateway._scripted import ScriptedService


class Service(ScriptedService):
    pass
"""


async def _nothing() -> None:
    return None
