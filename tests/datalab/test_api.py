"""The datalab API against real jupyter-server instances: start, view, static, stop, refusals."""

from __future__ import annotations

import os
import time
from urllib.parse import quote

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from nbbridge.datalab import SESSION_COOKIE
from tests._tools import unavailable
from tests.tunnel._jupyter import missing_jupyter

from ._harness import CSV, DatalabTestCase, now_ts, sign, sign_hmac

NOTEBOOK = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'


class RefusalTests(DatalabTestCase):
    """Refusals that need no running instance: each answers JSON with its code."""

    skip = unavailable(missing_jupyter())

    async def refused(self, status: int, code: str, **kwargs: object) -> dict[str, object]:
        await self.start_datalab()
        got, answer = await self.upload(expect=None, **kwargs)  # type: ignore[arg-type]
        self.assertEqual((got, answer["code"]), (status, code), answer)
        self.assertIsInstance(answer["message"], str)
        self.assertEqual(self.service.instances.ids(), [])  # type: ignore[union-attr]
        return answer

    async def test_bad_signature(self) -> None:
        await self.refused(401, "BAD_SIGNATURE", signature="0" * 64)

    async def test_missing_signature(self) -> None:
        await self.refused(401, "BAD_SIGNATURE", signature="")

    async def test_signature_of_another_name(self) -> None:
        ts = now_ts()
        await self.refused(401, "BAD_SIGNATURE", ts=ts, signature=sign(ts, "other.csv"))

    async def test_stale(self) -> None:
        ts = str(int(time.time()) - 301)
        await self.refused(403, "STALE", ts=ts)

    async def test_future_stale(self) -> None:
        ts = str(int(time.time()) + 400)
        await self.refused(403, "STALE", ts=ts)

    async def test_bad_filename(self) -> None:
        for name in ("../x.csv", "a/b.csv", ".hidden", "a\x01.csv", "..", "c:\\x.csv"):
            await self.start_datalab() if self.service is None else None
            ts = now_ts()
            got, answer = await self.upload(
                filename=name, ts=ts, signature=sign(ts, name), expect=None
            )
            self.assertEqual((got, answer["code"]), (400, "BAD_FILENAME"), name)

    async def test_unknown_nonce(self) -> None:
        await self.start_datalab()
        for path in ("/datalab/view/nope/lab", "/datalab/static/nope/weather.csv"):
            response = await self.get(path)
            answer = await treq.json_content(response)
            self.assertEqual((response.code, answer["code"]), (404, "NOT_FOUND"), path)

    async def test_too_large_declared(self) -> None:
        """A Content-Length over the limit is answered 413 before the body is read."""
        await self.start_datalab("--max-upload", "1000")
        ts = now_ts()
        head = (
            f"POST /datalab/start?ts={ts}&filename=big.csv HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nX-SIGN: {sign(ts, 'big.csv')}\r\n"
            f"Content-Length: 5000000000\r\n\r\n"
        ).encode()
        answer = await raw_exchange(self.base, head + b"x" * 1000)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])
        self.assertIn(b'"TOO_LARGE"', answer)
        self.assertEqual(os.listdir(self.service.site.spool_dir), [])  # type: ignore[union-attr]

    async def test_unsigned_body_is_never_stored(self) -> None:
        """A start with a wrong signature is refused from its headers: no byte is spooled."""
        await self.start_datalab()
        ts = now_ts()
        head = (
            f"POST /datalab/start?ts={ts}&filename=big.csv HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nX-SIGN: {'0' * 64}\r\n"
            f"Content-Length: 500000000\r\n\r\n"
        ).encode()
        answer = await raw_exchange(self.base, head + b"x" * 200_000)
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer[:200])
        self.assertIn(b'"BAD_SIGNATURE"', answer)
        self.assertEqual(os.listdir(self.service.site.spool_dir), [])  # type: ignore[union-attr]

    async def test_too_large_streamed(self) -> None:
        """A body without a declared length is counted as it arrives; past the limit, 413."""
        await self.start_datalab("--max-upload", "100000")
        ts = now_ts()
        head = (
            f"POST /datalab/start?ts={ts}&filename=big.csv HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nX-SIGN: {sign(ts, 'big.csv')}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunk = b"%x\r\n%s\r\n" % (60000, b"y" * 60000)
        answer = await raw_exchange(self.base, head + chunk * 3)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])
        self.assertIn(b'"TOO_LARGE"', answer)

    async def test_start_needs_post(self) -> None:
        await self.start_datalab()
        ts = now_ts()
        response = await self.get(
            f"/datalab/start?ts={ts}&filename=a.csv", headers={"X-SIGN": sign(ts, "a.csv")}
        )
        self.assertEqual(response.code, 405)

    async def test_no_cookie_is_401(self) -> None:
        await self.start_datalab()
        response = await self.get("/lab")
        self.assertEqual(response.code, 401)
        self.assertIn(b"open the view link", await response.content())

    async def test_forged_cookie_is_403(self) -> None:
        await self.start_datalab()
        response = await self.get("/lab", headers={"Cookie": f"{SESSION_COOKIE}=forged"})
        self.assertEqual(response.code, 403)


