"""Integration: /stats/json, the /stats/ws stream, the page's files, and /metrics."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from nbbridge import __version__
from nbbridge.contract import control_path, link_path
from nbbridge.hub import HubCloseCode
from nbbridge.relay import hash_token
from nbbridge.relay._config import parse_config
from nbbridge.relay.tap import SECTIONS

from ..relay._harness import AGENT_TOKEN, CLIENT_TOKEN
from ._harness import HubTestCase, collect
from ._schema import DOCUMENT, check

STATS_TOKEN = "stats-token-0123456789"


BEARER = {"Authorization": f"Bearer {STATS_TOKEN}"}
WITH_TOKEN = {"stats_token_sha256": hash_token(STATS_TOKEN)}


class StatsDocumentTests(HubTestCase):
    async def traffic(self) -> None:
        a, b = await self.join("/hub/lab/x"), await self.join("/hub/lab/x")
        reader = await self.join("/hub/out/cam")
        sender = await self.join("/hub/in/cam")
        a.sendMessage(b"hello", isBinary=False)
        sender.sendMessage(b"\x00" * 100, isBinary=True)
        reader.sendMessage(b"ignored", isBinary=True)
        await b.messages.get()
        await reader.messages.get()

    @property
    def documents(self) -> Any:
        return self.service.connections.wrappedFactory.extensions["hub"].documents

    async def test_json_document(self) -> None:
        await self.start_hub(WITH_TOKEN)
        await self.traffic()
        code, headers, body = await self.http_get("/stats/json", BEARER)
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], ["application/json"])
        doc = json.loads(body)
        check(self, doc, DOCUMENT)
        self.assertEqual(doc["type"], "nbbridge-hub-stats")
        self.assertEqual(doc["view"], "full")
        self.assertEqual(doc["version"], __version__)
        self.assertEqual(doc["interval"], 5.0)
        self.assertEqual((doc["totals"]["topics"], doc["totals"]["members"]), (2, 4))
        topics = {(t["kind"], t["name"]): t for t in doc["topics"]}
        room, stream = topics["both", "lab/x"], topics["stream", "cam"]
        self.assertEqual((room["messages_in"], room["messages_out"]), (1, 1))
        self.assertEqual((stream["senders"], stream["readers"], stream["ignored"]), (1, 1, 1))
        self.assertEqual(stream["bytes_out"], 100)
        routes = sorted(c["route"] for c in stream["connections"])
        self.assertEqual(routes, ["/hub/in/cam", "/hub/out/cam"])
        for connection in room["connections"]:
            self.assertRegex(connection["remote"], r"^127\.0\.0\.1:\d+$")
            self.assertEqual(connection["role"], "both")
        self.assertEqual(doc["tunnel"]["agents_online"], 0)

    async def test_stream(self) -> None:
        clock = Clock()
        await self.start_hub({"stats_interval": 0.05, "rate_window": 0.5, **WITH_TOKEN}, clock)
        viewer = await self.join("/stats/ws", STATS_TOKEN)
        payload, is_binary = await viewer.messages.get()
        self.assertFalse(is_binary)
        first = json.loads(payload)
        check(self, first, DOCUMENT)
        self.assertEqual(first["topics"], [])
        self.assertEqual(first["interval"], 0.05)

        await self.traffic()
        # A document every interval: step the hub's time (past one interval and one rate
        # sample each step, so one document per step) until one shows the traffic and a rate.
        for _ in range(20):
            clock.advance(0.2)
            payload, _ = await viewer.messages.get()
            doc = json.loads(payload)
            check(self, doc, DOCUMENT)
            totals = doc["totals"]
            if totals["messages_in"] == 3 and totals["rates"]["messages_in"] > 0:
                break
        else:
            self.fail(f"no stats document showed the traffic: {totals}")
        self.assertGreater(doc["time"], first["time"])
        self.assertEqual(totals["ignored"], 1)
        self.assertEqual(len(doc["topics"]), 2)

    async def test_stream_of_documents_over_4_kib(self) -> None:
        # Issue 16: the 4 KiB limit on what viewers send was applied to what they were sent;
        # a handful of members made the document bigger, and no viewer got anything.
        clock = Clock()
        await self.start_hub({"stats_interval": 1.0, **WITH_TOKEN}, clock)
        for i in range(12):
            await self.join(f"/hub/lab/instrument-with-a-long-name-{i:03d}")
        viewers = [await self.join("/stats/ws", STATS_TOKEN) for _ in range(3)]
        for viewer in viewers:
            payload, _ = await viewer.messages.get()
            self.assertGreater(len(payload), 4096)
            self.assertEqual(json.loads(payload)["totals"]["members"], 12)
        await self.join("/hub/lab/one-more")
        clock.advance(1.0)
        for viewer in viewers:
            payload, _ = await viewer.messages.get()
            self.assertEqual(json.loads(payload)["totals"]["members"], 13)

    async def test_one_failing_viewer_stops_no_other(self) -> None:
        clock = Clock()
        await self.start_hub({"stats_interval": 1.0, **WITH_TOKEN}, clock)
        viewers = [await self.join("/stats/ws", STATS_TOKEN) for _ in range(3)]
        for viewer in viewers:
            await viewer.messages.get()
        stream = self.service.connections.wrappedFactory.extensions["hub"].stream
        relay_side = sorted(stream.subscribers, key=lambda p: p.remote)

        def broken(document: Any) -> None:
            raise RuntimeError("this viewer's connection broke")

        relay_side[0].push = broken
        failing = relay_side[0].remote
        clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        got = []
        for viewer in viewers:
            local = viewer.transport.getHost()
            if f"{local.host}:{local.port}" == failing:
                await viewer.lost
            else:
                got.append(json.loads((await viewer.messages.get())[0]))
        self.assertEqual(len(got), 2)
        self.assertNotIn(relay_side[0], stream.subscribers)
        # The next interval still reaches the others.
        clock.advance(1.0)
        for viewer in viewers:
            if viewer.lost.called:
                continue
            check(self, json.loads((await viewer.messages.get())[0]), DOCUMENT)

    async def test_document_is_built_once_per_interval(self) -> None:
        clock = Clock()
        await self.start_hub({"stats_interval": 5.0, **WITH_TOKEN}, clock)
        await self.join("/hub/room")
        bodies = [(await self.http_get("/stats/json", BEARER))[2] for _ in range(3)]
        # A member joining within the interval shows only in the next interval's document.
        await self.join("/hub/room")
        bodies.append((await self.http_get("/stats/json", BEARER))[2])
        anonymous = json.loads((await self.http_get("/stats/json"))[2])
        self.assertEqual(len(set(bodies)), 1)
        self.assertEqual(json.loads(bodies[0])["totals"]["members"], 1)
        self.assertEqual(anonymous["totals"]["members"], 1)
        self.assertEqual(self.documents.builds, 1)
        clock.advance(5.0)
        doc = json.loads((await self.http_get("/stats/json", BEARER))[2])
        self.assertEqual(doc["totals"]["members"], 2)
        self.assertEqual(self.documents.builds, 2)

    async def test_request_rate(self) -> None:
        """/stats and /metrics share one request rate; beyond it, 429 names the limit."""
        clock = Clock()
        await self.start_hub({"stats_requests_per_second": 2, **WITH_TOKEN}, clock)
        codes = [(await self.http_get(path, BEARER))[0] for path in ("/stats/json", "/metrics")]
        self.assertEqual(codes, [200, 200])
        code, _headers, body = await self.http_get("/stats/json", BEARER)
        self.assertEqual(code, 429)
        self.assertIn(b"stats_requests_per_second = 2", body)
        self.assertEqual((await self.http_get("/metrics"))[0], 429)
        clock.advance(1.0)
        self.assertEqual((await self.http_get("/stats/json", BEARER))[0], 200)

    async def test_page_and_files(self) -> None:
        await self.start_hub()
        code, headers, body = await self.http_get("/stats")
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], ["text/html; charset=utf-8"])
        self.assertIn(b'src="stats/app.js"', body)
        self.assertIn(b'action="stats/login"', body)
        self.assertIn("default-src 'none'", headers["content-security-policy"][0])
        self.assertIn("form-action 'self'", headers["content-security-policy"][0])
        self.assertNotIn(b"http://", body.replace(b"http://www.w3.org", b""))
        code, headers, body = await self.http_get("/stats/app.js")
        self.assertEqual((code, headers["content-type"]), (200, ["text/javascript; charset=utf-8"]))
        self.assertIn(b"stats/json", body)
        self.assertNotIn(b"Authorization", body)
        code, headers, _ = await self.http_get("/stats/app.css")
        self.assertEqual((code, headers["content-type"]), (200, ["text/css; charset=utf-8"]))
        code, headers, _ = await self.http_get("/stats/")
        self.assertEqual((code, headers["location"]), (302, ["../stats"]))
        code, _, _ = await self.http_get("/stats/nothing")
        self.assertEqual(code, 404)


class StatsAccessTests(HubTestCase):
    """Issue 16: anonymous stats named protected topics and every member's address."""

    async def members(self) -> None:
        await self.join("/hub/secret/lab", "lab-token-0123456789")
        await self.join("/hub/out/open-cam")

    async def start(self, **hub: Any) -> None:
        await self.start_hub(
            {
                "tokens": {"lab": {"token_sha256": hash_token("lab-token-0123456789")}},
                "access": [{"topics": "secret/*", "send": ["lab"], "read": ["lab"]}],
                **hub,
            }
        )
        await self.members()

    def assert_no_names(self, body: bytes) -> None:
        for secret in (b"secret/lab", b"open-cam", b"127.0.0.1"):
            self.assertNotIn(secret, body)

    async def test_anonymous_sees_totals_only_by_default(self) -> None:
        await self.start()
        code, _, body = await self.http_get("/stats/json")
        self.assertEqual(code, 200)
        doc = json.loads(body)
        check(self, doc, DOCUMENT)
        self.assertEqual((doc["view"], doc["topics"]), ("totals", []))
        self.assertEqual((doc["totals"]["members"], doc["totals"]["topics"]), (2, 2))
        self.assert_no_names(body)

        code, _, body = await self.http_get("/metrics")
        self.assertEqual(code, 200)
        self.assert_no_names(body)
        m = metrics(body)
        self.assertNotIn("nbbridge_hub_topic_members", m)
        self.assertEqual(m["nbbridge_hub_members"][(("role", "both"),)], 1)

        viewer = await self.join("/stats/ws")
        payload, _ = await viewer.messages.get()
        self.assertEqual(json.loads(payload)["view"], "totals")
        self.assert_no_names(payload)

    async def test_token_in_a_header_sees_everything(self) -> None:
        await self.start(**WITH_TOKEN)
        code, _, body = await self.http_get("/stats/json", BEARER)
        self.assertEqual(code, 200)
        names = sorted(t["name"] for t in json.loads(body)["topics"])
        self.assertEqual(names, ["open-cam", "secret/lab"])
        self.assertIn(b"127.0.0.1", body)
        code, _, body = await self.http_get("/metrics", BEARER)
        self.assertEqual(code, 200)
        self.assertIn(b'topic="secret/lab"', body)
        viewer = await self.join("/stats/ws", STATS_TOKEN)
        self.assertEqual(len(json.loads((await viewer.messages.get())[0])["topics"]), 2)
        # A wrong token is no better than none.
        code, _, body = await self.http_get("/stats/json", {"Authorization": "Bearer wrong"})
        self.assertEqual(json.loads(body)["view"], "totals")

    async def test_stats_anonymous_none(self) -> None:
        await self.start(stats_anonymous="none", **WITH_TOKEN)
        for path in ("/stats/json", "/metrics"):
            code, _, body = await self.http_get(path)
            self.assertEqual(code, 401, path)
            self.assertIn(b"stats token", body)
            code, _, _ = await self.http_get(path, BEARER)
            self.assertEqual(code, 200, path)
        # The page itself holds no figures: it loads, and offers its sign-in form.
        code, _, _ = await self.http_get("/stats")
        self.assertEqual(code, 200)
        viewer = await self.join("/stats/ws")
        code, reason = await viewer.closed
        self.assertEqual((code, reason), (HubCloseCode.BAD_TOKEN, "the stats need the stats token"))
        viewer = await self.join("/stats/ws", STATS_TOKEN)
        check(self, json.loads((await viewer.messages.get())[0]), DOCUMENT)

    async def test_tokens_in_urls_are_refused(self) -> None:
        await self.start(**WITH_TOKEN)
        for path in ("/stats/json", "/metrics"):
            code, _, body = await self.http_get(f"{path}?token={STATS_TOKEN}")
            self.assertEqual(code, 400, path)
            self.assertIn(b"tokens in URLs are not accepted", body)
            self.assertNotIn(STATS_TOKEN.encode(), body)
        # An old /stats?token= link: back to the clean URL, no cookie, no figures.
        code, headers, _ = await self.http_get(f"/stats?token={STATS_TOKEN}")
        self.assertEqual((code, headers["location"]), (303, ["stats"]))
        self.assertNotIn("set-cookie", headers)
        viewer = await self.join(f"/stats/ws?token={STATS_TOKEN}")
        self.assertEqual(json.loads((await viewer.messages.get())[0])["view"], "totals")

    async def test_sign_in_sets_a_cookie_for_the_page(self) -> None:
        await self.start(**WITH_TOKEN)
        code, headers, _ = await self.http_post("/stats/login", {"token": "not-the-token"})
        self.assertEqual((code, headers["location"]), (303, ["../stats#sign-in-refused"]))
        self.assertNotIn("set-cookie", headers)

        code, headers, _ = await self.http_post("/stats/login", {"token": STATS_TOKEN})
        self.assertEqual((code, headers["location"]), (303, ["../stats"]))
        [cookie] = headers["set-cookie"]
        attributes = [a.strip() for a in cookie.split(";")]
        self.assertEqual(attributes[0], f"nbbridge_stats={STATS_TOKEN}")
        self.assertEqual(sorted(attributes[1:]), ["HttpOnly", "Path=/stats", "SameSite=Strict"])
        jar = {"Cookie": attributes[0]}
        code, _, body = await self.http_get("/stats/json", jar)
        self.assertEqual(json.loads(body)["view"], "full")
        self.assertIn(b"secret/lab", body)
        viewer = await self.join_with("/stats/ws", jar)
        self.assertEqual(json.loads((await viewer.messages.get())[0])["view"], "full")
        code, headers, _ = await self.http_post("/stats/logout", {})
        self.assertEqual(code, 303)
        self.assertIn("Max-Age=0", headers["set-cookie"][0])
        self.assertEqual((await self.http_get("/stats/login"))[0], 405)


