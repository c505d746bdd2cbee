"""Where a WebSocket without a reservation goes: a TCP address or an agent's service.

``--client_hostname``/``--client_port`` name a TCP service, as in the original;
``--target agent:NAME/SERVICE`` names a service of an nbbridge agent, reached end-to-end
encrypted through a relay (`nbbridge.tunnel.AgentLink`), for a service behind NAT.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from ._splice import SERVICE_UNAVAILABLE, GatewayWebSocket, Opened, Refused, ServiceSide

#: How long a connect to the service may take, in seconds.
CONNECT_TIMEOUT = 30.0


@attrs.frozen
class AgentTarget:
    """``--target agent:NAME/SERVICE``."""

    agent: str
    service: str


def parse_target(text: str) -> AgentTarget:
    """``agent:NAME/SERVICE`` as an `AgentTarget`; ValueError if malformed."""
    kind, _, rest = text.partition(":")
    name, _, service = rest.partition("/")
    if kind != "agent" or not name or not service or "/" in service:
        raise ValueError(f"--target {text}: expected agent:NAME/SERVICE")
    return AgentTarget(name, service)


def connect_service(
    endpoint: IStreamClientEndpoint, ws: GatewayWebSocket, clock: IReactorTime
) -> Deferred[ServiceSide]:
    """A `ServiceSide` for WS connected through ENDPOINT, within `CONNECT_TIMEOUT`."""
    d: Deferred[Any] = connectProtocol(endpoint, ServiceSide(ws))
    d.addTimeout(CONNECT_TIMEOUT, clock)
    return d


@attrs.frozen
class FixedTarget:
    """Every WebSocket goes to ENDPOINT (basic mode); a token is ignored, as in the original."""

    endpoint: IStreamClientEndpoint
    clock: IReactorTime
    description: str

    def open(self, token: str | None, ws: GatewayWebSocket) -> Deferred[Opened]:
        d = connect_service(self.endpoint, ws, self.clock)
        return d.addCallback(Opened)


@attrs.frozen
class NoTarget:
    """No basic target: only WebSockets with a reservation token are served."""

    def open(self, token: str | None, ws: GatewayWebSocket) -> Deferred[Opened]:
        from twisted.internet.defer import fail

        return fail(Refused(SERVICE_UNAVAILABLE, "no service: reserve one (/v1/reserve) first"))
