"""twistd nbbridge-client: forward local ports to an agent's services through the relay."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from nbbridge._secrets import SecretError, read_secret
from nbbridge.crypto import KeyFileError, KeyFormatError, load_private_key, parse_public_key
from nbbridge.transport import endpoint_string, parse_mapping, parse_relay_url

from ._forward import ForwardService
from ._link import AgentLink


class Options(usage.Options):
    synopsis = (
        "--relay URL --agent NAME --agent-key PUBKEY --key FILE [--token-file FILE] "
        "--forward SERVICE=LISTEN [--forward ...]"
    )
    longdesc = (
        "Listens on each LISTEN endpoint (a bare port means 127.0.0.1:PORT) and carries every "
        "connection, end-to-end encrypted, to SERVICE on the agent. The token comes from "
        "--token-file or $NBBRIDGE_TOKEN."
    )
    optFlags = [["insecure", None, "allow ws:// to a relay that is not on loopback"]]
    optParameters = [
        ["relay", None, None, "relay URL, e.g. wss://relay.example.com"],
        ["agent", None, None, "name of the agent to reach"],
        ["agent-key", None, None, "the agent's public key (nbb1...), pinned"],
        ["token-file", None, None, "file holding the client token (else $NBBRIDGE_TOKEN)"],
        ["key", None, None, "this client's private key file (nbbridge keygen)"],
        ["ca", None, None, "PEM file of the CA(s) to trust for wss:// instead of the system's"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["forward"] = []

    def opt_forward(self, value: str) -> None:
        """SERVICE=LISTEN: listen on LISTEN, forward to SERVICE (repeatable)"""
        try:
            service, listen = parse_mapping(value)
        except ValueError as e:
            raise usage.UsageError(f"--forward {value}: {e}") from None
        self["forward"].append((service, endpoint_string(listen)))

    def postOptions(self) -> None:
        for flag in ("relay", "agent", "agent-key", "key"):
            if not self[flag]:
                raise usage.UsageError(f"--{flag} is required")
        if not self["forward"]:
            raise usage.UsageError("give at least one --forward SERVICE=LISTEN")
        try:
            self["relay_url"] = parse_relay_url(self["relay"], self["insecure"])
            self["agent_public_key"] = parse_public_key(self["agent-key"])
            self["private_key"] = load_private_key(self["key"])
            self["token"] = read_secret(self["token-file"], "NBBRIDGE_TOKEN")
        except (ValueError, KeyFileError, KeyFormatError, SecretError) as e:
            raise usage.UsageError(str(e)) from None


class _LinkService(Service):
    def __init__(self, link: AgentLink) -> None:
        self.link = link

    def stopService(self) -> Deferred[object]:
        super().stopService()
        return self.link.stop()


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
    )
    top = MultiService()
    _LinkService(link).setServiceParent(top)
    for service, listen in options["forward"]:
        ForwardService(serverFromString(reactor, listen), service, link).setServiceParent(top)
    return top
