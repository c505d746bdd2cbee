"""twistd nbbridge-agent: expose local services (Jupyter, ssh) to authorized clients."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString
from twisted.python import usage

from nbbridge._secrets import SecretError, read_secret
from nbbridge.crypto import KeyFileError, KeyFormatError, load_authorized_keys, load_private_key
from nbbridge.transport import parse_mapping, parse_relay_url

from ._agent import Agent


def client_endpoint_string(text: str) -> str:
    """A bare port means a service on this machine's loopback: ``tcp:127.0.0.1:PORT``."""
    if text.isdigit():
        return f"tcp:127.0.0.1:{text}"
    return text


class Options(usage.Options):
    synopsis = (
        "--relay URL --name NAME --key FILE --authorized-keys FILE [--token-file FILE] "
        "--expose SERVICE=ENDPOINT [--expose ...]"
    )
    longdesc = (
        "Keeps a connection to the relay and, for each authorized client, opens channels to "
        "the exposed services only (--expose jupyter=tcp:127.0.0.1:8888; --expose ssh=22). "
        "The token comes from --token-file or $NBBRIDGE_TOKEN."
    )
    optFlags = [["insecure", None, "allow ws:// to a relay that is not on loopback"]]
    optParameters = [
        ["relay", None, None, "relay URL, e.g. wss://relay.example.com"],
        ["name", None, None, "the name this agent registers under"],
        ["token-file", None, None, "file holding the agent token (else $NBBRIDGE_TOKEN)"],
        ["key", None, None, "this agent's private key file (nbbridge keygen)"],
        ["authorized-keys", None, None, "file of client public keys allowed in"],
        ["ca", None, None, "PEM file of the CA(s) to trust for wss:// instead of the system's"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["expose"] = []

    def opt_expose(self, value: str) -> None:
        """SERVICE=ENDPOINT: a service clients may open (repeatable)"""
        try:
            service, endpoint = parse_mapping(value)
        except ValueError as e:
            raise usage.UsageError(f"--expose {value}: {e}") from None
        self["expose"].append((service, client_endpoint_string(endpoint)))

    def postOptions(self) -> None:
        for flag in ("relay", "name", "key", "authorized-keys"):
            if not self[flag]:
                raise usage.UsageError(f"--{flag} is required")
        if not self["expose"]:
            raise usage.UsageError("give at least one --expose SERVICE=ENDPOINT")
        names = [s for s, _ in self["expose"]]
        if len(set(names)) != len(names):
            raise usage.UsageError("a service is exposed twice")
        try:
            self["relay_url"] = parse_relay_url(self["relay"], self["insecure"])
            self["private_key"] = load_private_key(self["key"])
            self["authorized"] = load_authorized_keys(self["authorized-keys"])
            self["token"] = read_secret(self["token-file"], "NBBRIDGE_TOKEN")
        except (ValueError, KeyFileError, KeyFormatError, SecretError) as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    services = {s: clientFromString(reactor, e) for s, e in options["expose"]}
    return Agent(
        reactor,
        options["relay_url"],
        options["name"],
        options["token"],
        options["private_key"],
        options["authorized"],
        services,
        options["ca"],
    )
