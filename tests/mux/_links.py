"""Links that can be cut, for resumption tests: two sessions, any number of links in turn.

A :class:`CutLink` is an in-memory byte pipe between two protocols whose writes wait in
buffers until ``flush`` moves them; ``cut`` drops whatever is still buffered (bytes lost in
flight, as with a relay that dies) and tells both protocols the connection was lost. Each
end's transport carries what the secure channel would tell the mux about its handshake: the
session secret, the handshake hash, the peer's payload, the peer's key.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from nbbridge.mux import (
    RESUME_FEATURE,
    Acceptor,
    LinkEnd,
    MuxSession,
    SessionRegistry,
    features_payload,
)


class _End:
    """One end's transport: writes wait in ``out`` until the link flushes them."""

    disconnecting = False

    def __init__(self, link: CutLink, protocol: IProtocol, **handshake: Any) -> None:
        self.link = link
        self.protocol = protocol
        self.out: list[bytes] = []
        self.producer: Any = None
        for name, value in handshake.items():
            setattr(self, name, value)

    def write(self, data: bytes) -> None:
        if not self.link.cut_already and not self.link.client_gone:
            self.out.append(bytes(data))

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.link.closing = True

    def abortConnection(self) -> None:
        self.link.cut()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1)

    getHost = getPeer


class CutLink:
    """A link between a client protocol and an agent protocol that can be cut at any byte."""

    def __init__(
        self,
        client: IProtocol,
        agent: IProtocol,
        client_key: object = "client-key",
        agent_features: bytes = features_payload(RESUME_FEATURE),
    ) -> None:
        secret = os.urandom(32)
        handshake_hash = os.urandom(32)
        self.cut_already = False
        self.client_gone = False
        self.closing = False
        self.client = _End(
            self,
            client,
            session_secret=secret,
            handshake_hash=handshake_hash,
            peer_payload=agent_features,
            remote_static="agent-key",
        )
        self.agent = _End(
            self,
            agent,
            session_secret=secret,
            handshake_hash=handshake_hash,
            peer_payload=b"",
            remote_static=client_key,
        )
        agent.makeConnection(self.agent)  # type: ignore[arg-type]
        client.makeConnection(self.client)  # type: ignore[arg-type]

    def flush(self, budget: int | None = None) -> int:
        """Deliver buffered bytes both ways until none are left (or BUDGET bytes moved)."""
        moved = 0
        while not self.cut_already:
            progress = False
            for src, dst in ((self.client, self.agent), (self.agent, self.client)):
                if not src.out or self.cut_already:
                    continue
                data = b"".join(src.out)
                src.out.clear()
                if budget is not None and moved + len(data) > budget:
                    keep = budget - moved
                    data = data[:keep]
                    self.cut()
                if data:
                    moved += len(data)
                    dst.protocol.dataReceived(data)
                progress = True
            if not progress:
                break
        if self.closing and not self.cut_already:
            self.cut()
        return moved

    def cut_client_side(self) -> None:
        """Only the client hears of the loss (its network changed); the agent's end of the
        link stays up, unaware, and what it writes goes nowhere."""
        self.client_gone = True
        self.client.out.clear()
        self.agent.out.clear()
        self.client.protocol.connectionLost(Failure(ConnectionLost("client's network changed")))

    def cut(self) -> None:
        """The link dies: what was not delivered is lost; both ends hear of it."""
        if self.cut_already:
            return
        self.cut_already = True
        self.client.out.clear()
        self.agent.out.clear()
        why = Failure(ConnectionLost("link cut"))
        self.agent.protocol.connectionLost(why)
        self.client.protocol.connectionLost(why)


class Pair:
    """A client session and the agent's sessions, joined by successive CutLinks."""

    def __init__(
        self,
        acceptor: Acceptor | None,
        grace: float | None = 60,
        agent_grace: float | None = 60,
        window: int | None = None,
    ) -> None:
        self.clock = Clock()
        self.registry = SessionRegistry()
        self.acceptor = acceptor
        self.agent_grace = agent_grace
        self.window_kwargs: dict[str, Any] = {"window": window} if window else {}
        self.client = MuxSession(
            initiator=True,
            label="client",
            clock=self.clock,
            resume_grace=grace,
            **self.window_kwargs,
        )
        self.agent_ends: list[LinkEnd] = []
        self.link: CutLink | None = None

    def connect(
        self,
        client_key: object = "client-key",
        agent_features: bytes | None = None,
        flush: bool = True,
    ) -> CutLink:
        """A new link: a fresh agent-side session, the client's session on the other end."""
        agent = MuxSession(
            initiator=False,
            acceptor=self.acceptor,
            label=f"agent-link-{len(self.agent_ends)}",
            clock=self.clock,
            resume_grace=self.agent_grace,
            registry=self.registry,
            **self.window_kwargs,
        )
        end = LinkEnd(agent)
        self.agent_ends.append(end)
        features = features_payload(RESUME_FEATURE) if self.agent_grace else b""
        self.link = CutLink(
            LinkEnd(self.client),
            end,
            client_key,
            features if agent_features is None else agent_features,
        )
        if flush:
            self.link.flush()
            self.clock.advance(0)
        return self.link

    @property
    def agent(self) -> MuxSession:
        """The agent's session the last link carries."""
        return self.agent_ends[-1].session
