"""The mixer's root resource: the token guard, then the mixed APIs or the proxy.

twisted.web hands every request to the root's ``getChildWithDefault`` first; the root checks
the token and sends the request, whatever its path, to one leaf: a refusal, the mixed API
answer (`_MixedApi`), or the `ProxyResource` (which routes by kernel id or spec name, and
sends everything else to the local Jupyter).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from nbbridge.store import StoreUnavailable
from nbbridge.web import ProxyResource, error_page

from ._guard import check
from ._mixer import Answer, Mixer, Unreachable, answer, mixed_api

_log = Logger()


class _Refused(Resource):
    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code = code
        self.message = message

    def render(self, request: IRequest) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"cache-control", b"no-store")
        if self.code == 401:
            request.setHeader(b"www-authenticate", b"token")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        page: bytes = error_page(self.code, self.message)
        return page


class _MixedApi(Resource):
    isLeaf = True

    def __init__(self, mixer: Mixer) -> None:
        super().__init__()
        self.mixer = mixer

    def render(self, request: IRequest) -> Any:
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            self._write(request, Answer(400, {"message": "the body is not JSON"}))
            return NOT_DONE_YET
        d = Deferred.fromCoroutine(answer(self.mixer, request, body))
        d.addCallback(lambda a: self._write(request, a))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: IRequest) -> None:
        if failure.check(Unreachable):
            self._write(request, Answer(503, {"message": f"unreachable: {failure.value}"}))
            return
        if failure.check(StoreUnavailable):
            _log.warn("mixer: {uri}: {why}", uri=request.uri, why=failure.value)
            message = f"the mixer's kernel table is unavailable: {failure.value}"
            self._write(request, Answer(503, {"message": message}))
            return
        _log.failure("mixer: {uri} failed", failure, uri=request.uri)
        self._write(request, Answer(500, {"message": "internal error in the mixer"}))

    def _write(self, request: IRequest, result: Answer) -> None:
        if getattr(request, "_disconnected", False) or request.finished:  # type: ignore[attr-defined]
            return
        request.setResponseCode(result.code)
        for key, value in result.headers.items():
            request.setHeader(key.encode(), value.encode())
        data = b""
        if result.code != 204 and result.body is not None:
            request.setHeader(b"content-type", b"application/json")
            data = json.dumps(result.body).encode()
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
        request.finish()


class MixerRoot(Resource):
    """Token guard, then the mixed APIs or the proxy, for every path."""

    def __init__(self, mixer: Mixer, proxy: ProxyResource, token: str, cookie: str) -> None:
        super().__init__()
        self.api = _MixedApi(mixer)
        self.proxy = proxy
        self.token = token
        self.cookie = cookie

    def getChildWithDefault(self, path: bytes, request: IRequest) -> Resource:
        allowed, why = check(request, self.token, self.cookie)
        if not allowed:
            code = 403 if why == "cross-origin request refused" else 401
            _log.info(
                "mixer: refused {method} {path}: {why}",
                method=request.method,
                path=request.path,
                why=why,
            )
            return _Refused(code, f"nbbridge mixer: {why}.")
        return self.api if mixed_api(request) else self.proxy

    def render(self, request: IRequest) -> Any:
        # "/" itself: no child was looked up.
        return self.getChildWithDefault(b"", request).render(request)
