"""`make cluster-demo`: three relays, Redis, HAProxy, an agent, a client and JupyterLab.

Run exactly as ``make cluster-demo`` runs it (``python -m nbbridge.demo_cluster``), every
piece a real process; the printed URL answers (through HAProxy and, usually, across two
relays); SIGTERM stops it and leaves no process and no directory behind.
"""

from __future__ import annotations

import json
import sys
import urllib.parse

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from nbbridge.demo_cluster import adapt_haproxy_config
from tests._tools import unavailable
from tests.test_demo import DemoTestCase

from ._haproxy import SHIPPED, haproxy_binary
from ._redis_tool import missing_redis


def _missing() -> str | None:
    if haproxy_binary() is None:
        return "haproxy is not installed (apt-get install haproxy)"
    return missing_redis()


class ClusterDemoTests(DemoTestCase):
    skip = unavailable(_missing())
    command = (
        sys.executable,
        "-m",
        "nbbridge.demo_cluster",
        "--haproxy-config",
        str(SHIPPED),
    )

    async def test_url_answers_and_sigterm_stops_everything(self) -> None:
        demo, url, work = await self.start_demo()
        parts = urllib.parse.urlsplit(url)
        token = urllib.parse.parse_qs(parts.query)["token"][0]
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        response = await http.get(
            f"{parts.scheme}://{parts.netloc}/api/status",
            headers={"Authorization": f"token {token}"},
        )
        self.assertEqual(response.code, 200)
        self.assertIn("started", json.loads(await treq.content(response)))
        self.assertIn("relay3", demo.tail())
        await self.stop_demo(demo, work, "TERM")


class AdaptTests(TestCase):
    def test_each_place_is_replaced(self) -> None:
        text = adapt_haproxy_config(SHIPPED.read_text(), listen_port=1, relay_ports=[2, 3, 4])
        self.assertIn("bind 127.0.0.1:1\n", text)
        self.assertNotIn("10.0.0.1:8765\n", text)
        self.assertEqual(text.count("127.0.0.1:4\n"), 2)
        with self.assertRaises(ValueError):
            adapt_haproxy_config("global\n", listen_port=1, relay_ports=[2])
