"""The hub: topic streams on the relay, binary and text, N:N and 1:N, with live stats.

Served by `nbbridge-relay` on its own port (docs/hub.md is the user's guide):

* `ws(s)://RELAY/hub/<topic>`      two-way: each message goes to every other member
* `ws(s)://RELAY/hub/in/<topic>`   one-way stream, sending side
* `ws(s)://RELAY/hub/out/<topic>`  one-way stream, reading side (what it sends is dropped)
* `GET /stats` (page, with a sign-in form), `GET /stats/json`, `ws(s)://RELAY/stats/ws` (JSON
  every 5 s), `GET /metrics` (Prometheus): in full with the stats token (a bearer header or
  the page's cookie, never the URL), totals only without it (`[hub] stats_anonymous`)

Close codes (`HubCloseCode`): 4400 bad topic name, 4401 token missing or not recognised,
4403 token not permitted, 4413 message too big, 4429 too slow or a hub limit reached (the
reason names the limit: max_queued_bytes, max_members, max_members_per_address, ...).

The relay daemon mounts it (`mount_hub`) and parses its `[hub]` table (`parse_hub_config`);
the hub knows the relay core only through what `mount_hub` documents.
"""

from ._config import HubConfig, parse_hub_config
from ._routes import HubCloseCode, HubRoute, Role, TopicKind, hub_path, parse_hub_path, valid_topic
from ._web import HubRuntime, mount_hub

__all__ = [
    "HubCloseCode",
    "HubConfig",
    "HubRoute",
    "HubRuntime",
    "Role",
    "TopicKind",
    "hub_path",
    "mount_hub",
    "parse_hub_config",
    "parse_hub_path",
    "valid_topic",
]
