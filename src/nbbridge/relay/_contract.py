"""What agents and clients need to know about the relay: routes, close codes, the dial message.

Pure functions and constants only, so the agent and the client can import them without
pulling in twisted.web or the relay's state.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence

import attrs


class CloseCode(enum.IntEnum):
    """WebSocket close codes the relay sends; the reason text says what happened."""

    NORMAL = 1000
    GOING_AWAY = 1001
    BAD_TOKEN = 4401
    NOT_PERMITTED = 4403
    OFFLINE = 4404
    DIAL_TIMEOUT = 4408
    REPLACED = 4409
    TOO_BIG = 4413
    LIMIT = 4429
    RELAY_ERROR = 4500


#: Agent names: what `[agents.NAME]` and the routes accept.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
#: Link ids are `secrets.token_urlsafe(24)` (32 characters); accept a sane range of that alphabet.
LINK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}\Z")


def valid_name(name: str) -> bool:
    """Whether NAME can be an agent or client name."""
    return NAME_PATTERN.match(name) is not None


def _checked_name(name: str) -> str:
    if not valid_name(name):
        raise ValueError(f"invalid agent name {name!r}")
    return name


def control_path(agent: str) -> str:
    """Path of agent AGENT's control connection (agent token)."""
    return f"/v1/agents/{_checked_name(agent)}/control"


def link_path(agent: str) -> str:
    """Path of a client's link to agent AGENT (client token)."""
    return f"/v1/agents/{_checked_name(agent)}/link"


def data_path(agent: str, link_id: str) -> str:
    """Path of the data connection agent AGENT opens to answer a dial (agent token)."""
    if LINK_ID_PATTERN.match(link_id) is None:
        raise ValueError("invalid link id")
    return f"/v1/agents/{_checked_name(agent)}/data/{link_id}"


class RouteKind(enum.Enum):
    """The three kinds of WebSocket the relay serves."""

    CONTROL = "control"
    LINK = "link"
    DATA = "data"


@attrs.frozen
class Route:
    """A parsed WebSocket route: which kind, for which agent, and the link id of a data route."""

    kind: RouteKind
    agent: str
    link_id: str | None = None


def parse_route(segments: Sequence[str]) -> Route | None:
    """Parse the path segments after `/v1/`, or None when they name no route."""
    match list(segments):
        case ["agents", agent, "control"] if valid_name(agent):
            return Route(RouteKind.CONTROL, agent)
        case ["agents", agent, "link"] if valid_name(agent):
            return Route(RouteKind.LINK, agent)
        case ["agents", agent, "data", link_id] if (
            valid_name(agent) and LINK_ID_PATTERN.match(link_id) is not None
        ):
            return Route(RouteKind.DATA, agent, link_id)
        case _:
            return None


@attrs.frozen
class Dial:
    """The relay asks an agent to open a data connection for LINK_ID."""

    link_id: str


def dial_message(link_id: str) -> str:
    """The text message the relay sends on a control connection to ask for a data connection."""
    return json.dumps({"op": "dial", "link": link_id})


def registered_message(name: str) -> str:
    """The text message that tells an agent the relay accepted its control connection."""
    return json.dumps({"op": "registered", "name": name})


@attrs.frozen
class Registered:
    """The relay accepted an agent's control connection under ``name``."""

    name: str


def parse_control_message(payload: str | bytes) -> Dial | Registered:
    """Parse a relay -> agent control message; ValueError says what is wrong with it."""
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"control message is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ValueError("control message is not a JSON object")
    op = message.get("op")
    if op == "registered" and isinstance(message.get("name"), str):
        return Registered(message["name"])
    if op != "dial":
        raise ValueError(f"unknown control op {op!r}")
    link_id = message.get("link")
    if not isinstance(link_id, str) or LINK_ID_PATTERN.match(link_id) is None:
        raise ValueError("dial message without a valid link id")
    return Dial(link_id)


def bearer_headers(token: str) -> dict[str, str]:
    """The handshake header that carries TOKEN."""
    return {"Authorization": f"Bearer {token}"}


def parse_bearer(headers: Mapping[str, str]) -> str | None:
    """The bearer token of lower-cased HTTP HEADERS, or None when there is none."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None
