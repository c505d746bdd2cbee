"""The agent: keeps a control connection to the relay and answers each dial with a data link.

Each data link carries the responder side of a Noise session (only clients whose keys are in
the authorized-keys file get through) and a mux session whose acceptor opens channels only to
the services this agent exposes: it is never an open proxy.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbbridge.crypto import AuthorizedKeys, PrivateKey, PublicKey, Responder, SecureProtocol
from nbbridge.mux import MuxSession, ServiceMap
from nbbridge.transport import RelayURL, client_endpoint, websocket_client_factory
from nbbridge.transport._wsstream import StreamClientProtocol, bind


class _ControlProtocol(StreamClientProtocol):
    """The agent's control connection: registration, and dial requests from the relay."""

    def onOpen(self) -> None:
        """Nothing runs inside a control connection; wait for the relay's "registered"."""

    def textReceived(self, text: str) -> None:
        agent: Agent = self.owner
        try:
            message = json.loads(text)
            op = message["op"]
        except (ValueError, KeyError, TypeError):
            self._log.warn("relay sent a malformed control message; ignored")
            return
        if op == "dial" and isinstance(message.get("link"), str):
            agent.dial(message["link"])
        elif op == "registered":
            agent.control_up(self)
        else:
            self._log.info("relay sent control message {op!r}; ignored", op=op)

    def closed(self, code: int | None, reason: str) -> None:
        agent: Agent = self.owner
        agent.control_down(code, reason)


class _DataProtocol(StreamClientProtocol):
    """One data link: Noise responder and mux over a WebSocket the relay splices to a client."""

    def make_inner(self) -> IProtocol:
        agent: Agent = self.owner
        self.session = MuxSession(
            initiator=False, acceptor=agent.acceptor, label=f"link {self.factory.link_id[:6]}"
        )
        secure = SecureProtocol(
            self.session, Responder(agent.key, agent.is_authorized), agent.clock
        )
        secure.handshake.addCallbacks(self._secured, self._refused)
        agent.links.add(self)
        return secure

    def _secured(self, client: PublicKey) -> None:
        agent: Agent = self.owner
        self._log.info("client {client} connected", client=agent.describe_client(client))

    def _refused(self, failure: Failure) -> None:
        self._log.warn("link refused: {why}", why=failure.getErrorMessage())

    def closed(self, code: int | None, reason: str) -> None:
        self.owner.links.discard(self)


class Agent(MultiService):
    """Exposes ``services`` to authorized clients through the relay, under ``name``."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        relay: RelayURL,
        name: str,
        token: str,
        key: PrivateKey,
        authorized: AuthorizedKeys,
        services: Mapping[str, IStreamClientEndpoint],
        ca_file: str | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.clock = reactor
        self.relay = relay
        self.agent_name = name
        self.key = key
        self.authorized = authorized
        self.acceptor = ServiceMap(dict(services))
        self.links: set[_DataProtocol] = set()
        self._token = token
        self._ca_file = ca_file
        self.online = False
        self._stopping = False
        factory = self._factory(f"/v1/agents/{name}/control", _ControlProtocol, text=True)
        self.control = ClientService(
            client_endpoint(reactor, relay, ca_file),
            factory,
            retryPolicy=backoffPolicy(initialDelay=1.0, maxDelay=60.0, jitter=random.random),
            clock=reactor,
        )
        self.control.setServiceParent(self)

    def _factory(self, route: str, protocol: type[StreamClientProtocol], text: bool) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"}
        factory = websocket_client_factory(self.relay.url_for(route), headers, protocol, text=text)
        return bind(factory, self)

    def is_authorized(self, client: PublicKey) -> bool:
        return client in self.authorized

    def describe_client(self, client: PublicKey) -> str:
        label = self.authorized.label_for(client)
        text = client.to_text()
        return f"{label} ({text[:12]}…)" if label else text

    def control_up(self, protocol: _ControlProtocol) -> None:
        self.online = True
        self._log.info(
            "agent {name} online at {relay}, exposing {services}",
            name=self.agent_name,
            relay=self.relay.netloc,
            services=", ".join(sorted(self.acceptor.services)) or "nothing",
        )

    def control_down(self, code: int | None, reason: str) -> None:
        if self._stopping:
            self._log.info("control connection to the relay closed: agent stopping")
        elif self.online or code not in (None, 1006):
            self._log.warn(
                "control connection to the relay closed ({code}): {reason}",
                code=code,
                reason=reason or "connection lost",
            )
        self.online = False

    def dial(self, link_id: str) -> None:
        """The relay has a client for us: open the data connection it asked for."""
        route = f"/v1/agents/{self.agent_name}/data/{link_id}"
        factory = self._factory(route, _DataProtocol, text=False)
        factory.link_id = link_id
        d = client_endpoint(self.reactor, self.relay, self._ca_file).connect(factory)
        d.addErrback(
            lambda f: self._log.warn("cannot open data link: {why}", why=f.getErrorMessage())
        )

    def stopService(self) -> Deferred[None]:
        self._stopping = True
        closing = []
        for link in list(self.links):
            if link.session is not None and link.session.is_open:
                closing.append(link.session.when_closed())
                link.session.close("agent stopping")
        d = super().stopService()
        return DeferredList([d, *closing]).addCallback(lambda _: None)  # type: ignore[arg-type]
