"""twistd drop-in: one ServiceMaker per nbbridge daemon, naming its module by string.

No logic lives here, so `twistd --help` stays fast and never imports the services.
"""

from twisted.application.service import ServiceMaker

nbbridgeRelay = ServiceMaker(
    "nbbridge relay",
    "nbbridge.relay.tap",
    "Public relay: brokers encrypted links between clients and agents.",
    "nbbridge-relay",
)
nbbridgeAgent = ServiceMaker(
    "nbbridge agent",
    "nbbridge.agent.tap",
    "Runs beside the services (Jupyter, ssh) and exposes them through a relay.",
    "nbbridge-agent",
)
nbbridgeClient = ServiceMaker(
    "nbbridge client",
    "nbbridge.client.tap",
    "Runs on the laptop and forwards local ports to an agent's services.",
    "nbbridge-client",
)
