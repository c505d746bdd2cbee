"""What each end hands the other inside the sealed exchange, and how it is checked.

The agent offers its public key, its name, its relay URL, the services it exposes and
(optionally) a relay token for the client; the client offers its public key and a label
for the agent's authorized_keys line. Everything that arrives is checked before it is used:
it ends up in files and on later command lines.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from nbbridge.contract import valid_name
from nbbridge.crypto import KeyFormatError, PublicKey, parse_public_key
from nbbridge.transport import check_service_name, parse_relay_url

from ._exchange import PairingFailed

_LABEL = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_LABEL = 64
_MAX_SERVICES = 64
_TOKEN = re.compile(r"[\x21-\x7e]{8,512}\Z")


def clean_label(text: str) -> str:
    """TEXT as one word of safe characters (it goes into authorized_keys), or `laptop`."""
    label = _LABEL.sub("-", text).strip("-.")[:_MAX_LABEL]
    return label or "laptop"


@attrs.frozen
class AgentOffer:
    """The agent's side: what the client pins and needs to reach it."""

    agent_key: PublicKey
    agent: str
    relay: str
    services: tuple[str, ...] = ()
    #: a relay token for the client, when the agent's user handed one over
    token: str | None = attrs.field(default=None, repr=False)

    def encode(self) -> bytes:
        return _dump(
            {
                "agent_key": self.agent_key.to_text(),
                "agent": self.agent,
                "relay": self.relay,
                "services": list(self.services),
                "token": self.token,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> AgentOffer:
        fields = _load(data)
        agent = fields.get("agent")
        if not isinstance(agent, str) or not valid_name(agent):
            raise PairingFailed("the agent's offer names no valid agent")
        relay = fields.get("relay")
        try:
            if not isinstance(relay, str):
                raise ValueError("no relay URL")
            parse_relay_url(relay, insecure=True)
        except ValueError as e:
            raise PairingFailed(f"the agent's offer has no usable relay URL: {e}") from None
        services = fields.get("services", [])
        if not isinstance(services, list) or len(services) > _MAX_SERVICES:
            raise PairingFailed("the agent's offer has a bad service list")
        try:
            for service in services:
                check_service_name(service)
        except (ValueError, TypeError) as e:
            raise PairingFailed(f"the agent's offer has a bad service name: {e}") from None
        token = fields.get("token")
        if token is not None and (not isinstance(token, str) or not _TOKEN.match(token)):
            raise PairingFailed("the agent's offer has a malformed relay token")
        return cls(_key(fields, "agent_key"), agent, relay, tuple(services), token)


@attrs.frozen
class ClientOffer:
    """The client's side: the key the agent authorizes, and a label for it."""

    client_key: PublicKey
    label: str

    def encode(self) -> bytes:
        return _dump({"client_key": self.client_key.to_text(), "label": self.label})

    @classmethod
    def decode(cls, data: bytes) -> ClientOffer:
        fields = _load(data)
        label = fields.get("label")
        return cls(_key(fields, "client_key"), clean_label(label if isinstance(label, str) else ""))


def _dump(fields: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, **fields}, separators=(",", ":")).encode("utf-8")


def _load(data: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PairingFailed("the other side's offer is not JSON") from None
    if not isinstance(fields, dict) or fields.get("v") != 1:
        raise PairingFailed("the other side speaks another pairing version: update both")
    return fields


def _key(fields: dict[str, Any], name: str) -> PublicKey:
    text = fields.get(name)
    try:
        if not isinstance(text, str):
            raise KeyFormatError("missing")
        return parse_public_key(text)
    except KeyFormatError as e:
        raise PairingFailed(f"the other side's public key is unusable: {e}") from None
