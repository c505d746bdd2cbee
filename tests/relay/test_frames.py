"""Integration: the relay's own data-frame path, on real loopback TCP.

The relay reads data frames itself and re-frames each piece for the other end: fragmented
messages, control frames between fragments and big messages must come out identical, and a
peer that breaks RFC 6455 is failed (1002), its partner told 1001, the relay's other links unharmed.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet.defer import Deferred

from nbbridge.contract import CloseCode
from nbbridge.relay._protocol import DataProtocol, LinkProtocol
from nbbridge.relay._splice import Splice
from nbbridge.wire._masking import mask_in_place
from nbbridge.wire.websocket import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    frame_header,
)

from ._harness import RelayTestCase, make_config
from ._ws import TestClient

KEY = b"\x5a\xa5\x0f\xf0"
PAYLOAD = os.urandom(60 * 1024)


def raw_frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, b0_extra: int = 0
) -> bytes:
    """A hand-built frame (masked as a client must, unless MASKED is false)."""
    key = KEY if masked else b""
    out = bytearray(frame_header(opcode, len(payload), fin=fin, key=key))
    out[0] |= b0_extra
    start = len(out)
    out += payload
    if key:
        mask_in_place(out, start, key)
    return bytes(out)


def next_pong(client: TestClient) -> Deferred[bytes]:
    """Fires with the payload of the next pong CLIENT receives."""
    pong: Deferred[bytes] = Deferred()

    def on_pong(payload: bytes) -> None:
        if not pong.called:
            pong.callback(payload)

    client.onPong = on_pong  # type: ignore[method-assign]
    return pong


def forwarded(end: Any) -> Deferred[bytes]:
    """Fires with the next frames the relay's END writes (re-framed from its partner)."""
    sent: Deferred[bytes] = Deferred()
    send = type(end).send

    def spy(frame: bytes) -> None:
        del end.send
        send(end, frame)
        sent.callback(frame)

    end.send = spy
    return sent


def same(a: bytes, b: bytes) -> bool:
    """Compare big payloads without unittest's diff of their reprs."""
    return len(a) == len(b) and hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


