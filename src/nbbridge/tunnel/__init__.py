"""nbbridge.tunnel: the public API for reaching an agent's services through a relay.

Everything that needs "a connection to service S on agent A" — the client's port forwards,
and the datalab, gateway and mixer fronts — builds an :class:`AgentLink` (a Twisted service:
relay URL, agent name, the agent's pinned public key, our private key and token) and asks it
for ``endpoint("jupyter")``, an ``IStreamClientEndpoint`` whose connections are end-to-end
encrypted channels. The link opens on first use, is kept up with backoff, and fails waiting
connections with :class:`LinkDown` and a reason.

:class:`TunnelOptions` are the command-line flags every such daemon shares (``--relay``,
``--token-file``, ``--key``, ``--ca``, ``--insecure``), and the TOML config file (``--config``)
that may hold any of them.

The other end, the agent, accepts channels through a ``nbbridge.mux.Acceptor`` (a fixed
``ServiceMap`` by default; anything that maps an open request to an endpoint will do).
"""

from ._link import AgentLink, LinkDown, LinkState
from ._options import TunnelOptions

__all__ = ["AgentLink", "LinkDown", "LinkState", "TunnelOptions"]