async def raw_exchange(base: str, data: bytes) -> bytes:
    """Send DATA on a fresh connection to BASE; everything answered until the server closes."""
    port = int(base.rsplit(":", 1)[1])

    class Reader(Protocol):
        def __init__(self) -> None:
            self.got = b""
            self.done: Deferred[bytes] = Deferred()

        def dataReceived(self, chunk: bytes) -> None:
            self.got += chunk

        def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
            self.done.callback(self.got)

    reader = Reader()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reader)
    assert reader.transport is not None
    reader.transport.write(data)
    return await reader.done


class FlowTests(DatalabTestCase):
    """A real instance per test: upload, view, static, stop, limits."""

    skip = unavailable(missing_jupyter())

    async def test_upload_view_static(self) -> None:
        await self.start_datalab()
        nonce = await self.within(120, "start", self.start_instance())
        self.assertGreaterEqual(len(nonce), 22)  # >= 128 bits, URL-safe
        self.assertRegex(nonce, r"^[A-Za-z0-9_-]+$")

        # static: the CSV itself, streamed back (no redirect), with its type
        response = await self.get(f"/datalab/static/{nonce}/weather.csv")
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), CSV)
        self.assertIn(b"csv", response.headers.getRawHeaders(b"Content-Type")[0])
        # the nonce works any number of times
        response = await self.get(f"/datalab/static/{nonce}/weather.csv")
        self.assertEqual(await response.content(), CSV)

        # view: 302 to /DEST on this host, with the session cookie
        response = await self.get(f"/datalab/view/{nonce}/lab/tree/weather.csv")
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"Location"), [b"/lab/tree/weather.csv"])
        cookie = response.headers.getRawHeaders(b"Set-Cookie")[0].decode()
        self.assertTrue(cookie.startswith(SESSION_COOKIE + "="), cookie)
        for attribute in ("HttpOnly", "SameSite=lax", "Path=/"):
            self.assertIn(attribute.lower(), cookie.lower())
        self.assertNotIn("secure", cookie.lower())
        instance = self.service.instances.launcher.processes.get(  # type: ignore[union-attr]
            self.service.instances.ids()[0]  # type: ignore[union-attr]
        )
        self.assertNotIn(cookie.split(";")[0].split("=", 1)[1], instance.token)

    async def test_view_redirect_never_leaves_the_site(self) -> None:
        await self.start_datalab()
        nonce = await self.within(120, "start", self.start_instance())
        cases = {
            "//evil.example/x": b"/evil.example/x",
            "/%2F/evil.example": b"/evil.example",
            "%2F%2Fevil.example": b"/evil.example",
            "%5C%5Cevil.example": b"/%5C%5Cevil.example",
            "https://evil.example/": b"/https://evil.example/",
            "%09/evil.example": b"/%09/evil.example",
            "lab?x=%0d%0aSet-Cookie:a=b": b"/lab?x=%0D%0ASet-Cookie:a=b",
            "": b"/",
        }
        for dest, location in cases.items():
            response = await self.get(f"/datalab/view/{nonce}/{dest}")
            self.assertEqual(response.code, 302, dest)
            got = response.headers.getRawHeaders(b"Location")[0]
            self.assertEqual(got, location, dest)
            self.assertFalse(got.startswith(b"//") or got.startswith(b"/\\"), dest)
        # a prefix the front mounts the site under is kept
        response = await self.get(
            f"/datalab/view/{nonce}/lab", headers={"X-Forwarded-Prefix": "/data"}
        )
        self.assertEqual(response.headers.getRawHeaders(b"Location"), [b"/data/lab"])
        # and the cookie is Secure when the front speaks TLS
        response = await self.get(
            f"/datalab/view/{nonce}/lab", headers={"X-Forwarded-Proto": "https"}
        )
        self.assertIn("secure", response.headers.getRawHeaders(b"Set-Cookie")[0].decode().lower())

    async def test_static_traversal(self) -> None:
        await self.start_datalab()
        nonce = await self.within(120, "start", self.start_instance())
        secret = self.work.parent().child("outside.txt")
        secret.setContent(b"not yours")
        for dest in (
            "../outside.txt",
            "%2e%2e/outside.txt",
            "..%2Foutside.txt",
            "%2E%2E%2F%2E%2E%2Foutside.txt",
            "a/../../outside.txt",
            "..%5Coutside.txt",
            ".%2e/.%2e/outside.txt",
        ):
            response = await self.get(f"/datalab/static/{nonce}/{dest}")
            body = await response.content()
            self.assertEqual(response.code, 404, (dest, body))
            self.assertNotIn(b"not yours", body)

    async def test_static_notebook_and_large_file(self) -> None:
        """A notebook saved in the instance, and a 10 MB file, streamed back byte for byte."""
        await self.start_datalab()
        big = os.urandom(10 * 1024 * 1024)
        nonce = await self.within(120, "start", self.start_instance(big, "big.bin"))
        instance = self.service.instances.launcher.processes.get(  # type: ignore[union-attr]
            self.service.instances.ids()[0]  # type: ignore[union-attr]
        )
        with open(os.path.join(instance.root, "analysis.ipynb"), "wb") as f:
            f.write(NOTEBOOK)
        response = await self.get(f"/datalab/static/{nonce}/analysis.ipynb")
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), NOTEBOOK)
        response = await self.get(f"/datalab/static/{nonce}/big.bin")
        self.assertEqual(response.code, 200)
        received = await self.within(60, "10 MB download", response.content())
        self.assertEqual(received, big)

    async def test_replay(self) -> None:
        await self.start_datalab()
        ts = now_ts()
        await self.within(120, "start", self.upload(ts=ts))
        code, answer = await self.upload(ts=ts, expect=None)
        self.assertEqual((code, answer["code"]), (409, "REPLAY"))
        self.assertEqual(len(self.service.instances.ids()), 1)  # type: ignore[union-attr]

    async def test_hmac_and_milliseconds(self) -> None:
        await self.start_datalab()
        ts = str(int(time.time() * 1000))
        _, answer = await self.within(
            120,
            "start",
            self.upload(
                ts=ts,
                signature=sign_hmac(ts, "weather.csv"),
                headers={"X-SIGN-ALG": "hmac-sha256"},
            ),
        )
        self.assertEqual(answer["code"], "OK")

    async def test_full(self) -> None:
        await self.start_datalab("--max-instances", "1")
        await self.within(120, "start", self.start_instance())
        code, answer = await self.upload(filename="second.csv", expect=None)
        self.assertEqual((code, answer["code"]), (503, "FULL"))

    async def test_stop(self) -> None:
        await self.start_datalab()
        nonce = await self.within(120, "start", self.start_instance())
        processes = self.service.instances.launcher.processes  # type: ignore[union-attr]
        instance = processes.get(self.service.instances.ids()[0])  # type: ignore[union-attr]
        ts = now_ts()
        url = f"{self.base}/datalab/stop?ts={ts}&nonce={quote(nonce)}"
        response = await self.http.post(url, headers={"X-SIGN": sign(ts, "forged")})
        self.assertEqual(response.code, 401)
        response = await self.http.post(url, headers={"X-SIGN": sign(ts, nonce)})
        self.assertEqual((await treq.json_content(response))["code"], "OK")
        await instance.when_ended()
        self.assertFalse(os.path.exists(instance.directory))
        self.assertFalse(os.path.exists(f"/proc/{instance.pid}"))
        response = await self.get(f"/datalab/view/{nonce}/lab")
        self.assertEqual(response.code, 404)

    async def test_idle_timeout(self) -> None:
        await self.start_datalab("--idle-timeout", "2")
        await self.within(120, "start", self.start_instance())
        processes = self.service.instances.launcher.processes  # type: ignore[union-attr]
        instance = processes.get(self.service.instances.ids()[0])  # type: ignore[union-attr]
        await self.within(60, "idle stop", instance.when_ended())
        self.assertEqual(self.service.instances.ids(), [])  # type: ignore[union-attr]
        self.assertFalse(os.path.exists(instance.directory))

    async def test_token_not_on_command_line(self) -> None:
        await self.start_datalab()
        await self.within(120, "start", self.start_instance())
        processes = self.service.instances.launcher.processes  # type: ignore[union-attr]
        instance = processes.get(self.service.instances.ids()[0])  # type: ignore[union-attr]
        with open(f"/proc/{instance.pid}/cmdline", "rb") as f:
            cmdline = f.read()
        self.assertNotIn(instance.token.encode(), cmdline)
        with open(f"/proc/{instance.pid}/environ", "rb") as f:
            self.assertIn(b"JUPYTER_TOKEN=" + instance.token.encode(), f.read())
