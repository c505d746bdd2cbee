"""Integration: topics N:N and streams 1:N through a real relay, with Autobahn clients."""

from __future__ import annotations

from nbbridge.hub import HubCloseCode

from ._harness import HubTestCase, OverTLS, collect


class TwoWayTests(HubTestCase):
    """`/hub/<topic>`: each message reaches every other member, type preserved, no echo."""

    async def test_three_members_text_and_binary(self) -> None:
        await self.start_hub()
        a, b, c = [await self.join("/hub/lab/room") for _ in range(3)]
        a.sendMessage("héllo from a".encode(), isBinary=False)
        b.sendMessage(b"\x00\xff binary from b", isBinary=True)
        c.sendMessage(b"", isBinary=True)
        c.sendMessage(b"text from c", isBinary=False)

        # Each sender's messages keep their order; different senders may interleave.
        got_a = await collect(a, 3)
        got_b = await collect(b, 3)
        got_c = await collect(c, 2)
        from_c = [(b"", True), (b"text from c", False)]
        self.assertEqual([m for m in got_a if m in from_c], from_c)
        self.assertEqual(sorted(got_a), sorted([(b"\x00\xff binary from b", True), *from_c]))
        self.assertEqual([m for m in got_b if m in from_c], from_c)
        self.assertEqual(sorted(got_b), sorted([("héllo from a".encode(), False), *from_c]))
        self.assertEqual(
            sorted(got_c),
            sorted([("héllo from a".encode(), False), (b"\x00\xff binary from b", True)]),
        )

        # Nothing else arrives: a marker from a reaches b and c right after, nothing echoed.
        a.sendMessage(b"marker", isBinary=True)
        self.assertEqual(await b.messages.get(), (b"marker", True))
        self.assertEqual(await c.messages.get(), (b"marker", True))
        self.assertEqual(len(a.messages.pending), 0)

        [topic] = self.hub.topics.values()
        self.assertEqual(topic.counters.messages_in, 5)
        self.assertEqual(topic.counters.messages_out, 10)
        self.assertEqual(topic.counters.dropped, 0)

    async def test_topics_are_isolated(self) -> None:
        await self.start_hub()
        x1, x2 = await self.join("/hub/x"), await self.join("/hub/x")
        y1, y2 = await self.join("/hub/y"), await self.join("/hub/y")
        sx = await self.join("/hub/out/x")
        sin = await self.join("/hub/in/x")
        x1.sendMessage(b"for x", isBinary=True)
        y1.sendMessage(b"for y", isBinary=True)
        sin.sendMessage(b"for stream x", isBinary=True)
        self.assertEqual(await x2.messages.get(), (b"for x", True))
        self.assertEqual(await y2.messages.get(), (b"for y", True))
        self.assertEqual(await sx.messages.get(), (b"for stream x", True))
        # A second round proves nothing crossed over: each gets exactly its own next message.
        x2.sendMessage(b"x again", isBinary=False)
        y2.sendMessage(b"y again", isBinary=False)
        self.assertEqual(await x1.messages.get(), (b"x again", False))
        self.assertEqual(await y1.messages.get(), (b"y again", False))
        for client in (x1, x2, y1, y2, sx, sin):
            self.assertEqual(len(client.messages.pending), 0)
        self.assertEqual(len(self.hub.topics), 3)

    async def test_topic_exists_while_it_has_members(self) -> None:
        await self.start_hub()
        a = await self.join("/hub/t")
        b = await self.join("/hub/t")
        self.assertEqual([t.name for t in self.hub.topics.values()], ["t"])
        left = self.when("left")
        a.sendClose(1000)
        await left
        self.assertEqual(len(self.hub.topics), 1)
        left = self.when("left")
        b.sendClose(1000)
        await left
        self.assertEqual(self.hub.topics, {})