def metrics(body: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}, parsed by prometheus_client's own parser."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found


class MetricsTests(HubTestCase):
    async def start(self) -> None:
        config = parse_config(
            {
                "agents": {"gpu": {"token_sha256": hash_token(AGENT_TOKEN)}},
                "clients": {"laptop": {"token_sha256": hash_token(CLIENT_TOKEN), "agents": ["*"]}},
                "hub": WITH_TOKEN,
            },
            "test.toml",
            SECTIONS,
        )
        await self.start_relay(config)
        self.hub = self.service.connections.wrappedFactory.extensions["hub"].hub

    async def scrape(self) -> dict[str, Any]:
        code, headers, body = await self.http_get("/metrics", BEARER)
        self.assertEqual(code, 200)
        self.assertTrue(headers["content-type"][0].startswith("text/plain; version="))
        return metrics(body)

    async def test_hub_and_tunnel(self) -> None:
        await self.start()
        readers = [await self.join("/hub/out/cam") for _ in range(2)]
        sender = await self.join("/hub/in/cam")
        a, b = await self.join("/hub/room"), await self.join("/hub/room")
        sender.sendMessage(b"x" * 10, isBinary=True)
        a.sendMessage(b"y" * 3, isBinary=False)
        readers[0].sendMessage(b"z" * 7, isBinary=True)
        for reader in readers:
            await collect(reader, 1)
        await b.messages.get()
        await self.connector.connect("/hub/bad%20name")

        control = await self.connector.connect(control_path("gpu"), AGENT_TOKEN)
        link = await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        await control.messages.get()  # the dial, never answered
        before = await self.scrape()
        self.assertEqual(before["nbbridge_relay_agents_online"][()], 1)
        self.assertEqual(before["nbbridge_relay_pending_dials"][()], 1)
        self.assertEqual(before["nbbridge_relay_dial_failures_total"][()], 0)
        control.sendClose(1000)
        await link.closed

        m = await self.scrape()
        self.assertEqual(
            m["nbbridge_hub_topics"], {(("kind", "both"),): 1, (("kind", "stream"),): 1}
        )
        self.assertEqual(
            m["nbbridge_hub_members"],
            {(("role", "both"),): 2, (("role", "in"),): 1, (("role", "out"),): 2},
        )
        self.assertEqual(m["nbbridge_hub_received_messages_total"][()], 3)
        self.assertEqual(m["nbbridge_hub_received_bytes_total"][()], 20)
        self.assertEqual(m["nbbridge_hub_delivered_messages_total"][()], 3)
        self.assertEqual(m["nbbridge_hub_delivered_bytes_total"][()], 23)
        dropped = m["nbbridge_hub_dropped_messages_total"]
        self.assertEqual(dropped[(("reason", "out_sender"),)], 1)
        self.assertEqual(dropped[(("reason", "slow_receiver"),)], 0)
        self.assertEqual(m["nbbridge_hub_dropped_bytes_total"][(("reason", "out_sender"),)], 7)
        self.assertEqual(m["nbbridge_hub_refused_connections_total"][(("reason", "bad_topic"),)], 1)
        self.assertEqual(m["nbbridge_hub_queued_bytes"][()], 0)
        cam = (("kind", "stream"), ("topic", "cam"))
        self.assertEqual(m["nbbridge_hub_topic_members"][cam], 3)
        self.assertEqual(m["nbbridge_hub_topic_delivered_messages_total"][cam], 2)
        self.assertEqual(m["nbbridge_hub_topic_received_bytes_total"][cam], 17)
        self.assertEqual(m["nbbridge_relay_agents_online"][()], 0)
        self.assertEqual(m["nbbridge_relay_links"][()], 0)
        self.assertEqual(m["nbbridge_relay_pending_dials"][()], 0)
        self.assertEqual(m["nbbridge_relay_dial_failures_total"][()], 1)
        self.assertIn("nbbridge_relay_link_bytes_total", m)
        self.assertGreater(m["process_resident_memory_bytes"][()], 0)

    async def test_openmetrics(self) -> None:
        await self.start()
        code, headers, body = await self.http_get(
            "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0", **BEARER}
        )
        self.assertEqual(code, 200)
        self.assertTrue(headers["content-type"][0].startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    async def test_registries_are_per_relay(self) -> None:
        from prometheus_client import REGISTRY

        await self.start()
        names = {m.name for m in REGISTRY.collect()}
        self.assertFalse(any(n.startswith("nbbridge_") for n in names))
