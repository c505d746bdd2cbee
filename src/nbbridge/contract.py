"""The tunnel's contract, defined once: routes, headers, close codes, control messages.

The relay serves these routes and sends these messages; the agent and the client (and every
later consumer of the tunnel) build and parse them with the same functions, so no route or
message is spelled twice. Pure functions and constants only: importing this pulls in neither
twisted.web nor any service's state.

Routes (one port; token in the handshake header `Authorization: Bearer <token>`):

* agent control: `control_path(name)`  -> `/v1/agents/{name}/control` (agent token)
* client link:   `link_path(name)`     -> `/v1/agents/{name}/link` (client token)
* agent data:    `data_path(name, id)` -> `/v1/agents/{name}/data/{link_id}` (agent token)
* pairing, agent: `pair_open_path(name)` -> `/v1/agents/{name}/pair` (agent token): the relay
  answers `{"op": "nameplate", "nameplate": N, "ttl": S}`, later `{"op": "joined"}`
* pairing, client: `pair_join_path(n)` -> `/v1/pair/{n}` (no token: the code is the secret)

On its control connection an agent receives text messages: `{"op": "registered", "name": N}`
once, then `{"op": "dial", "link": ID, "url": URL}` for each client link (`parse_control_message`);
it answers each by opening URL, the data route for that id: a route of the relay URL the agent
uses (`/v1/agents/gpu/data/ID`) when the relay runs alone, an absolute `wss://` URL when
several relays share the work and the client waits at another.
Refusals and relay-side ends are WebSocket close codes (`CloseCode`).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

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
    #: pairing: the nameplate is unknown, used or expired (or expired while waiting)
    PAIR_CODE_GONE = 4410
    #: pairing: the other side of the rendezvous left (its reason follows)
    PAIR_PEER_LEFT = 4411
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


def valid_link_id(link_id: str) -> bool:
    """Whether LINK_ID has the shape of a link id the relay hands out."""
    return LINK_ID_PATTERN.match(link_id) is not None


def data_path(agent: str, link_id: str) -> str:
    """Path of the data connection agent AGENT opens to answer a dial (agent token)."""
    if not valid_link_id(link_id):
        raise ValueError("invalid link id")
    return f"/v1/agents/{_checked_name(agent)}/data/{link_id}"


#: Pairing nameplates are 1 to 999999 (the number before the words of a code).
NAMEPLATE_MAX = 999_999


def valid_nameplate(text: str) -> bool:
    """Whether TEXT is a nameplate number as a route carries it (no sign, no leading 0)."""
    return text.isascii() and text.isdigit() and text[0] != "0" and int(text) <= NAMEPLATE_MAX


def pair_open_path(agent: str) -> str:
    """Path where agent AGENT opens a pairing nameplate (agent token)."""
    return f"/v1/agents/{_checked_name(agent)}/pair"


def pair_join_path(nameplate: int) -> str:
    """Path where the client joins the pairing at NAMEPLATE (no token)."""
    if not 1 <= nameplate <= NAMEPLATE_MAX:
        raise ValueError("invalid nameplate")
    return f"/v1/pair/{nameplate}"


class RouteKind(enum.Enum):
    """The kinds of WebSocket the relay serves."""

    CONTROL = "control"
    LINK = "link"
    DATA = "data"
    PAIR_OPEN = "pair-open"
    PAIR_JOIN = "pair-join"


@attrs.frozen
class Route:
    """A parsed WebSocket route: which kind, for which agent, and its id (link or nameplate).

    AGENT is "" on the pairing join route, which names no agent (only a nameplate).
    """

    kind: RouteKind
    agent: str
    link_id: str | None = None
    nameplate: int | None = None


def parse_route(segments: Sequence[str]) -> Route | None:
    """Parse the path segments after `/v1/`, or None when they name no route."""
    match list(segments):
        case ["agents", agent, "control"] if valid_name(agent):
            return Route(RouteKind.CONTROL, agent)
        case ["agents", agent, "link"] if valid_name(agent):
            return Route(RouteKind.LINK, agent)
        case ["agents", agent, "data", link_id] if valid_name(agent) and valid_link_id(link_id):
            return Route(RouteKind.DATA, agent, link_id)
        case ["agents", agent, "pair"] if valid_name(agent):
            return Route(RouteKind.PAIR_OPEN, agent)
        case ["pair", nameplate] if valid_nameplate(nameplate):
            return Route(RouteKind.PAIR_JOIN, "", nameplate=int(nameplate))
        case _:
            return None


#: Seconds the relay waits for an agent's data connection by default (its `dial_timeout`),
#: after which the client's link ends with 4408; an agent's queued dials wait no longer.
DEFAULT_DIAL_TIMEOUT = 10.0


@attrs.frozen
class Dial:
    """The relay asks an agent to open a data connection for LINK_ID at URL.

    URL is a route of the agent's relay URL when the client waits at the relay the agent is
    connected to, an absolute URL when it waits at another one.
    """

    link_id: str
    url: str


def dial_message(link_id: str, url: str) -> str:
    """The text message the relay sends on a control connection to ask for a data connection."""
    return json.dumps({"op": "dial", "link": link_id, "url": url})


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
    if not isinstance(link_id, str) or not valid_link_id(link_id):
        raise ValueError("dial message without a valid link id")
    url = message.get("url")
    if not isinstance(url, str) or not _dial_url_names(url, link_id):
        raise ValueError("dial message without a data URL for its link")
    return Dial(link_id, url)


def _dial_url_names(url: str, link_id: str) -> bool:
    """Whether URL is a ws(s) URL or a path whose route is the data route of LINK_ID."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme not in ("", "ws", "wss") or parts.query or parts.fragment:
        return False
    if bool(parts.scheme) != bool(parts.netloc):
        return False
    segments = parts.path.split("/")
    # The route is the path's tail: the relay may sit under a prefix (behind a proxy).
    if len(segments) < 5 or segments[-5] != "v1":
        return False
    route = parse_route(segments[-4:])
    return route is not None and route.kind is RouteKind.DATA and route.link_id == link_id


