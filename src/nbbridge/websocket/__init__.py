"""nbbridge.websocket: the WebSocket pieces every nbbridge server and tunnel end builds on.

Server side (the relay's routes, the hub, the gateway):

* :class:`ServerWebSocket` — an Autobahn server protocol that keeps its bearer token for
  ``onOpen``, closes with any code and reason, pauses its reads for named reasons, hears when
  its transport's write buffer is full (:class:`WriteWatch`), and closes on shutdown;
* :func:`set_server_options` — size limit, heartbeats and timeouts for a server factory;
* :class:`RouteBinding` — one protocol per request that knows what its path named;
* :class:`ConnectionTracker` — every open connection of a Site, to close them and wait, and
  with :class:`ConnectionLimits` a guard on those that have not finished their handshake
  (deadline, per-address and total caps, an early look for HTTP); refusals are logged through
  a :class:`RefusalLog` that aggregates them; :func:`answer_at_accept` lets a plain TCP
  port answer its refusals on the accepted socket, without a transport, after the limits'
  ``refusal_delay`` (the tracker's ``held_refusals``); :func:`request_done`
  gives a keep-alive HTTP connection its next deadline; :func:`peer_ip` is the address a
  peer is counted as.

Data path (client links, agent data connections, the relay's splice):

* :class:`DataFrames` — data frames read by nbbridge's own RFC 6455 reader, control frames
  left to Autobahn; :func:`xor_frame` builds a masked or unmasked frame in one pass;
* :class:`StreamClientProtocol` and :class:`WebSocketStream` — a byte-stream protocol (Noise
  and the mux) carried in binary messages of a client WebSocket; :class:`LinkClosed` is how
  it learns the WebSocket closed.

Whatever these need of Autobahn's and Twisted's undocumented internals is in
`nbbridge._internals`, nowhere else.
"""

from ._dataframes import DataFrames, xor_frame
from ._guard import ConnectionLimits, RefusalLog, could_be_http
from ._ratelimit import RateLimit, RateLimitedResource, too_many
from ._server import (
    MAX_REASON,
    RouteBinding,
    ServerWebSocket,
    WriteWatch,
    set_server_options,
    truncate_reason,
)
from ._stream import LinkClosed, StreamClientProtocol, WebSocketStream, bind
from ._tracking import (
    ConnectionTracker,
    TrackedConnection,
    answer_at_accept,
    peer_ip,
    refusal_response,
    request_done,
)

__all__ = [
    "MAX_REASON",
    "ConnectionLimits",
    "ConnectionTracker",
    "DataFrames",
    "LinkClosed",
    "RateLimit",
    "RateLimitedResource",
    "RefusalLog",
    "RouteBinding",
    "ServerWebSocket",
    "StreamClientProtocol",
    "TrackedConnection",
    "WebSocketStream",
    "WriteWatch",
    "answer_at_accept",
    "bind",
    "could_be_http",
    "peer_ip",
    "refusal_response",
    "request_done",
    "set_server_options",
    "too_many",
    "truncate_reason",
    "xor_frame",
]