class StreamTests(HubTestCase):
    """`/hub/in/<topic>` -> `/hub/out/<topic>`: 1:N, and what readers send is dropped."""

    async def test_one_to_many(self) -> None:
        await self.start_hub()
        readers = [await self.join("/hub/out/cam") for _ in range(3)]
        sender = await self.join("/hub/in/cam")
        sender.sendMessage(b"\x89PNG frame", isBinary=True)
        sender.sendMessage(b'{"t": 1}', isBinary=False)
        for reader in readers:
            self.assertEqual(
                await collect(reader, 2), [(b"\x89PNG frame", True), (b'{"t": 1}', False)]
            )
        self.assertEqual(len(sender.messages.pending), 0)

    async def test_out_senders_are_dropped_and_counted(self) -> None:
        await self.start_hub()
        r1, r2 = await self.join("/hub/out/cam"), await self.join("/hub/out/cam")
        sender = await self.join("/hub/in/cam")
        ignored = self.when("ignored")
        r1.sendMessage(b"not for anyone", isBinary=True)
        member = await ignored
        sender.sendMessage(b"frame", isBinary=True)
        # r2 gets the frame and nothing before it: r1's message went nowhere.
        self.assertEqual(await r2.messages.get(), (b"frame", True))
        self.assertEqual(await r1.messages.get(), (b"frame", True))
        self.assertEqual(len(sender.messages.pending), 0)
        self.assertEqual(member.counters.ignored, 1)
        self.assertEqual(member.counters.ignored_bytes, 14)
        self.assertEqual(self.hub.totals.ignored, 1)
        [topic] = self.hub.topics.values()
        self.assertEqual((topic.counters.ignored, topic.counters.messages_out), (1, 2))

    async def test_stream_and_topic_of_the_same_name_never_meet(self) -> None:
        await self.start_hub()
        two_way = await self.join("/hub/cam")
        other = await self.join("/hub/cam")
        reader = await self.join("/hub/out/cam")
        sender = await self.join("/hub/in/cam")
        two_way.sendMessage(b"two-way", isBinary=True)
        sender.sendMessage(b"stream", isBinary=True)
        self.assertEqual(await other.messages.get(), (b"two-way", True))
        self.assertEqual(await reader.messages.get(), (b"stream", True))
        self.assertEqual(len(reader.messages.pending), 0)
        self.assertEqual(len(other.messages.pending), 0)


class TLSStreamTests(OverTLS, StreamTests):
    """Streams over wss://."""


class RouteTests(HubTestCase):
    """Bad names and big messages get clear close codes; the prefix is configurable."""

    async def test_bad_topic_names(self) -> None:
        await self.start_hub()
        cases = {
            "/hub/": "empty topic name",
            "/hub/a//b": "empty segment",
            "/hub/in/": "empty topic name",
            "/hub/out": "missing topic after 'out/'",
            "/hub/a%20b": "topic names use only",
            "/hub/../x": "'.' and '..'",
            "/hub/" + "x" * 129: "longer than 128",
            "/hub/%C3%A9": "topic names use only",
            "/hub/%FF": "not UTF-8",
        }
        for path, reason in cases.items():
            client = await self.join(path)
            code, text = await client.closed
            self.assertEqual(code, HubCloseCode.BAD_TOPIC, path)
            self.assertIn(reason, text, path)
        self.assertEqual(self.hub.refused["bad_topic"], len(cases))
        self.assertEqual(self.hub.topics, {})

    async def test_longest_name_is_fine(self) -> None:
        await self.start_hub()
        name = "a/" + "b" * 126
        a, b = await self.join("/hub/" + name), await self.join("/hub/" + name)
        a.sendMessage(b"ok", isBinary=False)
        self.assertEqual(await b.messages.get(), (b"ok", False))

    async def test_configured_prefix(self) -> None:
        await self.start_hub({"prefix": "/lab/streams"})
        reader = await self.join("/lab/streams/out/cam")
        sender = await self.join("/lab/streams/in/cam")
        sender.sendMessage(b"frame", isBinary=True)
        self.assertEqual(await reader.messages.get(), (b"frame", True))
        [member] = self.member("/lab/streams/out/cam")
        self.assertEqual(member.route.topic, "cam")
        code, _, _ = await self.http_get("/hub/x")
        self.assertEqual(code, 404)

    async def test_message_too_big(self) -> None:
        await self.start_hub({"max_message_size": 1024})
        a, b = await self.join("/hub/t"), await self.join("/hub/t")
        left = self.when("left")
        a.sendMessage(b"x" * 1025, isBinary=True)
        code, reason = await a.closed
        self.assertEqual(code, HubCloseCode.TOO_BIG)
        self.assertIn("1024", reason)
        await left
        # Only the sender is gone; the topic and its other member are not.
        self.assertEqual(len(self.member("/hub/t")), 1)
        self.assertEqual(len(b.messages.pending), 0)

    async def test_invalid_utf8_text_is_refused(self) -> None:
        await self.start_hub()
        a, b = await self.join("/hub/t"), await self.join("/hub/t")
        left = self.when("left")
        a.sendMessage(b"\xff\xfe", isBinary=False)
        code, _ = await a.closed
        self.assertEqual(code, 1007)
        await left
        self.assertEqual(len(self.member("/hub/t")), 1)
        self.assertEqual(len(b.messages.pending), 0)

    async def test_plain_http_on_a_topic(self) -> None:
        await self.start_hub()
        code, _, _ = await self.http_get("/hub/t")
        self.assertGreaterEqual(code, 400)
