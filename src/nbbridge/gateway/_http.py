"""The HTTP port: static files from ``--http_directory`` and the REST API under ``/v1``.

Static files: twisted.web's `File` (MIME types from the system's table plus the ones browser
applications need, ``index.html`` for a directory, ``..`` never leaves the directory), with
directory listings refused. REST: ``GET /v1/status``, ``/v1/reserve?service=NAME``,
``/v1/stop``; every answer is JSON, every refusal a JSON ``{"error": ...}`` with its status.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import ErrorPage, NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File

from ._sessions import ApiError, Sessions
from ._users import Access, Caller, bearer_of

#: Types twisted's table or the system's may lack, that browser applications (noVNC) need.
EXTRA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}


class StaticFiles(File):
    """`File` without directory listings; symlinks inside the directory are followed."""

    contentTypes = {**File.contentTypes, **EXTRA_TYPES}
    indexNames = ["index.html", "index.htm"]

    def directoryListing(self) -> Resource:
        return NoResource("no such file")

    def createSimilarFile(self, path: str) -> File:
        f = super().createSimilarFile(path)
        return f


def _json(request: Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8") + b"\n"


class _Api(Resource):
    """One REST endpoint: checks the caller, then answers."""

    isLeaf = True
    _log = Logger()
    admin_only = False

    def __init__(self, access: Access) -> None:
        super().__init__()
        self._access = access

    def render_GET(self, request: Request) -> bytes | int:
        peer = request.getClientAddress()
        host = getattr(peer, "host", "")
        bearer = bearer_of((request.getHeader(b"authorization") or b"").decode("latin-1") or None)
        caller = self._access.caller(host, bearer)
        if caller is None:
            self._log.info(
                "REST {path}: refused {host}: no valid token",
                path=request.path.decode("latin-1"),
                host=host,
            )
            request.setHeader(b"www-authenticate", b"Bearer")
            return _json(request, 401, {"error": "a valid bearer token is required"})
        if self.admin_only and not caller.admin:
            return _json(request, 403, {"error": "only the admin may do this"})
        return self.answer(request, caller)

    def answer(self, request: Request, caller: Caller) -> bytes | int:
        raise NotImplementedError


class Status(_Api):
    def __init__(self, access: Access, sessions: Sessions) -> None:
        super().__init__(access)
        self._sessions = sessions

    def answer(self, request: Request, caller: Caller) -> bytes:
        return _json(request, 200, self._sessions.status())


class Reserve(_Api):
    def __init__(self, access: Access, sessions: Sessions) -> None:
        super().__init__(access)
        self._sessions = sessions

    def answer(self, request: Request, caller: Caller) -> bytes | int:
        args: dict[bytes, list[bytes]] = request.args or {}
        names = args.get(b"service") or [b""]
        service = names[0].decode("utf-8", "replace")
        if not service:
            return _json(request, 400, {"error": "give ?service=NAME"})
        d = Deferred.fromCoroutine(self._sessions.reserve(service, caller.name, caller.groups))

        def done(body: dict[str, Any]) -> None:
            request.write(_json(request, 200, body))
            request.finish()

        def refused(failure: Any) -> None:
            if failure.check(ApiError):
                error = failure.value
                self._log.info(
                    "reserve {service} for {user}: {why}",
                    service=service,
                    user=caller.name,
                    why=error.message,
                )
                body = _json(request, error.status, {"error": error.message})
            else:
                self._log.failure("reserve {service} failed", failure, service=service)
                body = _json(request, 500, {"error": "the reservation could not be stored"})
            request.write(body)
            request.finish()

        d.addCallbacks(done, refused)
        return NOT_DONE_YET


class Stop(_Api):
    admin_only = True

    def __init__(self, access: Access, stop: Callable[[], object]) -> None:
        super().__init__(access)
        self._stop = stop

    def answer(self, request: Request, caller: Caller) -> bytes:
        self._log.warn("stopping: /v1/stop called by {caller}", caller=caller.name)
        request.notifyFinish().addBoth(lambda _: self._stop())
        return _json(request, 200, {"stopping": True})


def http_root(
    directory: str | None, access: Access, sessions: Sessions, stop: Callable[[], object]
) -> Resource:
    """The resource tree of the HTTP port."""
    root: Resource = StaticFiles(directory) if directory else Resource()
    v1 = Resource()
    v1.putChild(b"status", Status(access, sessions))
    v1.putChild(b"reserve", Reserve(access, sessions))
    v1.putChild(b"stop", Stop(access, stop))
    root.putChild(b"v1", v1)
    return root


del ErrorPage
