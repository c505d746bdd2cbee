"""nbbridge.web: a reverse proxy (HTTP and WebSocket) as twisted.web resources, over endpoints.

The datalab front, the gateway and the mixer all put it in front of servers they reach
through an endpoint: a plain TCP endpoint for a local Jupyter, ``AgentLink.endpoint(service)``
for one behind an agent. A consumer writes one function, a `Router`: given the twisted.web
request it returns (now, or as an awaitable) a `Route` — which `Upstream`, which path, which
headers to drop, set or rewrite each way — or a `Refusal` (a status and a message).

    pool = UpstreamPool(reactor)
    jupyter = Upstream("local-jupyter", TCP4ClientEndpoint(reactor, "127.0.0.1", 8888))

    def route(request):
        return Route(jupyter, drop_headers=["Authorization"],
                     set_headers={"Authorization": f"token {token}"})

    site = Site(ProxyResource(route, pool))

What the proxy does for every route (docs/web.md has the details):

* HTTP/1.1 upstream over kept-alive connections, a few per `Upstream.name` (`UpstreamPool`);
  request and response bodies streamed with backpressure (a large upload is spooled to disk
  by twisted.web first, never held in memory); hop-by-hop headers dropped;
  ``X-Forwarded-For/-Proto/-Host`` set (extended only from a trusted front).
* WebSocket: the upgrade is sent upstream first; the browser's handshake completes only with
  the upstream's 101 (its subprotocol and extensions), then the two connections are spliced
  byte for byte with backpressure both ways; a refused upgrade gives the browser the
  upstream's status, headers and body.
* An upstream that is down, refuses, times out or sends garbage: a 502 page and a log line;
  one that dies in the middle of a body: the client's connection is aborted, never a body
  that looks complete.
"""

from ._headers import HOP_BY_HOP, drop_cookies, drop_set_cookies
from ._pages import error_page
from ._pool import ConnectTimeout, TimeoutEndpoint, UpstreamPool
from ._resource import ProxyResource
from ._route import (
    SAFE_METHODS,
    Decision,
    Refusal,
    Route,
    Router,
    Upstream,
    changes_state,
    is_upgrade,
)
from ._stats import ProxyStats

__all__ = [
    "HOP_BY_HOP",
    "SAFE_METHODS",
    "ConnectTimeout",
    "Decision",
    "ProxyResource",
    "ProxyStats",
    "Refusal",
    "Route",
    "Router",
    "TimeoutEndpoint",
    "Upstream",
    "UpstreamPool",
    "changes_state",
    "drop_cookies",
    "drop_set_cookies",
    "error_page",
    "is_upgrade",
]
