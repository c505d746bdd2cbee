"""Integration: [hub] access rules refuse with 4401/4403 and a clear reason; tokens never echo."""

from __future__ import annotations

from nbbridge.hub import HubCloseCode
from nbbridge.relay import hash_token

from ._harness import HubTestCase

CAMERA = "camera-token-0123456789"
VIEWER = "viewer-token-0123456789"

ACCESS = {
    "tokens": {
        "camera": {"token_sha256": hash_token(CAMERA)},
        "viewer": {"token_sha256": hash_token(VIEWER)},
    },
    "access": [
        {"topics": ["lab/*"], "send": ["camera"], "read": ["viewer", "camera"]},
        {"topics": "open-read/*", "send": ["camera"]},
    ],
}


class AccessTests(HubTestCase):
    async def refused(self, path: str, token: str | None, code: int, text: str) -> None:
        client = await self.join(path, token)
        got_code, reason = await client.closed
        self.assertEqual(got_code, code, path)
        self.assertIn(text, reason, path)
        for secret in (CAMERA, VIEWER):
            self.assertNotIn(secret, reason)

    async def test_senders_need_the_token(self) -> None:
        await self.start_hub(ACCESS)
        await self.refused("/hub/in/lab/cam", None, HubCloseCode.BAD_TOKEN, "a token is needed")
        await self.refused("/hub/in/lab/cam", "guess", HubCloseCode.BAD_TOKEN, "not recognised")
        await self.refused(
            "/hub/in/lab/cam",
            VIEWER,
            HubCloseCode.NOT_PERMITTED,
            "token 'viewer' may not send to topic 'lab/cam'",
        )
        await self.refused(
            "/hub/lab/chat", VIEWER, HubCloseCode.NOT_PERMITTED, "may not send to topic"
        )
        self.assertEqual(self.hub.refused["bad_token"], 2)
        self.assertEqual(self.hub.refused["not_permitted"], 2)
        self.assertEqual(self.hub.topics, {})

    async def test_readers_need_the_token(self) -> None:
        await self.start_hub(ACCESS)
        await self.refused("/hub/out/lab/cam", None, HubCloseCode.BAD_TOKEN, "needed to read")
        # open-read/*: reading is open, sending is not.
        reader = await self.join("/hub/out/open-read/x")
        await self.refused("/hub/in/open-read/x", None, HubCloseCode.BAD_TOKEN, "send to")
        sender = await self.join("/hub/in/open-read/x", CAMERA)
        sender.sendMessage(b"hello", isBinary=True)
        self.assertEqual(await reader.messages.get(), (b"hello", True))

    async def test_permitted_with_header_or_query(self) -> None:
        await self.start_hub(ACCESS)
        reader = await self.join("/hub/out/lab/cam", VIEWER)
        browser = await self.join(f"/hub/out/lab/cam?token={VIEWER}")
        sender = await self.join(f"/hub/in/lab/cam?token={CAMERA}")
        sender.sendMessage(b"frame", isBinary=True)
        self.assertEqual(await reader.messages.get(), (b"frame", True))
        self.assertEqual(await browser.messages.get(), (b"frame", True))
        names = sorted(m.token_name or "" for m in self.hub.members())
        self.assertEqual(names, ["camera", "viewer", "viewer"])
        # The query does not become part of the topic name.
        self.assertEqual([t.name for t in self.hub.topics.values()], ["lab/cam"])

    async def test_open_by_default(self) -> None:
        await self.start_hub()
        a = await self.join("/hub/lab/cam", "any-token-at-all")
        b = await self.join("/hub/lab/cam")
        a.sendMessage(b"x", isBinary=True)
        self.assertEqual(await b.messages.get(), (b"x", True))