@attrs.frozen
class Nameplate:
    """Pairing: the relay opened NAMEPLATE for the agent, usable for TTL seconds.

    RELAY is the URL of the relay process that holds the rendezvous (its advertise URL, when
    several relays share a load balancer): the laptop must join there. None (from relays
    before scale-out, or one relay alone) means the URL the agent used.
    """

    nameplate: int
    ttl: float
    relay: str | None = None


@attrs.frozen
class Joined:
    """Pairing: the client joined the agent's nameplate; the exchange may begin."""


def nameplate_message(nameplate: int, ttl: float, relay: str | None = None) -> str:
    """The text message telling a pairing agent its nameplate (and where to join it)."""
    message: dict[str, object] = {"op": "nameplate", "nameplate": nameplate, "ttl": ttl}
    if relay is not None:
        message["relay"] = relay
    return json.dumps(message)


def joined_message() -> str:
    """The text message telling a pairing agent that the client joined."""
    return json.dumps({"op": "joined"})


def parse_pair_message(payload: str | bytes) -> Nameplate | Joined:
    """Parse a relay -> pairing agent text message; ValueError says what is wrong."""
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"pairing message is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ValueError("pairing message is not a JSON object")
    op = message.get("op")
    if op == "joined":
        return Joined()
    nameplate, ttl = message.get("nameplate"), message.get("ttl")
    relay = message.get("relay")
    if relay is not None and not _relay_url_shape(relay):
        raise ValueError("the nameplate's relay is not a ws:// or wss:// URL")
    if (
        op == "nameplate"
        and type(nameplate) is int
        and 1 <= nameplate <= NAMEPLATE_MAX
        and isinstance(ttl, int | float)
        and not isinstance(ttl, bool)
        and ttl > 0
    ):
        return Nameplate(nameplate, float(ttl), relay)
    raise ValueError(f"unknown pairing message {op!r}")


def _relay_url_shape(value: object) -> bool:
    """Whether VALUE looks like a relay URL one may print in a command (no spaces, short)."""
    return (
        isinstance(value, str)
        and value.startswith(("ws://", "wss://"))
        and len(value) <= 2048
        and value.isprintable()
        and not any(c.isspace() for c in value)
    )


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


# -- the client's status page (loopback), read by `nbbridge status` -----------------------------

#: Its default port, fixed so that `nbbridge status` and a bookmark find it. 8767 is in no
#: common use: not Jupyter's 8888-8890, the forwards' 8080, dev servers' 3000, 5000, 8000 and
#: 8081, Splunk's 8089, Gradio's 7860, Prometheus' 9090 or the relay's 8765, and not in
#: /etc/services.
STATUS_PORT = 8767
#: Its default endpoint: loopback only.
STATUS_ENDPOINT = f"tcp:{STATUS_PORT}:interface=127.0.0.1"
#: The route of its JSON document.
STATUS_JSON_PATH = "/status.json"
