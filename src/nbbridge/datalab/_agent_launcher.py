"""The ``agent`` launcher: instances run on an agent behind NAT, reached through the tunnel.

The datalab daemon is a tunnel client of the agent (`nbbridge.tunnel.AgentLink`, with its
own key, which the agent authorizes like any client's). Starting and stopping are control
exchanges over a channel to the agent's ``datalab`` service (`nbbridge.instances`), the file
travelling with the start; every proxied connection to an instance is a channel of its own.
All of it is end-to-end encrypted: the relay reads none of the instance's traffic.
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from nbbridge.instances import SERVICE, RemoteError, start_remote, stop_remote
from nbbridge.tunnel import AgentLink

from ._api import ApiError
from ._records import InstanceRecord


class AgentLauncher:
    """Instances on the agent LINK reaches."""

    name = "agent"
    _log = Logger()

    def __init__(self, link: AgentLink, work: str | None = None) -> None:
        self.link = link
        self._spool = tempfile.mkdtemp(prefix="nbbridge-datalab-spool-", dir=work)
        self._ended: dict[str, Deferred[None]] = {}

    def spool(self) -> str:
        return self._spool

    def _control(self) -> IStreamClientEndpoint:
        return self.link.endpoint(SERVICE, {"op": "control"})

    async def start(self, instance_id: str, filename: str, upload: str) -> InstanceRecord:
        try:
            token = await start_remote(self._control(), instance_id, filename, upload)
        except (RemoteError, ConnectionError, OSError) as e:
            self._log.warn("agent could not start instance {id}: {e}", id=instance_id, e=str(e))
            raise ApiError(503, "UNAVAILABLE", f"the instance could not be started: {e}") from None
        except Exception as e:  # a refused channel, the link down (ConnectError and kin)
            self._log.warn("agent unreachable for instance {id}: {e}", id=instance_id, e=str(e))
            raise ApiError(503, "UNAVAILABLE", f"the agent is unreachable: {e}") from None
        self._ended[instance_id] = Deferred()
        return InstanceRecord(id=instance_id, launcher=self.name, filename=filename, token=token)

    def when_ended(self, record: InstanceRecord) -> Deferred[None]:
        ended = self._ended.get(record.id)
        d: Deferred[None] = Deferred()
        if ended is None:
            d.callback(None)
        else:
            ended.addBoth(lambda _: d.callback(None))
        return d

    def adopt(self, record: InstanceRecord) -> None:
        self._ended.setdefault(record.id, Deferred())

    async def stop(self, record: InstanceRecord) -> None:
        try:
            await stop_remote(self._control(), record.id)
        except Exception as e:
            self._log.warn("stopping instance {id} on the agent: {e}", id=record.id, e=str(e))
        ended = self._ended.pop(record.id, None)
        if ended is not None:
            ended.callback(None)

    def endpoint(self, record: InstanceRecord) -> IStreamClientEndpoint:
        return self.link.endpoint(SERVICE, {"op": "connect", "instance": record.id})

    async def close(self) -> None:
        for name in os.listdir(self._spool):
            os.unlink(os.path.join(self._spool, name))
        os.rmdir(self._spool)
