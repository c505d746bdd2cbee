"""``ANY /*`` against real jupyter-server instances: sessions, kernels, isolation, refusals."""

from __future__ import annotations

import json
import uuid
from typing import Any

from nbbridge.datalab import SESSION_COOKIE
from tests._tools import unavailable
from tests.tunnel._jupyter import execute_request, missing_jupyter
from tests.web._kernel import V1, open_kernel

from ._harness import CSV, DatalabTestCase
from .test_api import raw_exchange

READ_CSV = "print(open('weather.csv').read().splitlines()[2])"


class Browser:
    """Holds the one cookie a browser would, and sends Origin like one."""

    def __init__(self, test: ProxyTests) -> None:
        self.test = test
        self.cookie: str | None = None
        self.seen: list[bytes] = []  # every header and body the browser received

    @property
    def origin(self) -> str:
        return self.test.base

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {"Origin": self.origin}
        if self.cookie is not None:
            headers["Cookie"] = f"{SESSION_COOKIE}={self.cookie}"
        headers.update(extra)
        return headers

    async def view(self, nonce: str, dest: str = "lab") -> Any:
        response = await self.test.get(f"/datalab/view/{nonce}/{dest}", headers=self.headers())
        self.test.assertEqual(response.code, 302)
        self._record(response, await response.content())
        for value in response.headers.getRawHeaders(b"Set-Cookie"):
            name, _, rest = value.decode().partition("=")
            if name == SESSION_COOKIE:
                self.cookie = rest.split(";")[0]
        return response

    def _record(self, response: Any, body: bytes) -> None:
        for name, values in response.headers.getAllRawHeaders():
            self.seen.extend(name + b": " + v for v in values)
        self.seen.append(body)

    async def request(
        self, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, bytes, Any]:
        data = None if body is None else json.dumps(body).encode()
        all_headers = self.headers(**headers)
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        response = await self.test.http.request(
            method, self.test.base + path, data=data, headers=all_headers, allow_redirects=False
        )
        content = await response.content()
        self._record(response, content)
        return response.code, content, response

    async def json(self, method: str, path: str, body: Any = None) -> Any:
        code, content, _ = await self.request(method, path, body)
        self.test.assertIn(code, (200, 201, 204), content[:300])
        return json.loads(content) if content else None


