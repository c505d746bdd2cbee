"""Acceptor policies: what an OPEN from the peer may connect to.

The agent side of a session never acts as an open proxy: it connects a channel only to an
endpoint its acceptor names for the requested service, and refuses anything else with a
reason the opener receives as an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs
from twisted.internet.interfaces import IStreamClientEndpoint

from ._errors import UnknownService


@attrs.frozen
class OpenRequest:
    """What the peer asked for when it opened a channel."""

    service: str
    metadata: Mapping[str, str]
    channel: int


class Acceptor(Protocol):
    """Maps an open request to the endpoint to connect, or raises ChannelOpenFailed."""

    def __call__(self, request: OpenRequest) -> IStreamClientEndpoint: ...


@attrs.frozen
class ServiceMap:
    """The usual acceptor: a fixed table of service name -> client endpoint."""

    services: Mapping[str, IStreamClientEndpoint]

    def __call__(self, request: OpenRequest) -> IStreamClientEndpoint:
        try:
            return self.services[request.service]
        except KeyError:
            raise UnknownService(f"unknown service {request.service!r}") from None
