"""The client's status page, JSON and `nbbridge status`, with a real relay, agent and client
on 127.0.0.1 and a real headless Chromium."""

from __future__ import annotations

import json
import os
import sys
from html.parser import HTMLParser
from typing import Any

import treq
from twisted.internet.utils import getProcessOutputAndValue

from nbbridge.client._status import StatusService
from tests._chromium import chromium, chromium_missing
from tests.tunnel import _tcp
from tests.tunnel._harness import CLIENT, Client, TunnelTestCase


class _Page(HTMLParser):
    """The `data-field` cards of the link and the cells of each forward's row."""

    def __init__(self) -> None:
        super().__init__()
        self.link: dict[str, str] = {}
        self.forwards: dict[str, dict[str, str]] = {}
        self.hrefs: dict[str, str] = {}
        self.series: list[str] = []
        self._card: str | None = None
        self._value = False
        self._row: str | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div" and a.get("class") == "card":
            self._card = a.get("data-field")
        elif tag == "div" and a.get("class") == "value" and self._card:
            self._value = True
        elif tag == "tr" and a.get("data-forward"):
            self._row = a["data-forward"]
            self.forwards[self._row or ""] = {}
        elif tag == "td" and self._row is not None:
            self._cell = a.get("data-field")
        elif tag == "a" and self._row is not None:
            self.hrefs[self._row] = a.get("href") or ""
        elif tag == "polyline" and a.get("data-series"):
            self.series.append(a["data-series"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._value:
            self._value, self._card = False, None
        elif tag == "tr":
            self._row = None
        elif tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._value and self._card:
            self.link[self._card] = data
        if self._row is not None and self._cell is not None:
            self.forwards[self._row][self._cell] = data


class StatusPageTests(TunnelTestCase):
    timeout = 180

    async def _tunnel(self) -> tuple[Client, StatusService, int, _tcp.Peer]:
        """A live link carrying one finished echo and one connection still open."""
        await self.start_relay()
        port, _ = await self.serve(_tcp.Echo)
        await self.start_agent({"echo": str(port), "jupyter": str(port)})
        mark = self.logs.mark()
        client = await self.start_client(forward=["echo", "jupyter"])
        [status] = [s for s in client.service if isinstance(s, StatusService)]  # type: ignore[attr-defined]
        listening = await status.listening
        assert listening is not None
        # Rates are worked out here, not on the service's clock: the figures stay put.
        status.sampling.stop()
        status.sampler.sample()
        await self.echo_once(client.port("echo"), size=200_000)
        await self.wait_link_up(mark)
        held = await self.connect(client.port("jupyter"), _tcp.Peer(1000))
        await held.wait_received(1000)
        rtt = client.link.ping()
        assert rtt is not None
        self.assertGreater(await rtt, 0)
        status.sampler.sample()
        return client, status, listening.getHost().port, held

    async def test_json(self) -> None:
        client, _status, port, _held = await self._tunnel()
        response = await self.http.get(f"http://127.0.0.1:{port}/status.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        doc: dict[str, Any] = json.loads(await treq.content(response))
        link = doc["link"]
        self.assertEqual(link["state"], "up")
        self.assertEqual(link["agent"], "gpu")
        self.assertEqual(link["relay"], f"{self.relay_url}/")
        self.assertEqual(link["agent_key"], self.files.public("agent"))
        self.assertGreater(link["rtt_ms"], 0)
        self.assertEqual(link["reconnects"], 0)
        self.assertIsNone(link["last_error"])
        echo, jupyter = doc["forwards"]
        self.assertEqual((echo["service"], echo["open"], echo["connections"]), ("echo", 0, 1))
        self.assertEqual((echo["bytes_up"], echo["bytes_down"]), (200_000, 200_000))
        self.assertGreater(echo["rate_up"], 0)
        self.assertEqual((jupyter["open"], jupyter["connections"]), (1, 1))
        jupyter_url = f"http://127.0.0.1:{client.port('jupyter')}/"
        self.assertEqual(jupyter["url"], jupyter_url)
        self.assertEqual(jupyter["line"], f"jupyter → {jupyter_url}")
        self.assertIsNone(echo["url"])

    async def test_nbbridge_status_prints_it(self) -> None:
        client, _status, port, _held = await self._tunnel()
        nbbridge = os.path.join(os.path.dirname(sys.executable), "nbbridge")
        out, err, code = await getProcessOutputAndValue(
            nbbridge, ["status", "--status", f"tcp:{port}:interface=127.0.0.1"], env=os.environ
        )
        self.assertEqual(code, 0, err)
        text = out.decode()
        lines = text.splitlines()
        self.assertTrue(lines[0].startswith("link     up for "), text)
        self.assertIn("round trip to the relay", lines[0])
        self.assertIn("0 reconnects", lines[0])
        self.assertEqual(lines[1], f"relay    {self.relay_url}/")
        self.assertEqual(lines[2], f"agent    gpu ({self.files.public('agent')})")
        jupyter = f"jupyter → http://127.0.0.1:{client.port('jupyter')}/   1 open, 1 in all"
        self.assertTrue(any(line.startswith(jupyter) for line in lines), text)
        self.assertIn("sent 200.0 kB", text)

    async def test_nbbridge_status_without_a_client(self) -> None:
        # Port 1: nothing listens there.
        nbbridge = os.path.join(os.path.dirname(sys.executable), "nbbridge")
        _out, err, code = await getProcessOutputAndValue(
            nbbridge, ["status", "--status", "1"], env=os.environ
        )
        self.assertEqual(code, 2)
        self.assertEqual(len(err.decode().splitlines()), 1, err)
        self.assertIn("no nbbridge-client answers at http://127.0.0.1:1/status.json", err.decode())

    async def test_a_taken_status_port_leaves_the_tunnel_working(self) -> None:
        """A second client on the machine: its page cannot listen, it says so and carries on."""
        await self.start_relay()
        port, _ = await self.serve(_tcp.Echo)
        taken = await self.serve(_tcp.Echo)
        await self.start_agent({"echo": str(port)})
        mark = self.logs.mark()
        client = await self.start_client(
            forward=["echo"], extra=["--status", f"tcp:{taken[0]}:interface=127.0.0.1"]
        )
        [status] = [s for s in client.service if isinstance(s, StatusService)]  # type: ignore[attr-defined]
        self.assertIsNone(await status.listening)
        await self.logs.wait_for("no status page:", CLIENT, since=mark)
        await self.logs.wait_for("--status off", CLIENT, since=mark)
        await self.echo_once(client.port("echo"))

    async def test_page_in_chromium(self) -> None:
        client, _status, port, _held = await self._tunnel()
        url = f"http://127.0.0.1:{port}/"
        dom = (await chromium(self, "--dump-dom", url)).out.decode("utf-8")
        page = _Page()
        page.feed(dom)
        self.assertEqual(page.link["state"], "up")
        self.assertEqual(page.link["agent"], "gpu")
        self.assertEqual(page.link["relay"], f"{self.relay_url}/")
        self.assertRegex(page.link["rtt"], r"^\d+(\.\d+)? ms$")
        self.assertEqual(page.link["reconnects"], "0")
        echo = page.forwards["echo"]
        self.assertEqual((echo["open"], echo["connections"]), ("0", "1"))
        self.assertEqual((echo["bytes_up"], echo["bytes_down"]), ("200.0 kB", "200.0 kB"))
        self.assertRegex(echo["rate_up"], r"^[\d.]+ [kM]?B/s$")
        self.assertNotEqual(echo["rate_up"], "0 B/s")
        self.assertEqual(page.forwards["jupyter"]["open"], "1")
        jupyter_url = f"http://127.0.0.1:{client.port('jupyter')}/"
        self.assertEqual(page.hrefs["jupyter"], jupyter_url)
        self.assertEqual(page.forwards["jupyter"]["line"], f"jupyter → {jupyter_url}")
        # The live chart: a line per forward.
        self.assertEqual(sorted(page.series), ["echo", "jupyter"])
        self.assertNotIn("no answer", dom)

    test_page_in_chromium.skip = chromium_missing("client status page")  # type: ignore[attr-defined]
