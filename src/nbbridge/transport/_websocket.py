"""Autobahn WebSocket settings shared by nbbridge's control, link and data connections.

The numbers are chosen together with the relay's contract: a link message is one chunk of a
byte stream (at most 2 MiB, the relay closes with 4413 above that); pings every 20 s keep an
idle tunnel alive through proxies with a 300 s idle timeout and detect a dead peer within
~40 s; no per-message compression, because links carry ciphertext.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol

import nbbridge

#: The largest WebSocket message (and frame) accepted, in bytes.
MAX_MESSAGE_SIZE = 2 * 1024 * 1024
#: Seconds between pings on an otherwise idle connection, and to wait for the pong.
PING_INTERVAL = 20
PING_TIMEOUT = 20
#: Seconds allowed for the WebSocket opening handshake.
OPEN_HANDSHAKE_TIMEOUT = 10

_SECRET_QUERY_KEYS = {"token", "access_token", "auth", "authorization", "key", "password"}


def websocket_options(*, text: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``setProtocolOptions`` on client *and* server factories.

    :param text: the connection carries text messages (the control connection's JSON), so
        incoming UTF-8 is validated; binary links skip that work.
    """
    return {
        "maxMessagePayloadSize": MAX_MESSAGE_SIZE,
        "maxFramePayloadSize": MAX_MESSAGE_SIZE,
        # 0: send each message as one frame; the 2 MiB cap already bounds frames.
        "autoFragmentSize": 0,
        "autoPingInterval": PING_INTERVAL,
        "autoPingTimeout": PING_TIMEOUT,
        "openHandshakeTimeout": OPEN_HANDSHAKE_TIMEOUT,
        "utf8validateIncoming": text,
        # Protocol violations (e.g. a message over the limit) end with a close frame whose code
        # and reason tell the peer what it did, rather than a bare TCP reset.
        "failByDrop": False,
        "tcpNoDelay": True,
    }


def websocket_client_factory(
    url: str,
    headers: Mapping[str, str],
    protocol_class: type[WebSocketClientProtocol],
    *,
    text: bool = False,
    reactor: Any = None,
) -> WebSocketClientFactory:
    """A client factory for one relay route, e.g. ``relay.url_for("/v1/agents/gpu/link")``.

    :param headers: extra handshake headers, e.g. ``{"Authorization": "Bearer ..."}``; the
        token goes here and never into ``url``, which proxies and servers log.
    :param text: see :func:`websocket_options` (True for the control connection).
    :param reactor: for autobahn's timers (tests pass a fake clock); the global one if None.
    :raises ValueError: ``url`` carries credentials.
    """
    _refuse_credentials_in(url)
    factory = WebSocketClientFactory(  # type: ignore[no-untyped-call, unused-ignore]
        url,
        headers=dict(headers),
        useragent=f"nbbridge/{nbbridge.__version__}",
        reactor=reactor,
    )
    factory.protocol = protocol_class
    factory.setProtocolOptions(**websocket_options(text=text))  # type: ignore[no-untyped-call, unused-ignore]
    # One factory per connection (each link, each data connection an agent dials): Twisted's
    # "Starting factory" / "Stopping factory" info lines were two of the agent's six log
    # lines per link, and logging a tenth of its CPU per link set up.
    factory.noisy = False
    return factory


def _refuse_credentials_in(url: str) -> None:
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError("WebSocket URL must not contain credentials; send them in a header")
    for key, _value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in _SECRET_QUERY_KEYS:
            raise ValueError(
                f"WebSocket URL must not carry {key!r} in its query; send it in a header"
            )
