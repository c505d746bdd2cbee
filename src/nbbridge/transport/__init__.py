"""nbbridge.transport: how daemons reach the relay (URLs, TLS, WebSocket settings).

* :func:`endpoint_string`, :func:`listen_endpoint_string`, :func:`parse_mapping` —
  command-line shorthands shared by all daemons (a bare port means loopback; listeners get
  a deep accept queue); :func:`split_description` reads an endpoint string as Twisted does.
* :func:`parse_relay_url` -> :class:`RelayURL` — ``ws://``/``wss://`` relay addresses, with
  ``ws://`` refused off loopback unless ``--insecure``.
* :func:`client_endpoint` — an ``IStreamClientEndpoint`` to the relay, TLS-verified with
  service-identity against the system CAs (certifi's bundle where the system store is empty
  to OpenSSL, as on a stock Mac: :func:`default_trust_root`) or ``--ca FILE``; failures are
  :class:`RelayConnectError` with a plain-words reason, see :func:`explain_connect_error`
  (:class:`RelayCertificateError` when the certificate was refused).
* :func:`websocket_client_factory`, :func:`websocket_options` — Autobahn settings for
  control, link and data connections (2 MiB messages, 20 s pings).
"""

from ._endpoints import (
    check_service_name,
    endpoint_string,
    listen_endpoint_string,
    parse_mapping,
    split_description,
)
from ._explain import RelayCertificateError, RelayConnectError, explain_connect_error
from ._tls import CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, client_endpoint
from ._trust import choose_trust_root, default_trust_root, load_trust_root
from ._url import RelayURL, is_loopback_host, parse_relay_url
from ._websocket import (
    MAX_MESSAGE_SIZE,
    OPEN_HANDSHAKE_TIMEOUT,
    PING_INTERVAL,
    PING_TIMEOUT,
    websocket_client_factory,
    websocket_options,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "MAX_MESSAGE_SIZE",
    "OPEN_HANDSHAKE_TIMEOUT",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "RelayCertificateError",
    "RelayConnectError",
    "RelayURL",
    "check_service_name",
    "choose_trust_root",
    "client_endpoint",
    "default_trust_root",
    "endpoint_string",
    "explain_connect_error",
    "is_loopback_host",
    "listen_endpoint_string",
    "load_trust_root",
    "parse_mapping",
    "parse_relay_url",
    "split_description",
    "websocket_client_factory",
    "websocket_options",
]
