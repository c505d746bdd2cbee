"""The nbbridge-relay daemon: brokers links between clients and agents, and serves the hub.

What agents and clients need to know to talk to it (routes, close codes, control messages)
is `nbbridge.contract`; this package is the daemon (`nbbridge.relay.tap`) and its insides.
"""

from nbbridge._secrets import hash_token

__all__ = ["hash_token"]
