"""``ANY /*``: the session cookie picks the instance; `nbbridge.web` proxies to it.

This module only decides: who may pass (a session naming a running instance, an Origin that
is the front's own for anything that changes state or opens a WebSocket), where to
(the launcher's endpoint for the instance), and what the headers become on the way (the
session cookie and any ``Authorization`` removed, the instance's token added; the instance's
login cookies removed from its answers). The proxying itself is `nbbridge.web`'s.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from ._api import ApiError
from ._core import Datalab
from ._records import InstanceRecord
from ._routing import SESSION_COOKIE, origin_allowed, read_cookie
from ._web import write_page_error


def is_websocket(request: Request) -> bool:
    upgrade = request.getHeader(b"Upgrade")
    return upgrade is not None and upgrade.strip().lower() == b"websocket"


async def admit(datalab: Datalab, request: Request) -> InstanceRecord:
    """The instance REQUEST may reach, or the ApiError refusing it (401, 403)."""
    websocket = is_websocket(request)
    if not origin_allowed(
        request.method,
        request.getHeader(b"Origin"),
        request.getHeader(b"Host"),
        websocket=websocket,
    ):
        raise ApiError(403, "BAD_ORIGIN", "cross-origin request refused")
    session = read_cookie(request.requestHeaders.getRawHeaders(b"Cookie"), SESSION_COOKIE)
    return await datalab.session(session)


class PendingProxy(Resource):
    """Checks sessions and origins; proxying waits for `nbbridge.web` (501 until then)."""

    isLeaf = True
    _log = Logger()

    def __init__(self, datalab: Datalab) -> None:
        super().__init__()
        self._datalab = datalab

    def render(self, request: Request) -> Any:
        d = Deferred.fromCoroutine(admit(self._datalab, request))
        d.addCallbacks(self._pass, self._refuse, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    def _pass(self, record: InstanceRecord, request: Request) -> None:
        write_page_error(request, ApiError(501, "NO_PROXY", "proxying is not available yet"))

    def _refuse(self, failure: Failure, request: Request) -> None:
        if isinstance(failure.value, ApiError):
            write_page_error(request, failure.value)
        else:
            self._log.failure("proxy admission failed", failure)
            write_page_error(request, ApiError(500, "ERROR", "internal error"))


def proxy_factory(reactor: Any) -> Any:
    """The ``ANY /*`` resource for a datalab."""

    def build(datalab: Datalab) -> IResource:
        return PendingProxy(datalab)

    return build