class ProxyTests(DatalabTestCase):
    skip = unavailable(missing_jupyter())

    def instance_token(self, index: int = 0) -> str:
        service = self.service
        assert service is not None
        processes = service.instances.launcher.processes  # type: ignore[attr-defined]
        tokens = [processes.get(i).token for i in service.instances.ids()]
        return tokens[index]

    async def kernel_reads_csv(self, browser: Browser, *, v1: bool) -> None:
        kernel = await self.within(
            90, "start a kernel", browser.json("POST", "/api/kernels", {"name": "python3"})
        )
        port = int(self.base.rsplit(":", 1)[1])
        channels = await self.within(
            60,
            "open the kernel WebSocket",
            open_kernel(self, port, kernel["id"], browser.headers(), v1=v1),
        )
        self.assertEqual(channels.websocket_protocol_in_use, V1 if v1 else None)
        request = execute_request(READ_CSV, uuid.uuid4().hex)
        channels.send_json(request)
        try:
            stream = await self.within(60, "output", channels.reply_to(request, "iopub", "stream"))
        except AssertionError:
            raise AssertionError(f"no output; received: {channels.received!r}"[:3000]) from None
        self.assertEqual(stream["content"]["text"], "Lima,19\n")
        reply = await self.within(30, "reply", channels.reply_to(request, "shell", "execute_reply"))
        self.assertEqual(reply["content"]["status"], "ok")

    async def test_kernel_v1_and_legacy_framing(self) -> None:
        await self.start_datalab()
        nonce = await self.within(120, "start", self.start_instance())
        browser = Browser(self)
        await browser.view(nonce, "lab/tree/weather.csv")
        status = await browser.json("GET", "/api/status")
        self.assertIn("started", status)
        contents = await browser.json("GET", "/api/contents/weather.csv?content=1&format=text")
        self.assertEqual(contents["content"], CSV.decode())
        await self.kernel_reads_csv(browser, v1=True)
        await self.kernel_reads_csv(browser, v1=False)
        # JupyterLab's page comes through too; the instance's login cookies never do
        code, page, response = await browser.request("GET", "/lab")
        self.assertEqual(code, 200, page[:300])
        self.assertIn(b"JupyterLab", page)
        for value in response.headers.getRawHeaders(b"Set-Cookie") or []:
            self.assertTrue(value.startswith(b"_xsrf="), value)
        token = self.instance_token().encode()
        self.assertFalse([s for s in browser.seen if token in s], "the token reached the browser")
        self.assertFalse(
            [s for s in browser.seen if s.lower().startswith(b"set-cookie: username-")]
        )

    async def test_client_authorization_is_replaced(self) -> None:
        await self.start_datalab()
        nonce = await self.within(120, "start", self.start_instance())
        browser = Browser(self)
        await browser.view(nonce)
        code, _, _ = await browser.request(
            "GET", "/api/status", Authorization="token not-the-instance-token"
        )
        self.assertEqual(code, 200)

    async def test_two_sessions_are_isolated(self) -> None:
        await self.start_datalab()
        nonce_a = await self.within(120, "start A", self.start_instance(b"a\n1\n", "a.csv"))
        nonce_b = await self.within(120, "start B", self.start_instance(b"b\n2\n", "b.csv"))
        alice, bob = Browser(self), Browser(self)
        await alice.view(nonce_a)
        await bob.view(nonce_b)
        listing_a = await alice.json("GET", "/api/contents")
        listing_b = await bob.json("GET", "/api/contents")
        self.assertEqual([f["name"] for f in listing_a["content"]], ["a.csv"])
        self.assertEqual([f["name"] for f in listing_b["content"]], ["b.csv"])
        kernel_b = await self.within(
            90, "B's kernel", bob.json("POST", "/api/kernels", {"name": "python3"})
        )
        code, _, _ = await alice.request("GET", f"/api/kernels/{kernel_b['id']}")
        self.assertEqual(code, 404)
        code, _, _ = await alice.request("GET", "/api/contents/b.csv")
        self.assertEqual(code, 404)
        port = int(self.base.rsplit(":", 1)[1])
        with self.assertRaises(AssertionError):
            await open_kernel(self, port, kernel_b["id"], alice.headers(), v1=False)
        # One browser holding A's cookie that opens B's view goes to B (latest view wins).
        await alice.view(nonce_b)
        listing = await alice.json("GET", "/api/contents")
        self.assertEqual([f["name"] for f in listing["content"]], ["b.csv"])

    async def test_bad_origin(self) -> None:
        await self.start_datalab()
        nonce = await self.within(120, "start", self.start_instance())
        browser = Browser(self)
        await browser.view(nonce)
        for origin in ("http://evil.example", "null", f"{self.base}.evil.example"):
            code, _, _ = await browser.request(
                "POST", "/api/kernels", {"name": "python3"}, Origin=origin
            )
            self.assertEqual(code, 403, origin)
        self.assertEqual((await browser.json("GET", "/api/kernels")), [])
        # A WebSocket upgrade from another origin, or with none, is refused before upstream.
        kernel = await self.within(
            90, "start a kernel", browser.json("POST", "/api/kernels", {"name": "python3"})
        )
        for origin in ("http://evil.example", None):
            headers = browser.headers()
            if origin is None:
                del headers["Origin"]
            else:
                headers["Origin"] = origin
            code = await upgrade_status(self.base, f"/api/kernels/{kernel['id']}/channels", headers)
            self.assertEqual(code, 403, origin)

    async def test_stopped_instance_session_is_refused(self) -> None:
        await self.start_datalab()
        nonce = await self.within(120, "start", self.start_instance())
        browser = Browser(self)
        await browser.view(nonce)
        service = self.service
        assert service is not None
        await service.instances.stop(service.instances.ids()[0])
        code, _, _ = await browser.request("GET", "/api/status")
        self.assertEqual(code, 403)


async def upgrade_status(base: str, path: str, headers: dict[str, str]) -> int:
    """The HTTP status a WebSocket handshake to BASE+PATH got (101 if it opened)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {base.removeprefix('http://')}",
        "Upgrade: websocket",
        "Connection: Upgrade, close",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    answer = await raw_exchange(base, ("\r\n".join(lines) + "\r\n\r\n").encode())
    return int(answer.split(b" ", 2)[1])
