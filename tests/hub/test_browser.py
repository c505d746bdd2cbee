"""Integration: the /stats page in a real headless Chromium shows topics and counts."""

from __future__ import annotations

import os
from html.parser import HTMLParser

from tests._chromium import Capture, chromium, chromium_missing

from ._harness import HubTestCase


class _Cells(HTMLParser):
    """Collects `data-field` cells of the table rows marked `data-topic`."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.headings: list[str] = []
        self._row: str | None = None
        self._field: str | None = None
        self._heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-topic"):
            self._row = a["data-topic"]
            self.rows.setdefault(self._row or "", {})
        elif tag == "td" and self._row is not None:
            self._field = a.get("data-field")
        elif tag == "h3":
            self._heading = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        elif tag == "td":
            self._field = None
        elif tag == "h3":
            self._heading = False

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._field is not None:
            self.rows[self._row][self._field] = data
        if self._heading:
            self.headings.append(data)


class StatsPageBrowserTests(HubTestCase):
    timeout = 180
    skip = chromium_missing("/stats page")

    async def chromium(self, *args: str) -> Capture:
        return await chromium(self, *args)

    async def test_page_shows_topics_and_counts(self) -> None:
        # A browser here cannot sign in (no form posts from the command line): this relay
        # shows everything to anyone, as a relay on loopback may.
        await self.start_hub({"stats_anonymous": "full"})
        a, b = await self.join("/hub/lab/cam1"), await self.join("/hub/lab/cam1")
        reader = await self.join("/hub/out/video")
        sender = await self.join("/hub/in/video")
        for i in range(3):
            a.sendMessage(f"reading {i}".encode(), isBinary=False)
            sender.sendMessage(bytes(1000), isBinary=True)
        for _ in range(3):
            await b.messages.get()
            await reader.messages.get()

        url = f"{self.http_url}/stats"
        dom = (await self.chromium("--dump-dom", url)).out.decode("utf-8")
        cells = _Cells()
        cells.feed(dom)
        self.assertIn("lab/cam1", cells.headings)
        self.assertIn("stream video", cells.headings)
        room = cells.rows["lab/cam1"]
        self.assertEqual(room["name"], "lab/cam1")
        self.assertEqual(room["kind"], "both")
        self.assertEqual(room["members"], "2")
        self.assertEqual(int(room["messages_in"]), 3)
        self.assertEqual(int(room["messages_out"]), 3)
        self.assertGreater(int(cells.rows["video"]["messages_out"]), 0)
        self.assertIn('data-field="members"', dom)
        # The live chart (the shared nbbridge.webpage chart.js) has a line per topic.
        self.assertIn('<polyline points="', dom)
        self.assertIn('data-series="both:lab/cam1"', dom)

        # The screenshot stays in the test's temp directory as an artifact.
        shot = os.path.abspath(os.path.join(self.mktemp() + "-stats.png"))
        await self.chromium(f"--screenshot={shot}", url)
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertGreater(os.path.getsize(shot), 10_000)

    async def test_page_offers_sign_in_and_shows_totals_only(self) -> None:
        await self.start_hub()
        for _ in range(2):
            await self.join("/hub/lab/private-name")
        dom = (await self.chromium("--dump-dom", f"{self.http_url}/stats")).out.decode("utf-8")
        cells = _Cells()
        cells.feed(dom)
        self.assertEqual(cells.rows, {})
        self.assertNotIn("lab/private-name", dom)
        self.assertNotIn("127.0.0.1", dom)
        self.assertRegex(dom, r'<form id="sign-in" method="post" action="stats/login">')
        self.assertRegex(dom, r'<form id="sign-out" [^>]*hidden')
        self.assertIn("totals only", dom)
        self.assertRegex(
            dom,
            r'data-field="members"><div class="label">connections</div>'
            r'<div class="value">2</div>',
        )
