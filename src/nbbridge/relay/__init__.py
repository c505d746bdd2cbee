"""The nbbridge-relay daemon, and what agents and clients need to know to talk to it.

Routes (one port; token in the handshake header `Authorization: Bearer <token>`):

* agent control: `control_path(name)`  -> `/v1/agents/{name}/control` (agent token)
* client link:   `link_path(name)`     -> `/v1/agents/{name}/link` (client token)
* agent data:    `data_path(name, id)` -> `/v1/agents/{name}/data/{link_id}` (agent token)

On its control connection an agent receives text messages `{"op": "dial", "link": ID}`
(`parse_control_message`); it answers each by opening the data route for that id. Refusals
and relay-side ends are WebSocket close codes (`CloseCode`). `hash_token` gives the
`token_sha256` value for relay.toml.
"""

from nbbridge._secrets import hash_token

from ._contract import (
    CloseCode,
    Dial,
    Registered,
    Route,
    RouteKind,
    bearer_headers,
    control_path,
    data_path,
    dial_message,
    link_path,
    parse_control_message,
    parse_route,
    valid_name,
)

__all__ = [
    "CloseCode",
    "Dial",
    "Registered",
    "Route",
    "RouteKind",
    "bearer_headers",
    "control_path",
    "data_path",
    "dial_message",
    "hash_token",
    "link_path",
    "parse_control_message",
    "parse_route",
    "valid_name",
]
