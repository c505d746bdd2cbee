"""twistd nbbridge-agent: expose local services (Jupyter, ssh) to authorized clients."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString

from nbbridge._memory import care_for_memory
from nbbridge.crypto import load_authorized_keys
from nbbridge.instances import InstanceHost, JupyterProcesses
from nbbridge.mux import (
    DEFAULT_CONNECTS_IN_FLIGHT,
    LOOPBACK_RETRIES,
    Acceptor,
    PacedEndpoint,
    ServiceMap,
)
from nbbridge.transport import is_loopback_host, split_description
from nbbridge.tunnel import TunnelOptions

from ._agent import Agent


def client_endpoint_string(text: str) -> str:
    """A bare port means a service on this machine's loopback: ``tcp:127.0.0.1:PORT``."""
    if text.isdigit():
        return f"tcp:127.0.0.1:{text}"
    return text


def connect_retries(description: str) -> tuple[float, ...]:
    """When connects to the service at DESCRIPTION are made again (``PacedEndpoint``):
    ``LOOPBACK_RETRIES`` for a TCP service on this machine, where a connect still under way
    after 0.2 s lost its SYN to a full accept queue; none for a remote host (its round trip
    may be longer) or a UNIX socket (a full queue refuses at once)."""
    kind, args, kwargs = split_description(description)
    host = kwargs.get("host", args[0] if args else "")
    return LOOPBACK_RETRIES if kind == "tcp" and is_loopback_host(host) else ()


class Options(TunnelOptions):
    synopsis = (
        "--relay URL --name NAME --key FILE --authorized-keys FILE [--token-file FILE] "
        "--expose SERVICE=ENDPOINT [--expose ...]"
    )
    longdesc = (
        "Keeps a connection to the relay and, for each authorized client, opens channels to "
        "the exposed services only (--expose jupyter=tcp:127.0.0.1:8888; --expose ssh=22). "
        "The token comes from --token-file or $NBBRIDGE_TOKEN. Every flag may instead be set "
        "in a TOML file (--config, default /etc/nbbridge/agent.toml if it exists): name = "
        '"gpu", expose = ["jupyter=8888"], ...; flags given here override it.'
    )
    command = "nbbridge-agent"
    default_config = "/etc/nbbridge/agent.toml"
    required = ("name", "authorized-keys")
    mapping_flag = "expose"
    path_flags = (*TunnelOptions.path_flags, "authorized-keys")
    complete_endpoint = staticmethod(client_endpoint_string)
    optParameters = [
        ["name", None, None, "the name this agent registers under"],
        ["authorized-keys", None, None, "file of client public keys allowed in"],
        [
            "connects-in-flight",
            None,
            DEFAULT_CONNECTS_IN_FLIGHT,
            "connects to one exposed service at once, the rest queued in order (keep it "
            "below the service's listen backlog)",
            int,
        ],
    ]
    optFlags = [
        [
            "datalab-launcher",
            None,
            "also start and stop Jupyter instances for datalab daemons (service 'datalab')",
        ],
    ]

    def needs_mapping(self) -> bool:
        return not self["datalab-launcher"]

    def opt_expose(self, value: str) -> None:
        """SERVICE=ENDPOINT: a service clients may open (repeatable)"""
        self.add_mapping(value)

    def parse(self) -> None:
        limit = self["connects-in-flight"]
        if not isinstance(limit, int) or limit < 1:
            raise ValueError("--connects-in-flight must be a whole number, 1 or more")

    def load(self) -> None:
        self["authorized"] = load_authorized_keys(self["authorized-keys"])


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    # Connects to each service are paced, so a burst of opens never floods its listen queue,
    # and one to this machine whose SYN a full queue dropped is made again at once.
    services: Acceptor = ServiceMap(
        {
            s: PacedEndpoint(
                clientFromString(reactor, e),
                options["connects-in-flight"],
                clock=reactor,
                retry_after=connect_retries(e),
            )
            for s, e in options["expose"]
        }
    )
    host = None
    if options["datalab-launcher"]:
        # Instances for datalab daemons (docs/datalab.md, "agent launcher").
        host = InstanceHost(reactor, JupyterProcesses(reactor))
        services = host.acceptor(services)
    agent = Agent(
        reactor,
        options["relay_url"],
        options["name"],
        options["token"],
        options["private_key"],
        options["authorized"],
        services,
        options["ca"],
        channel_limits=options["channel_limits"],
        resume_grace=options["resume-grace"],
    )
    if host is not None:
        host.setServiceParent(agent)
    care_for_memory(agent, reactor)
    return agent
