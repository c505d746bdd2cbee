"""``ANY /*``: the session cookie picks the instance; `nbbridge.web` proxies to it.

This module only decides: who may pass (a session naming a running instance, an Origin that
is the front's own for anything that changes state or opens a WebSocket), where to
(the launcher's endpoint for the instance), and what the headers become on the way (the
session cookie and any ``Authorization`` removed, the instance's token added; the instance's
login cookies removed from its answers). The proxying itself is `nbbridge.web`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from zope.interface import implementer

from nbbridge.store import StoreUnavailable
from nbbridge.web import Decision, Refusal, Route, Upstream, drop_set_cookies, is_upgrade

from ._api import ApiError
from ._core import Datalab
from ._records import InstanceRecord
from ._routing import KEPT_INSTANCE_COOKIES, SESSION_COOKIE, origin_allowed, read_cookie


async def admit(datalab: Datalab, request: Request) -> InstanceRecord:
    """The instance REQUEST may reach, or the ApiError refusing it (401, 403)."""
    websocket = is_upgrade(request)
    if not origin_allowed(
        request.method,
        request.getHeader(b"Origin"),
        request.getHeader(b"Host"),
        websocket=websocket,
    ):
        raise ApiError(403, "BAD_ORIGIN", "cross-origin request refused")
    session = read_cookie(request.requestHeaders.getRawHeaders(b"Cookie"), SESSION_COOKIE)
    return await datalab.session(session)


def drop_login_cookies(headers: Headers) -> None:
    """Remove the instance's own login cookies from its response (Jupyter's ``_xsrf`` stays,
    for JupyterLab reads it; it is no credential)."""
    drop_set_cookies(headers, lambda name: name not in KEPT_INSTANCE_COOKIES)


class _Watched:
    """Counts a connection open until it is lost (a kernel WebSocket keeps its instance up)."""

    def __init__(self, factory: IProtocolFactory, opened: Callable[[], Callable[[], None]]):
        self._factory = factory
        self._opened = opened

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        protocol = self._factory.buildProtocol(addr)
        if protocol is None:
            return None
        closed = self._opened()
        lost = protocol.connectionLost

        def connection_lost(reason: Failure) -> None:
            closed()
            lost(reason)

        # An instance attribute over the method: the protocol stays the transport's own
        # (the proxy's splice writes to the real TCP transport), so nothing wraps it.
        protocol.connectionLost = connection_lost  # type: ignore[method-assign]
        return protocol


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    def __init__(
        self, endpoint: IStreamClientEndpoint, opened: Callable[[], Callable[[], None]]
    ) -> None:
        self._endpoint = endpoint
        self._opened = opened

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = self._endpoint.connect(
            cast(IProtocolFactory, _Watched(factory, self._opened))
        )
        return d


class DatalabRouter:
    """The `nbbridge.web.Router` of the datalab: the session cookie names the instance."""

    _log = Logger()

    def __init__(self, datalab: Datalab) -> None:
        self._datalab = datalab

    async def __call__(self, request: IRequest) -> Decision:
        req = cast(Request, request)
        try:
            record = await admit(self._datalab, req)
        except StoreUnavailable as e:
            self._log.warn("datalab store unavailable: {e}", e=str(e))
            return Refusal(503, "The datalab's store is unavailable; retry in a moment.")
        except ApiError as e:
            self._log.info(
                "proxy refused {method} {path}: {code}",
                method=req.method.decode("latin-1"),
                path=req.path.decode("latin-1")[:200],
                code=e.code,
            )
            return Refusal(e.status, e.message)
        instances = self._datalab.instances
        endpoint = instances.launcher.endpoint(record)
        if is_upgrade(request):
            instance_id = record.id
            endpoint = _WatchedEndpoint(endpoint, lambda: instances.socket_opened(instance_id))
        return Route(
            Upstream(f"instance-{record.id}", endpoint),
            drop_cookies=[SESSION_COOKIE],
            drop_headers=["Authorization", "X-Forwarded-Prefix"],
            set_headers={"Authorization": f"token {record.token}"},
            response_headers=drop_login_cookies,
        )
