"""twistd drop-in: one ServiceMaker per nbbridge daemon, naming its module by string.

No logic lives here, so `twistd --help` stays fast and never imports the services; the one
thing a daemon process does beyond its tap is tune the whole process (glibc's malloc, the
reactor's event dispatch, the garbage collector: `nbbridge._daemon`), at twistd's entry
point (never in a tap's makeService, which tests and other programs also call).
"""

from typing import Any

from twisted.application.service import ServiceMaker


class _DaemonMaker(ServiceMaker):
    def makeService(self, options: Any) -> Any:
        from twisted.internet import reactor

        from nbbridge import _daemon

        _daemon.before_service(reactor)
        service = super().makeService(options)
        _daemon.after_service()
        return service


nbbridgeRelay = _DaemonMaker(
    "nbbridge relay",
    "nbbridge.relay.tap",
    "Public relay: brokers encrypted links between clients and agents.",
    "nbbridge-relay",
)
nbbridgeAgent = _DaemonMaker(
    "nbbridge agent",
    "nbbridge.agent.tap",
    "Runs beside the services (Jupyter, ssh) and exposes them through a relay.",
    "nbbridge-agent",
)
nbbridgeClient = _DaemonMaker(
    "nbbridge client",
    "nbbridge.client.tap",
    "Runs on the laptop and forwards local ports to an agent's services.",
    "nbbridge-client",
)
nbbridgeGateway = _DaemonMaker(
    "nbbridge gateway",
    "nbbridge.gateway.tap",
    "Browser WebSockets to TCP services, reservations, static pages (Nexus websocketserver).",
    "nbbridge-gateway",
)
nbbridgeDatalab = _DaemonMaker(
    "nbbridge datalab",
    "nbbridge.datalab.tap",
    "Signed uploads start a Jupyter per file; a nonce opens it in the browser, proxied.",
    "nbbridge-datalab",
)
nbbridgeMixer = _DaemonMaker(
    "nbbridge mixer",
    "nbbridge.mixer.tap",
    "Local and remote (agent) Jupyter kernels behind one port, for one JupyterLab.",
    "nbbridge-mixer",
)
