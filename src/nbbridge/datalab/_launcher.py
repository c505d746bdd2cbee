"""Launchers: who runs a datalab instance, and how its connections reach it.

A launcher starts an instance for an uploaded file and answers with an `InstanceRecord`
(stored, so another datalab process sharing the store can reach the instance too), gives the
endpoint every proxied connection to that instance goes through, and stops instances. The
`subprocess` launcher runs them on this machine (`nbbridge.instances`); the `agent` launcher
asks an agent behind NAT to run them (`_agent_launcher`).
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint

from nbbridge.instances import JupyterProcesses

from ._records import InstanceRecord


class Launcher(Protocol):
    """Starts and stops instances; gives the endpoint of each."""

    #: what ``InstanceRecord.launcher`` says for the instances this launcher runs
    name: str

    def spool(self) -> str:
        """A directory where uploads are written before ``start`` takes them."""

    async def start(self, instance_id: str, filename: str, upload: str) -> InstanceRecord:
        """Start an instance holding the file UPLOAD (taken over) as FILENAME."""

    def when_ended(self, record: InstanceRecord) -> Deferred[None]:
        """Fires when the instance has ended (stopped, or died by itself)."""

    def adopt(self, record: InstanceRecord) -> None:
        """Serve an instance another daemon started (only launchers whose instances outlive
        a daemon are asked)."""

    async def stop(self, record: InstanceRecord) -> None:
        """Stop the instance; nothing of it is left afterwards."""

    def endpoint(self, record: InstanceRecord) -> IStreamClientEndpoint:
        """Where connections to the instance's Jupyter server go."""

    async def close(self) -> None:
        """Stop every instance this launcher started (the daemon is stopping)."""


class SubprocessLauncher:
    """Each instance is a ``jupyter server`` child process of this daemon, on loopback."""

    name = "subprocess"

    def __init__(self, reactor: object, processes: JupyterProcesses) -> None:
        self._reactor = reactor
        self.processes = processes

    def spool(self) -> str:
        return self.processes.spool()

    async def start(self, instance_id: str, filename: str, upload: str) -> InstanceRecord:
        running = await self.processes.start(instance_id, filename, upload)
        return InstanceRecord(
            id=instance_id,
            launcher=self.name,
            filename=filename,
            token=running.token,
            host="127.0.0.1",
            port=running.port,
        )

    def when_ended(self, record: InstanceRecord) -> Deferred[None]:
        running = self.processes.get(record.id)
        if running is None:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        return running.when_ended()

    def adopt(self, record: InstanceRecord) -> None:
        raise NotImplementedError("local instances never outlive their daemon")

    async def stop(self, record: InstanceRecord) -> None:
        await self.processes.stop(record.id)

    def endpoint(self, record: InstanceRecord) -> IStreamClientEndpoint:
        return TCP4ClientEndpoint(self._reactor, record.host, record.port, timeout=10)

    async def close(self) -> None:
        await self.processes.stop_all()
