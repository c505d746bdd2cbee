"""Fuzz target: what the relay and the agent parse from a peer, in `nbbridge.contract`.

`parse_route` (path segments), `parse_bearer` (the Authorization header) and
`parse_control_message` (the relay's JSON to an agent) on arbitrary text: the first two never
raise, the third only `ValueError`; what they accept rebuilds to what was parsed (a route to
its path, a dial to a message that parses back the same).
"""

from __future__ import annotations

import json

from ._harness import instrumented, main

with instrumented():
    from nbbridge.contract import (
        Dial,
        Registered,
        RouteKind,
        control_path,
        data_path,
        dial_message,
        link_path,
        parse_bearer,
        parse_control_message,
        parse_route,
        registered_message,
        valid_link_id,
        valid_name,
    )


def _check_route(text: str) -> None:
    segments = text.split("/")
    route = parse_route(segments)
    if route is None:
        return
    assert valid_name(route.agent), route
    if route.kind is RouteKind.CONTROL:
        path = control_path(route.agent)
    elif route.kind is RouteKind.LINK:
        path = link_path(route.agent)
    else:
        assert route.link_id is not None and valid_link_id(route.link_id), route
        path = data_path(route.agent, route.link_id)
    assert path == "/v1/" + text, (path, text)


def _check_bearer(text: str) -> None:
    token = parse_bearer({"authorization": text})
    if token is not None:
        assert token and token == token.strip() and token in text, (token, text)
        assert text.strip().lower().startswith("bearer"), text


def _check_control(payload: bytes) -> None:
    for form in (payload, payload.decode("utf-8", "replace")):
        try:
            message = parse_control_message(form)
        except ValueError:
            continue
        if isinstance(message, Dial):
            assert valid_link_id(message.link_id), message
            assert parse_control_message(dial_message(message.link_id, message.url)) == message
        else:
            assert isinstance(message, Registered), message
            assert parse_control_message(registered_message(message.name)) == message


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    _check_route(text)
    _check_bearer(text)
    _check_control(data)


def seeds() -> list[bytes]:
    """A route of each kind, bearer headers, and control messages of each op."""
    link = "A" * 32
    return [
        b"agents/gpu/control",
        b"agents/gpu/link",
        f"agents/gpu/data/{link}".encode(),
        b"Bearer  abc-token ",
        b"bEaReR\ttoken",
        dial_message(link, f"/v1/agents/gpu/data/{link}").encode(),
        dial_message(link, f"wss://relay.example:443/prefix/v1/agents/gpu/data/{link}").encode(),
        registered_message("gpu").encode(),
        json.dumps({"op": "dial", "link": link, "url": 5}).encode(),
    ]


if __name__ == "__main__":
    main(TestOneInput)
