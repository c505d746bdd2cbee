"""ChannelEndpoint: the one way in nbbridge to open a channel and put a protocol on it.

Port forwards, the relay's web front, the gateway and the mixer all ask for "a connection to
service S on agent A" through this IStreamClientEndpoint, so every consumer gets the same
flow control, errors and clean-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from zope.interface import implementer

from ._errors import ChannelOpenFailed
from ._session import MuxSession

SessionSource = Callable[[], Deferred[MuxSession]]


@implementer(IStreamClientEndpoint)
class ChannelEndpoint:
    """Connects a protocol factory to a new channel to ``service``.

    :param sessions: gives the session to open the channel on, once one is up (a client
        waiting for its link to come back passes a source that waits for it).
    """

    def __init__(
        self,
        sessions: SessionSource,
        service: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self._sessions = sessions
        self.service = service
        self._metadata = dict(metadata or {})

    @classmethod
    def on(cls, session: MuxSession, service: str, **metadata: str) -> ChannelEndpoint:
        """An endpoint for channels on one given session."""
        return cls(lambda: succeed(session), service, metadata)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        session = await self._sessions()
        channel = await session.open(self.service, self._metadata)
        protocol = protocolFactory.buildProtocol(channel.getPeer())
        if protocol is None:
            channel.loseConnection()
            raise ChannelOpenFailed(f"the factory refused a channel to {self.service!r}")
        channel.attach(protocol)
        return protocol
