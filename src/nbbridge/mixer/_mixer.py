"""The mixing itself: the kernelspecs, kernels and sessions APIs over several Jupyter servers.

These answers are JSON the mixer reads and rewrites (spec names prefixed, lists merged), so
it makes those calls itself over the proxy's `UpstreamPool`; everything else (the kernels'
``channels`` WebSockets, spec logos, and in front of the local Jupyter the whole UI) is
passed through by the proxy, routed by `route`.

A backend that cannot be reached (connection refused, link down, timeout) is marked down
with its reason (logged once): its specs leave the list, its known kernels are listed as
dead, and the other backends are untouched. Its next successful answer marks it up again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.iweb import IRequest

from nbbridge.web import Refusal, Route, is_upgrade

from ._backends import Backend
from ._names import (
    dead_kernel,
    mark_kernel,
    mark_session,
    mark_spec,
    merge_kernelspecs,
    prefixed,
    segments,
    split_spec,
    strip_token,
)
from ._table import Owner, OwnerTable

_log = Logger()


class Unreachable(Exception):
    """A backend did not answer (not: answered with an error status)."""


@attrs.frozen
class Answer:
    """A status and a JSON-able body (None: no body) for the client."""

    code: int
    body: Any = None
    headers: dict[str, str] = attrs.field(factory=dict)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _error(code: int, message: str) -> Answer:
    return Answer(code, {"message": message, "reason": None})


class Mixer:
    """The local backend and the remotes, the owner table, and the calls that mix them."""

    def __init__(
        self,
        local: Backend,
        remotes: Iterable[Backend],
        pool: Any,
        table: OwnerTable,
        *,
        call_timeout: float = 15.0,
        cookie: str = "",
    ) -> None:
        self.local = local
        self.remotes = {r.name: r for r in remotes if r.name is not None}
        self.pool = pool
        self.table = table
        self.call_timeout = call_timeout
        self.cookie = cookie

    # -- backends -----------------------------------------------------------------------------

    def backend(self, name: str | None) -> Backend | None:
        return self.local if name is None else self.remotes.get(name)

    @property
    def backends(self) -> list[Backend]:
        return [self.local, *self.remotes.values()]

    async def call(
        self,
        backend: Backend,
        method: bytes,
        target: bytes,
        host: bytes | None,
        body: Any = None,
    ) -> tuple[int, Any]:
        """METHOD TARGET on BACKEND with a JSON BODY: (status, parsed JSON answer).

        :raises Unreachable: the backend did not answer (it is then marked down).
        """
        down = backend.link_down()
        if down is not None:
            # Not worth the link's wait (seconds) for every call: it is retrying on its own.
            backend.went_down(down)
            raise Unreachable(down)
        headers = backend.headers(host)
        producer = None
        if body is not None:
            from io import BytesIO

            headers.setRawHeaders(b"Content-Type", [b"application/json"])
            producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
        try:
            d = self.pool.request(backend.upstream, method, target, headers, producer)
            d.addTimeout(self.call_timeout, self.pool.reactor)
            response = await d
            raw = await readBody(response)
        except Exception as e:
            reason = str(e) or type(e).__name__
            backend.went_down(reason)
            raise Unreachable(reason) from None
        backend.came_up()
        return response.code, _json(raw)

    async def _each(self, calls: dict[str | None, Deferred[Any]]) -> dict[str | None, Any]:
        """Await every call at once; a failed one maps to its exception."""
        names = list(calls)
        results = await DeferredList(list(calls.values()), consumeErrors=True)
        return {n: (v if ok else v.value) for n, (ok, v) in zip(names, results, strict=True)}

    def _start(self, coro: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(coro)

    # -- owners ----------------------------------------------------------------------------------

    async def owner(self, kind: str, item_id: str, host: bytes | None) -> Backend | None:
        """The backend holding kernel/session ITEM_ID (the table, then the backends' lists)."""
        owner = await self.table.get(kind, item_id)
        if owner is None:
            await self.rebuild(host)
            owner = await self.table.get(kind, item_id)
        return None if owner is None else self.backend(owner.backend)

    async def rebuild(self, host: bytes | None = None) -> None:
        """Record every backend's kernels and sessions (after a restart, or an unknown id)."""
        await self.list_kernels(host)
        await self.list_sessions(host)

    async def _listed(self, kind: str, backend: Backend, models: list[dict[str, Any]]) -> None:
        """Record what BACKEND listed, and forget its entries it no longer has."""
        seen = set()
        for model in models:
            if kind == "kernel":
                item, name = str(model.get("id")), str(model.get("name", ""))
            else:
                item = str(model.get("id"))
                kernel = model.get("kernel") or {}
                name = str(kernel.get("name", ""))
                if kernel.get("id"):
                    await self.table.put("kernel", str(kernel["id"]), Owner(backend.name, name))
            seen.add(item)
            await self.table.put(kind, item, Owner(backend.name, name))
        for item, owner in (await self.table.all(kind)).items():
            if owner.backend == backend.name and item not in seen:
                await self.table.drop(kind, item)

    # -- kernelspecs ---------------------------------------------------------------------------

    async def kernelspecs(self, host: bytes | None) -> dict[str, Any]:
        calls = {
            b.name: self._start(self.call(b, b"GET", b"/api/kernelspecs", host))
            for b in self.backends
        }
        results = await self._each(calls)
        local = None
        remotes: dict[str, dict[str, Any]] = {}
        for name, result in results.items():
            if isinstance(result, Exception):
                continue
            code, body = result
            if code != 200 or not isinstance(body, dict):
                self.backend(name).went_down(f"/api/kernelspecs answered {code}")  # type: ignore[union-attr]
                continue
            if name is None:
                local = body
            else:
                remotes[name] = body
        return merge_kernelspecs(local, remotes)

    async def kernelspec(self, name: str, host: bytes | None) -> Answer:
        remote, own = split_spec(name, frozenset(self.remotes))
        backend = self.backend(remote)
        assert backend is not None
        code, body = await self.call(backend, b"GET", b"/api/kernelspecs/" + _q(own), host)
        if code == 200 and isinstance(body, dict):
            body = mark_spec(remote, body)
        return Answer(code, body)

    # -- kernels -------------------------------------------------------------------------------

    async def _list(self, backend: Backend, target: bytes, host: bytes | None) -> list[Any]:
        code, body = await self.call(backend, b"GET", target, host)
        if code != 200 or not isinstance(body, list):
            raise Unreachable(f"{target.decode()} answered {code}")
        return body

    async def list_kernels(self, host: bytes | None) -> list[dict[str, Any]]:
        calls = {b.name: self._start(self._list(b, b"/api/kernels", host)) for b in self.backends}
        out: list[dict[str, Any]] = []
        known = await self.table.all("kernel")
        for name, result in (await self._each(calls)).items():
            backend = self.backend(name)
            assert backend is not None
            if isinstance(result, Exception):
                out += [dead_kernel(k, o.name) for k, o in known.items() if o.backend == name]
                continue
            models = [mark_kernel(name, m) for m in result if isinstance(m, dict)]
            await self._listed("kernel", backend, models)
            out += models
        return out

    async def start_kernel(self, body: Any, host: bytes | None) -> Answer:
        body = dict(body) if isinstance(body, dict) else {}
        name = body.get("name")
        remote, own = (None, None) if not name else split_spec(str(name), frozenset(self.remotes))
        backend = self.backend(remote)
        assert backend is not None
        if own is not None:
            body["name"] = own
        code, model = await self.call(backend, b"POST", b"/api/kernels", host, body)
        if code in (200, 201) and isinstance(model, dict):
            model = mark_kernel(remote, model)
            await self.table.put("kernel", str(model["id"]), Owner(remote, str(model["name"])))
            return Answer(code, model, {"Location": f"/api/kernels/{quote(str(model['id']))}"})
        return Answer(code, model)

    async def kernel(
        self, method: bytes, kernel_id: str, action: str | None, body: Any, host: bytes | None
    ) -> Answer:
        backend = await self.owner("kernel", kernel_id, host)
        if backend is None:
            return _error(404, f"Kernel does not exist: {kernel_id}")
        target = b"/api/kernels/" + _q(kernel_id) + (b"/" + _q(action) if action else b"")
        try:
            code, model = await self.call(backend, method, target, host, body)
        except Unreachable as e:
            if method == b"GET" and action is None:
                owner = await self.table.get("kernel", kernel_id)
                return Answer(200, dead_kernel(kernel_id, owner.name if owner else ""))
            return _error(503, f"the kernel's server ({backend.label}) is unreachable: {e}")
        if isinstance(model, dict) and "id" in model:
            model = mark_kernel(backend.name, model)
        if method == b"DELETE" and code in (204, 404):
            await self.table.drop("kernel", kernel_id)
        return Answer(code, model)

    # -- sessions ------------------------------------------------------------------------------

    async def list_sessions(self, host: bytes | None) -> list[dict[str, Any]]:
        calls = {b.name: self._start(self._list(b, b"/api/sessions", host)) for b in self.backends}
        out: list[dict[str, Any]] = []
        for name, result in (await self._each(calls)).items():
            backend = self.backend(name)
            assert backend is not None
            if isinstance(result, Exception):
                continue
            models = [mark_session(name, m) for m in result if isinstance(m, dict)]
            await self._listed("session", backend, models)
            out += models
        return out

    async def _session_target(
        self, body: dict[str, Any], host: bytes | None
    ) -> tuple[Backend | None, dict[str, Any]]:
        """The backend a session body's kernel belongs to, and the body in its terms."""
        kernel = body.get("kernel")
        if not isinstance(kernel, dict):
            return None, body
        kernel = dict(kernel)
        if kernel.get("id"):
            backend = await self.owner("kernel", str(kernel["id"]), host)
            kernel.pop("name", None)
        else:
            remote, own = split_spec(str(kernel.get("name") or ""), frozenset(self.remotes))
            backend = self.backend(remote)
            if kernel.get("name"):
                kernel["name"] = own
        return backend, {**body, "kernel": kernel}

    async def start_session(self, body: Any, host: bytes | None) -> Answer:
        body = dict(body) if isinstance(body, dict) else {}
        backend, sent = await self._session_target(body, host)
        kernel = body.get("kernel")
        if backend is None and isinstance(kernel, dict) and kernel.get("id"):
            return _error(404, f"Kernel does not exist: {kernel['id']}")
        backend = backend or self.local
        code, model = await self.call(backend, b"POST", b"/api/sessions", host, sent)
        if code in (200, 201) and isinstance(model, dict):
            model = mark_session(backend.name, model)
            await self._record_session(backend, model)
            return Answer(code, model, {"Location": f"/api/sessions/{quote(str(model['id']))}"})
        return Answer(code, model)

    async def _record_session(self, backend: Backend, model: dict[str, Any]) -> None:
        kernel = model.get("kernel") or {}
        name = str(kernel.get("name", ""))
        await self.table.put("session", str(model["id"]), Owner(backend.name, name))
        if kernel.get("id"):
            await self.table.put("kernel", str(kernel["id"]), Owner(backend.name, name))

    async def session(
        self, method: bytes, session_id: str, body: Any, host: bytes | None
    ) -> Answer:
        backend = await self.owner("session", session_id, host)
        if backend is None:
            return _error(404, f"Session not found: {session_id}")
        target = b"/api/sessions/" + _q(session_id)
        if method == b"PATCH" and isinstance(body, dict):
            wanted, sent = await self._session_target(body, host)
            if wanted is not None and wanted is not backend:
                return await self._move_session(backend, wanted, session_id, sent, host)
            body = sent
        try:
            code, model = await self.call(backend, method, target, host, body)
        except Unreachable as e:
            return _error(503, f"the session's server ({backend.label}) is unreachable: {e}")
        if isinstance(model, dict) and "id" in model:
            model = mark_session(backend.name, model)
            await self._record_session(backend, model)
        if method == b"DELETE" and code in (204, 404):
            await self.table.drop("session", session_id)
        return Answer(code, model)

    async def _move_session(
        self,
        old: Backend,
        new: Backend,
        session_id: str,
        body: dict[str, Any],
        host: bytes | None,
    ) -> Answer:
        """A session changing its kernel to another backend's: recreated there (a new id)."""
        code, model = await self.call(old, b"GET", b"/api/sessions/" + _q(session_id), host)
        if code != 200 or not isinstance(model, dict):
            return Answer(code, model)
        fresh = {k: model.get(k) for k in ("path", "name", "type")}
        fresh.update({k: v for k, v in body.items() if k in ("path", "name", "type")})
        fresh["kernel"] = body["kernel"]
        code, created = await self.call(new, b"POST", b"/api/sessions", host, fresh)
        if code not in (200, 201) or not isinstance(created, dict):
            return Answer(code, created)
        await self.call(old, b"DELETE", b"/api/sessions/" + _q(session_id), host)
        await self.table.drop("session", session_id)
        created = mark_session(new.name, created)
        await self._record_session(new, created)
        return Answer(200, created)

    # -- the proxied paths -----------------------------------------------------------------------

    async def route(self, request: IRequest) -> Route | Refusal:
        """Where the proxy sends REQUEST: a kernel's owner, a spec's owner, else local."""
        segs = segments(request.uri)
        host = request.getHeader(b"host")
        backend: Backend | None = self.local
        path = None
        if len(segs) >= 3 and segs[:2] == ["api", "kernels"]:
            backend = await self.owner("kernel", segs[2], host)
            if backend is None:
                return Refusal(404, f"Kernel does not exist: {segs[2]}")
        elif len(segs) >= 3 and segs[0] == "kernelspecs":
            remote, own = split_spec(segs[1], frozenset(self.remotes))
            backend = self.backend(remote)
            rest = "/".join(quote(s) for s in segs[2:])
            path = b"/kernelspecs/" + _q(own) + b"/" + rest.encode()
        assert backend is not None
        if backend is not self.local:
            path = strip_token(path if path is not None else request.uri)
        drop = ["Authorization"]
        if backend is not self.local:
            # The mixer checked Origin itself; the remote compares it with its own Host.
            drop.append("Origin")
        return Route(
            backend.upstream,
            path=path,
            host=backend.host,
            drop_cookies=[self.cookie] if self.cookie else (),
            drop_headers=drop,
            set_headers=backend.auth(),
        )


def _q(text: str) -> bytes:
    return quote(text, safe="").encode()


def mixed_api(request: IRequest) -> bool:
    """Whether REQUEST is one of the APIs the mixer answers itself (not a WebSocket)."""
    segs = segments(request.uri)
    if is_upgrade(request) or len(segs) < 2 or segs[0] != "api":
        return False
    if segs[1] == "kernels":
        return len(segs) <= 3 or (len(segs) == 4 and segs[3] in ("interrupt", "restart"))
    return segs[1] in ("kernelspecs", "sessions") and len(segs) <= 3


async def answer(mixer: Mixer, request: IRequest, body: Any) -> Answer:
    """The mixed answer to one API request (see `mixed_api`)."""
    segs = segments(request.uri)
    method = request.method
    host = request.getHeader(b"host")
    api = segs[1]
    if api == "kernelspecs":
        if method != b"GET":
            return _error(405, "Method not allowed")
        if len(segs) == 2:
            return Answer(200, await mixer.kernelspecs(host))
        return await mixer.kernelspec(segs[2], host)
    if api == "kernels":
        if len(segs) == 2:
            if method == b"GET":
                return Answer(200, await mixer.list_kernels(host))
            if method == b"POST":
                return await mixer.start_kernel(body, host)
            return _error(405, "Method not allowed")
        action = segs[3] if len(segs) == 4 else None
        return await mixer.kernel(method, segs[2], action, body, host)
    if len(segs) == 2:
        if method == b"GET":
            return Answer(200, await mixer.list_sessions(host))
        if method == b"POST":
            return await mixer.start_session(body, host)
        return _error(405, "Method not allowed")
    return await mixer.session(method, segs[2], body, host)


__all__ = ["Answer", "Mixer", "Unreachable", "answer", "mixed_api", "prefixed"]
