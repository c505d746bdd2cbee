"""The datalab's HTTP face: ``/datalab/start|stop|view|static`` and ``ANY /*`` to the proxy.

Thin: each route reads the request, calls `Datalab`, and writes its answer or its refusal
(JSON ``{"code", "message"}`` for the API; a short page for the proxied site).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from nbbridge.store import StoreUnavailable

from ._api import ApiError, file_path, ok_body, redirect_target
from ._core import Datalab
from ._routing import SESSION_COOKIE
from ._static import StaticFetcher
from ._upload import DEFAULT_MAX_UPLOAD, SpooledRequest, take_body

#: Header a trusted front (nginx) may set to the path prefix it mounts the datalab under.
PREFIX_HEADER = b"X-Forwarded-Prefix"


def _segments(request: Request) -> list[bytes]:
    return list(request.postpath or [])


def _arg(request: Request, name: bytes) -> str | None:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name)
    if not values:
        return None
    try:
        return bytes(values[0]).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def is_secure(request: Request) -> bool:
    """TLS here, or at the front that forwarded the request."""
    forwarded = request.getHeader(b"X-Forwarded-Proto")
    return bool(request.isSecure() or (forwarded and forwarded.strip().lower() == b"https"))


def abort(request: Request) -> None:
    """End the browser's connection with a reset: the response cannot be completed."""
    transport: Any = request.transport
    if transport is not None:
        transport.abortConnection()


def write_json_error(request: Request, error: ApiError) -> None:
    request.setResponseCode(error.status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(error.body())
    request.finish()


def write_page_error(request: Request, error: ApiError) -> None:
    """A short HTML page for a browser that reached the proxied site without a session."""
    request.setResponseCode(error.status)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    text = html.escape(error.message)
    request.write(
        f"<!doctype html><title>{error.status} {error.code}</title>"
        f"<h1>{error.status}</h1><p>{text}</p>".encode()
    )
    request.finish()


class DatalabApi(Resource):
    """``/datalab/...``: start, stop, view, static."""

    isLeaf = True
    _log = Logger()

    def __init__(self, datalab: Datalab, fetcher: StaticFetcher, spool: Callable[[], str]) -> None:
        super().__init__()
        self._datalab = datalab
        self._fetcher = fetcher
        self._spool = spool

    def render(self, request: Request) -> Any:
        # postpath: [b"datalab", ACTION, ...]
        path = _segments(request)
        action = path[1] if len(path) > 1 else b""
        handler: Callable[[Request], Coroutine[Any, Any, None]] | None = {
            b"start": self._start,
            b"stop": self._stop,
            b"view": self._view,
            b"static": self._static,
        }.get(action)
        if handler is None:
            write_json_error(request, ApiError(404, "NOT_FOUND", "no such datalab call"))
            return NOT_DONE_YET
        d: Deferred[None] = Deferred.fromCoroutine(handler(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Request) -> None:
        if isinstance(failure.value, ApiError):
            error = failure.value
            self._log.info(
                "datalab refused {method} {action}: {code} ({message})",
                method=request.method.decode("latin-1"),
                action=(_segments(request)[1:2] or [b""])[0].decode("latin-1"),
                code=error.code,
                message=error.message,
            )
        elif failure.check(StoreUnavailable):
            self._log.warn("datalab store unavailable: {e}", e=failure.getErrorMessage())
            error = ApiError(503, "UNAVAILABLE", "the datalab's store is unavailable; retry")
        else:
            self._log.failure("datalab request failed", failure)
            error = ApiError(500, "ERROR", "internal error; see the datalab's log")
        if request.finished or request.startedWriting:
            abort(request)
            return
        write_json_error(request, error)

    @staticmethod
    def _need_post(request: Request) -> None:
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            raise ApiError(405, "METHOD_NOT_ALLOWED", "use POST")

    async def _start(self, request: Request) -> None:
        self._need_post(request)
        upload = take_body(request, self._spool())
        nonce = await self._datalab.start(
            _arg(request, b"ts"),
            _arg(request, b"filename"),
            _header(request, b"X-SIGN"),
            _header(request, b"X-SIGN-ALG"),
            upload,
        )
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.write(ok_body({"nonce": nonce}))
        request.finish()

    async def _stop(self, request: Request) -> None:
        self._need_post(request)
        await self._datalab.stop(
            _arg(request, b"ts"),
            _arg(request, b"nonce"),
            _header(request, b"X-SIGN"),
            _header(request, b"X-SIGN-ALG"),
        )
        request.setHeader(b"Content-Type", b"application/json")
        request.write(ok_body({}))
        request.finish()

    async def _view(self, request: Request) -> None:
        path = _segments(request)
        nonce = path[2].decode("utf-8", "replace") if len(path) > 2 else ""
        session = await self._datalab.view(nonce)
        raw_path, _, query = bytes(request.uri).partition(b"?")
        # /datalab/view/NONCE/DEST...: DEST is everything after the fourth slash, raw.
        parts = raw_path.split(b"/", 4)
        raw_dest = parts[4].decode("latin-1") if len(parts) > 4 else ""
        prefix = _header(request, PREFIX_HEADER) or ""
        location = redirect_target(raw_dest, query.decode("latin-1"), prefix)
        request.addCookie(
            SESSION_COOKIE,
            session,
            path=b"/",
            httpOnly=True,
            secure=is_secure(request),
            sameSite="lax",
        )
        request.setResponseCode(302)
        request.setHeader(b"Location", location.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.finish()

    async def _static(self, request: Request) -> None:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET")
            raise ApiError(405, "METHOD_NOT_ALLOWED", "use GET")
        path_segments = _segments(request)
        if len(path_segments) < 4:
            raise ApiError(404, "NOT_FOUND", "no file named")
        nonce = path_segments[2].decode("utf-8", "replace")
        try:
            segments = [s.decode("utf-8") for s in path_segments[3:]]
        except UnicodeDecodeError:
            raise ApiError(404, "NOT_FOUND", "no such file") from None
        path = file_path(segments)
        record = await self._datalab.static(nonce)
        endpoint = self._datalab.instances.launcher.endpoint(record)
        await self._fetcher.relay(request, record, endpoint, path)


class DatalabRoot(Resource):
    """Every path: ``/datalab/<call>`` to the API, anything else to the proxy."""

    isLeaf = True
    _API_CALLS = (b"start", b"stop", b"view", b"static")

    def __init__(self, api: IResource, proxy: IResource) -> None:
        super().__init__()
        self._api = api
        self._proxy = proxy

    def render(self, request: Request) -> Any:
        path = _segments(request)
        if len(path) >= 2 and path[0] == b"datalab" and path[1] in self._API_CALLS:
            return self._api.render(request)
        return self._proxy.render(request)


class DatalabSite(Site):
    """The site: request bodies spooled to disk under a size limit (`SpooledRequest`)."""

    requestFactory = SpooledRequest

    def __init__(
        self,
        resource: IResource,
        spool_dir: str,
        max_body: int = DEFAULT_MAX_UPLOAD,
        precheck_start: Callable[[str, str | None, str | None], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        self.spool_dir = spool_dir
        self.max_body = max_body
        #: checks a start's signature from its headers (`Datalab.precheck_start`)
        self.precheck_start = precheck_start

    def log(self, request: http.Request) -> None:
        """No access log: JupyterLab makes dozens of requests per page, and URLs of the
        API hold nonces. Refusals and instance events are logged where they happen."""
