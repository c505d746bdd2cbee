"""twistd nbbridge-client: forward local ports to an agent's services through the relay."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString

from nbbridge._memory import care_for_memory
from nbbridge.crypto import parse_public_key
from nbbridge.transport import listen_endpoint_string
from nbbridge.tunnel import AgentLink, TunnelOptions

from ._forward import ForwardService
from ._status import DEFAULT_STATUS, StatusService, check_status_endpoint


class Options(TunnelOptions):
    synopsis = (
        "--relay URL --agent NAME --agent-key PUBKEY --key FILE [--token-file FILE] "
        "--forward SERVICE=LISTEN [--forward ...]"
    )
    longdesc = (
        "Listens on each LISTEN endpoint (a bare port means 127.0.0.1:PORT) and carries every "
        "connection, end-to-end encrypted, to SERVICE on the agent. The token comes from "
        "--token-file or $NBBRIDGE_TOKEN. Every flag may instead be set in a TOML file "
        "(--config, default ~/.config/nbbridge/client.toml if it exists): agent_key = "
        '"nbb1...", forward = ["jupyter=8080"], ...; flags given here override it.'
    )
    command = "nbbridge-client"
    default_config = "~/.config/nbbridge/client.toml"
    required = ("agent", "agent-key")
    mapping_flag = "forward"

    #: A bare port means 127.0.0.1; TCP, TLS and UNIX forwards get a deep accept queue (a
    #: browser or a load test opens many connections at once).
    complete_endpoint = staticmethod(listen_endpoint_string)

    optParameters = [
        ["agent", None, None, "name of the agent to reach"],
        ["agent-key", None, None, "the agent's public key (nbb1...), pinned"],
        [
            "status",
            None,
            DEFAULT_STATUS,
            "loopback endpoint of the status page and JSON (`nbbridge status`), or off",
        ],
    ]

    def opt_forward(self, value: str) -> None:
        """SERVICE=LISTEN: listen on LISTEN, forward to SERVICE (repeatable)"""
        self.add_mapping(value)

    def parse(self) -> None:
        self["agent_public_key"] = parse_public_key(self["agent-key"])
        self["status"] = check_status_endpoint(self["status"])


def makeService(options: Options, reactor: Any = None) -> IService:
    """The forwards, sharing one link to the agent."""
    if reactor is None:
        from twisted.internet import reactor
    link = AgentLink(
        reactor,
        options["relay_url"],
        options["agent"],
        options["agent_public_key"],
        options["private_key"],
        options["token"],
        options["ca"],
        channel_limits=options["channel_limits"],
        resume_grace=options["resume-grace"],
    )
    top = MultiService()
    link.setServiceParent(top)
    forwards = [
        ForwardService(serverFromString(reactor, listen), service, link, reactor)
        for service, listen in options["forward"]
    ]
    for forward in forwards:
        forward.setServiceParent(top)
    if options["status"] is not None:
        status = serverFromString(reactor, options["status"])
        StatusService(status, link, forwards, reactor).setServiceParent(top)
    care_for_memory(top, reactor)
    return top
