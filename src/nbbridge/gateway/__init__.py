"""nbbridge.gateway: `twistd -n nbbridge-gateway`, browser WebSockets spliced to TCP services.

A drop-in for the Nexus websocketserver (docs/gateway.md). Service scripts named by
``--remote_session_config`` subclass :class:`RemoteServiceScript` (or :class:`CommandService`
to run a command line with ``{port}``/``{index}``/``{display}`` placeholders).
"""

from ._scripts import (
    AppService,
    CommandService,
    DesktopService,
    RemoteServiceScript,
    ServiceError,
)

__all__ = [
    "AppService",
    "CommandService",
    "DesktopService",
    "RemoteServiceScript",
    "ServiceError",
]
