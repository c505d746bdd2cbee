"""What one relay asks another over the bus when several share a store (scale-out).

Relays never talk to each other directly: the store says which relay holds an agent's
control connection (`AgentRegistry`: name -> that relay's advertise URL), and a pub/sub bus
beside it carries two small messages, each to one relay's own channel:

* ``dial`` — "a client waits for agent A at my URL: tell A to dial it". The relay holding A's
  control connection passes the dial message on, URL unchanged; the data connection reaches
  the relay where the client waits and is spliced there as on one relay.
* ``claimed`` — "agent A has just registered with me": the older holder checks the registry
  and, if the name is no longer its own, closes its connection to A (the newest wins
  everywhere, at once rather than at its next refresh).

Nothing else crosses between relays. Pure encoding and decoding here; `Relay` acts on them.
"""

from __future__ import annotations

import json

import attrs

from nbbridge.contract import Dial, dial_message, parse_control_message, valid_name

#: Every relay listens on its own channel: this prefix and its advertise URL.
CHANNEL_PREFIX = "nbbridge:relay:"
#: A bus message bigger than this is not one of ours (a dial is ~200 bytes).
MAX_MESSAGE = 4096


def channel_for(where: str) -> str:
    """The bus channel of the relay that names itself WHERE (its advertise URL)."""
    return CHANNEL_PREFIX + where


@attrs.frozen
class DialRequest:
    """Ask the holder of AGENT's control connection to have it dial URL for LINK_ID."""

    agent: str
    link_id: str
    url: str


@attrs.frozen
class Claimed:
    """AGENT registered at relay WHERE: an older holder should check whether it lost it."""

    agent: str
    where: str


def encode(message: DialRequest | Claimed) -> bytes:
    """The bus message for MESSAGE (JSON)."""
    if isinstance(message, DialRequest):
        # The dial message the agent will get, verbatim: one definition of its shape.
        body = json.loads(dial_message(message.link_id, message.url))
        return json.dumps({"op": "dial", "agent": message.agent, "dial": body}).encode()
    return json.dumps({"op": "claimed", "agent": message.agent, "where": message.where}).encode()


def decode(payload: bytes) -> DialRequest | Claimed:
    """Parse a bus message; ValueError says what is wrong with it."""
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"bus message of {len(payload)} bytes (at most {MAX_MESSAGE})")
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"bus message is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ValueError("bus message is not a JSON object")
    agent = message.get("agent")
    if not isinstance(agent, str) or not valid_name(agent):
        raise ValueError("bus message without a valid agent name")
    op = message.get("op")
    if op == "claimed":
        where = message.get("where")
        if not isinstance(where, str) or not where:
            raise ValueError("claimed message without where")
        return Claimed(agent, where)
    if op != "dial":
        raise ValueError(f"unknown bus op {op!r}")
    # The same checks the agent makes: a data URL naming this link of this agent.
    dial = parse_control_message(json.dumps(message.get("dial")))
    if not isinstance(dial, Dial) or not dial.url.rstrip("/").endswith(
        f"/v1/agents/{agent}/data/{dial.link_id}"
    ):
        raise ValueError("dial message for another agent")
    return DialRequest(agent, dial.link_id, dial.url)
