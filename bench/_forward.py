"""A bare Twisted TCP forwarder: the least a Python hop on Twisted costs (the "twisted" chain).

    python bench/_forward.py LISTEN_PORT TARGET_PORT

No WebSocket, no encryption, no mux: each connection is spliced to a new connection to
TARGET_PORT with Twisted's own ``portforward``, with TCP_NODELAY and the same 1 MiB
buffers and send-at-once writes as nbbridge's hops, so three of these in a row show what a
three-process chain on Twisted costs before any of nbbridge's own work.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.protocols import portforward

from nbbridge._internals import write_now
from nbbridge._tuning import tune


class _Client(portforward.ProxyClient):
    def connectionMade(self) -> None:
        tune(self.transport)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        write_now(self.peer.transport, data)


class _ClientFactory(portforward.ProxyClientFactory):
    protocol = _Client


class _Server(portforward.ProxyServer):
    clientProtocolFactory = _ClientFactory

    def connectionMade(self) -> None:
        tune(self.transport)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        write_now(self.peer.transport, data)


def main() -> None:
    listen, target = int(sys.argv[1]), int(sys.argv[2])
    factory = portforward.ProxyFactory("127.0.0.1", target)
    factory.protocol = _Server
    reactor.listenTCP(listen, factory, backlog=1024, interface="127.0.0.1")
    print(f"forwarding {listen} -> {target}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
