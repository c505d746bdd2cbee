"""A datalab daemon in this process on 127.0.0.1, built by its tap, and a browser-ish client.

The daemon is made by ``tap.Options().parseOptions`` and ``makeService`` (so option parsing
and assembly are exercised); its sign key is a file of mode 0600 in the test's directory. The
clean-up stops it and checks that no instance process and no instance directory is left.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any
from urllib.parse import quote

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath
from twisted.trial import unittest
from twisted.web.client import Agent as WebAgent
from twisted.web.client import HTTPConnectionPool

from nbbridge.datalab import DatalabService
from nbbridge.datalab import tap as datalab_tap
from tests._cleanup import add_async_cleanup

SIGN_KEY = "datalab-test-key-\u00e9"
CSV = b"city,temp\nOslo,4\nLima,19\nCairo,27\n"


def sign(ts: str, name: str, key: str = SIGN_KEY) -> str:
    """The seed's X-SIGN: lowercase hex sha256(utf8(key + ts + name))."""
    return hashlib.sha256((key + ts + name).encode("utf-8")).hexdigest()


def sign_hmac(ts: str, name: str, key: str = SIGN_KEY) -> str:
    return hmac.new(key.encode(), (ts + name).encode(), hashlib.sha256).hexdigest()


def now_ts() -> str:
    return str(int(time.time()))


class DatalabTestCase(unittest.TestCase):
    """Starts a datalab daemon per test; stops it (and checks nothing is left) at the end."""

    timeout = 180

    def setUp(self) -> None:
        self.dir = FilePath(self.mktemp())
        self.dir.makedirs()
        self.key_file = self.dir.child("sign.key")
        self.key_file.setContent(SIGN_KEY.encode() + b"\n")
        os.chmod(self.key_file.path, 0o600)
        self.work = self.dir.child("work")
        self.service: DatalabService | None = None
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(WebAgent(reactor, pool=self._pool))
        add_async_cleanup(self, self._stop)

    async def start_datalab(self, *args: str) -> str:
        """Start the daemon with extra ARGS; its base URL (http://127.0.0.1:PORT)."""
        options = datalab_tap.Options()
        options.parseOptions(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--sign-key-file",
                self.key_file.path,
                "--work-dir",
                self.work.path,
                *args,
            ]
        )
        service = datalab_tap.makeService(options, reactor)
        assert isinstance(service, DatalabService)
        self.service = service
        service.startService()
        port = await service.when_listening()
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        return self.base

    async def _stop(self) -> None:
        if self.service is not None and self.service.running:
            pids = [
                p.pid
                for p in (
                    self.service.instances.launcher.processes.get(i)  # type: ignore[attr-defined]
                    for i in self.service.instances.ids()
                )
                if p is not None and p.pid is not None
            ]
            await self.service.stopService()
            for pid in pids:
                self.assertFalse(os.path.exists(f"/proc/{pid}"), f"instance {pid} outlived")
            if self.work.exists():
                self.assertEqual(
                    [c for c in self.work.listdir() if c != "spool"], [], "instance dirs left"
                )
        await self._pool.closeCachedConnections()

    # -- the API as a front-end calls it ---------------------------------------------------

    async def upload(
        self,
        body: bytes = CSV,
        filename: str = "weather.csv",
        *,
        ts: str | None = None,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
        expect: int | None = 200,
    ) -> tuple[int, dict[str, Any]]:
        """POST /datalab/start; (status, JSON answer)."""
        ts = now_ts() if ts is None else ts
        signature = sign(ts, filename) if signature is None else signature
        url = f"{self.base}/datalab/start?ts={quote(ts)}&filename={quote(filename)}"
        all_headers = {"X-SIGN": signature, "Content-Type": "application/octet-stream"}
        all_headers.update(headers or {})
        response = await self.http.post(url, data=body, headers=all_headers)
        answer = await treq.json_content(response)
        if expect is not None:
            self.assertEqual(response.code, expect, answer)
        return response.code, answer

    async def start_instance(self, body: bytes = CSV, filename: str = "weather.csv") -> str:
        """Upload and return the nonce."""
        _, answer = await self.upload(body, filename)
        self.assertEqual(answer["code"], "OK")
        nonce: str = answer["result"]["nonce"]
        return nonce

    async def get(self, path: str, **kwargs: Any) -> Any:
        return await self.http.get(self.base + path, allow_redirects=False, **kwargs)

    def within(self, seconds: float, what: str, d: Any) -> Deferred[Any]:
        """D, failing with WHAT if it takes longer than SECONDS."""
        if not isinstance(d, Deferred):
            d = Deferred.fromCoroutine(d)

        def late(result: Any, timeout: float) -> Any:
            raise AssertionError(f"{what}: not within {timeout:g} s")

        d.addTimeout(seconds, reactor, onTimeoutCancel=late)
        return d