class FragmentTests(RelayTestCase):
    """Messages arrive whole and identical however they were fragmented, both ways."""

    async def test_fragmented_message_with_a_ping_between_fragments(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client, data = await self.link(control)
        parts = [os.urandom(1000), b"", os.urandom(70_000), os.urandom(125)]

        client.beginMessage(isBinary=True)
        client.sendMessageFrame(parts[0])
        # The relay answers a ping between fragments, and the message carries on.
        pong = next_pong(client)
        client.sendPing(b"mid-message")
        self.assertEqual(await pong, b"mid-message")
        for part in parts[1:]:
            client.sendMessageFrame(part)
        client.endMessage()
        self.assertEqual(await data.messages.get(), (b"".join(parts), True))

        # And the other way, as a text message with Autobahn's own fragmentation.
        text = "ünïcode ".encode() * 5000
        data.sendMessage(text, isBinary=False, fragmentSize=777)
        self.assertEqual(await client.messages.get(), (text, False))

    async def test_raw_fragments_split_mid_payload(self) -> None:
        """Hand-built frames, split inside payloads: pieces with offsets, pings between."""
        await self.start_relay(make_config())
        control = await self.agent()
        client, data = await self.link(control)
        [relay_data] = self.relay_side(DataProtocol)
        pong = next_pong(client)
        first = raw_frame(OP_BINARY, b"one-two-", fin=False)
        wire = [first[:5]]  # the header (2 + 4 bytes of key) cut before the key ends
        wire.append(first[5:9])  # the header's end and 3 bytes of payload
        rest = first[9:] + raw_frame(OP_PING, b"p1") + raw_frame(OP_CONTINUATION, b"", fin=False)
        third = raw_frame(OP_CONTINUATION, b"three")
        wire.append(rest + third[:8])
        wire.append(third[8:] + raw_frame(OP_BINARY, b"next"))
        for i, chunk in enumerate(wire):
            sent = forwarded(relay_data) if i else None
            client.tcp.write(chunk)
            if sent is not None:
                # The relay passed on what it had (a piece of a frame) before the rest was sent.
                await sent
        self.assertEqual(await pong, b"p1")
        self.assertEqual(await data.messages.get(), (b"one-two-three", True))
        self.assertEqual(await data.messages.get(), (b"next", True))

    async def test_five_megabytes_both_ways(self) -> None:
        await self.start_relay(make_config({"max_message_size": 8 * 1024 * 1024}))
        control = await self.agent()
        client, data = await self.link(control)
        up = os.urandom(5 * 1024 * 1024)
        down = os.urandom(5 * 1024 * 1024)
        for fragment_up, fragment_down in [(0, 0), (1024 * 1024 + 7, 65_536)]:
            client.sendMessage(up, isBinary=True, fragmentSize=fragment_up or None)
            data.sendMessage(down, isBinary=True, fragmentSize=fragment_down or None)
            got_up, binary_up = await data.messages.get()
            got_down, binary_down = await client.messages.get()
            self.assertTrue(same(got_up, up) and binary_up, fragment_up)
            self.assertTrue(same(got_down, down) and binary_down, fragment_down)
            up, down = down, up

    async def test_fragments_summing_past_the_limit(self) -> None:
        """Each fragment fits, the message does not: 4413 for the sender and its partner."""
        await self.start_relay(make_config({"max_message_size": 64 * 1024}))
        control = await self.agent()
        client, data = await self.link(control)
        client.sendMessage(b"x" * (64 * 1024 + 1), isBinary=True, fragmentSize=16 * 1024)
        code, reason = await client.closed
        self.assertEqual(code, CloseCode.TOO_BIG)
        self.assertIn("65537 bytes or more exceeds the limit of 65536", reason or "")
        code, _ = await data.closed
        self.assertEqual(code, CloseCode.TOO_BIG)
        self.assertEqual(data.messages.pending, [])


class ViolationTests(RelayTestCase):
    """A peer breaking RFC 6455 gets 1002; its partner gets 1001; other links carry on."""

    async def _check(self, bad: bytes, reason: str, *, from_agent: bool = False) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        other_client, other_data = await self.link(control)
        client, data = await self.link(control)
        offender, partner = (data, client) if from_agent else (client, data)

        offender.tcp.write(bad)
        code, why = await offender.closed
        self.assertEqual(code, 1002)
        self.assertIn(reason, why or "")
        # The partner's end is closed as onward_close says for a failed peer: going away.
        code, why = await partner.closed
        self.assertEqual((code, why), (CloseCode.GOING_AWAY, "peer connection lost"))
        await offender.lost
        await partner.lost

        # The relay's other link still carries messages both ways.
        other_client.sendMessage(b"still up", isBinary=True)
        self.assertEqual(await other_data.messages.get(), (b"still up", True))
        other_data.sendMessage(b"still down", isBinary=False)
        self.assertEqual(await other_client.messages.get(), (b"still down", False))
        self.assertEqual(self.relay.status()["links"], 1)
        self.assertEqual(len(self.relay_side(LinkProtocol)), 1)
        self.assertEqual(len(self.relay_side(DataProtocol)), 1)

    async def test_unmasked_frame_from_client(self) -> None:
        await self._check(raw_frame(OP_BINARY, b"hello", masked=False), "unmasked frame")

    async def test_unmasked_frame_from_agent(self) -> None:
        await self._check(
            raw_frame(OP_BINARY, b"hello", masked=False), "unmasked frame", from_agent=True
        )

    async def test_reserved_bits(self) -> None:
        await self._check(raw_frame(OP_BINARY, b"hello", b0_extra=0x40), "reserved bits")

    async def test_unknown_opcode(self) -> None:
        await self._check(raw_frame(3, b"hello"), "unknown opcode 3")

    async def test_unknown_control_opcode_from_agent(self) -> None:
        await self._check(raw_frame(11, b""), "unknown opcode 11", from_agent=True)

    async def test_fragmented_control_frame(self) -> None:
        await self._check(raw_frame(OP_PING, b"p", fin=False), "fragmented control frame")

    async def test_continuation_without_a_message(self) -> None:
        await self._check(raw_frame(OP_CONTINUATION, b"x"), "continuation frame with no message")

    async def test_new_message_inside_a_fragmented_one(self) -> None:
        bad = raw_frame(OP_BINARY, b"a", fin=False) + raw_frame(OP_BINARY, b"b")
        await self._check(bad, "new data message before the previous one ended")


class StalledPeerTests(RelayTestCase):
    """A client that stops reading: what the relay then does with it and with its agent."""

    async def _stall_client(
        self, limits: dict[str, Any] | None = None, client_ping_timeout: float | None = None
    ) -> tuple[Any, Any]:
        """A spliced link whose client stopped reading while its agent sent 12 MB.

        Returns once the relay holds bytes for the client it cannot deliver (and so has
        stopped reading the agent).
        """
        await self.start_relay(make_config(limits))
        control = await self.agent()
        client, data = await self.link(control)
        link_end, _ = self.spliced_ends()
        link_end.closeHandshakeTimeout = 0.5  # the relay's is 5 s; the tests need not wait
        if client_ping_timeout is not None:
            link_end.autoPingTimeout = client_ping_timeout
        full: Deferred[None] = Deferred()
        write_full_changed = Splice.write_full_changed

        def watch(splice: Splice, end: Any, is_full: bool) -> None:
            write_full_changed(splice, end, is_full)
            if end is link_end and is_full and not full.called:
                full.callback(None)

        self.patch(Splice, "write_full_changed", watch)
        client.tcp.pauseProducing()
        for _ in range(200):
            data.sendMessage(PAYLOAD, isBinary=True)
        await full
        return client, data

    async def test_violation_from_a_peer_that_does_not_read(self) -> None:
        client, data = await self._stall_client()
        client.tcp.write(raw_frame(OP_BINARY, b"x", b0_extra=0x40))  # then breaks the protocol
        code, why = await data.closed
        self.assertEqual((code, why), (CloseCode.GOING_AWAY, "peer connection lost"))
        client.tcp.abortConnection()
        await client.lost
        self.assertEqual(self.relay.status()["links"], 0)
        self.assertEqual(self.relay_side(LinkProtocol), [])

    async def test_unread_agent_is_not_dropped_for_its_pongs(self) -> None:
        # While the relay does not read the agent, the agent's pongs wait unread in the
        # socket: that must not count as a dead peer.
        received = bytearray()
        done: Deferred[None] = Deferred()

        def on_message(payload: bytes, is_binary: bool) -> None:
            received.extend(payload)
            if payload == b"last":
                done.callback(None)

        pings: Deferred[None] = Deferred()
        seen: list[bytes] = []

        # The client is slow, not dead: its own side gets a long ping timeout, so that only
        # the agent's side (pinged every second, its pongs unread) is on trial here.
        client, data = await self._stall_client(
            {"ping_interval": 1.0, "ping_timeout": 1.0}, client_ping_timeout=60.0
        )
        client.on_message = on_message
        on_ping = data.onPing

        def count(ping: bytes) -> None:
            on_ping(ping)
            seen.append(ping)
            if len(seen) == 3:
                pings.callback(None)

        data.onPing = count  # type: ignore[method-assign]
        await pings  # three pings, each one's pong unread: well past the 1 s timeout
        self.assertFalse(data.closed.called)

        data.sendMessage(b"last", isBinary=True)
        client.tcp.resumeProducing()
        await done
        self.assertEqual(bytes(received), PAYLOAD * 200 + b"last")
        self.assertEqual(self.relay.status()["links"], 1)

    async def test_two_stalled_peers_are_both_dropped(self) -> None:
        # Each end full of the other's bytes: the relay reads neither, and no pong can be
        # excused, or two dead peers would hold the link for ever.
        await self.start_relay(make_config({"ping_interval": 1.0, "ping_timeout": 1.0}))
        control = await self.agent()
        client, data = await self.link(control)
        ended: Deferred[None] = Deferred()
        end_closed = Splice.end_closed

        def watch(splice: Splice, end: Any, code: int | None, reason: str | None) -> None:
            end_closed(splice, end, code, reason)
            if not ended.called:
                ended.callback(None)

        self.patch(Splice, "end_closed", watch)
        client.tcp.pauseProducing()
        data.tcp.pauseProducing()
        for _ in range(200):
            client.sendMessage(PAYLOAD, isBinary=True)
            data.sendMessage(PAYLOAD, isBinary=True)
        await ended
        self.assertEqual(self.relay.status()["links"], 0)
        # Reading again, both see their connection gone.
        client.tcp.resumeProducing()
        data.tcp.resumeProducing()
        await client.lost
        await data.lost
