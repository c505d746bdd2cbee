"""Integration: agents register, links get dialed and spliced, on real loopback TCP."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from nbbridge._tuning import BUFFER_SIZE
from nbbridge.contract import CloseCode, control_path, data_path, link_path, parse_control_message
from nbbridge.relay._config import Limits
from nbbridge.relay._protocol import ControlProtocol

from ..transport._certs import write_server_files
from ._harness import AGENT_TOKEN, CLIENT_TOKEN, RelayTestCase, make_config, write_buffered
from ._ws import TestClient


class SpliceTests(RelayTestCase):
    """Messages go through a spliced link unchanged, both ways, in order."""

    async def test_messages_both_ways(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client, data = await self.link(control)

        big_up = os.urandom(1024 * 1024)
        big_down = os.urandom(1024 * 1024)
        client.sendMessage(b"\x00\xffhello", isBinary=True)
        client.sendMessage("héllo text".encode(), isBinary=False)
        client.sendMessage(big_up, isBinary=True)
        data.sendMessage(big_down, isBinary=True)
        data.sendMessage(b"reply", isBinary=False)
        data.sendMessage(b"", isBinary=True)

        self.assertEqual(await data.messages.get(), (b"\x00\xffhello", True))
        self.assertEqual(await data.messages.get(), ("héllo text".encode(), False))
        self.assertEqual(await data.messages.get(), (big_up, True))
        self.assertEqual(await client.messages.get(), (big_down, True))
        self.assertEqual(await client.messages.get(), (b"reply", False))
        self.assertEqual(await client.messages.get(), (b"", True))

        status = self.relay.status()
        self.assertEqual(status["links"], 1)
        self.assertEqual(status["bytes"], 2 * 1024 * 1024 + 7 + 11 + 5)

    async def test_client_close_code_reaches_agent(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client, data = await self.link(control)
        client.sendClose(4000, "bye from client")
        self.assertEqual(await data.closed, (4000, "bye from client"))
        await client.closed
        self.assertEqual(self.relay.status()["links"], 0)

    async def test_agent_normal_close_reaches_client(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client, data = await self.link(control)
        data.sendClose(1000)
        code, _ = await client.closed
        self.assertEqual(code, 1000)

    async def test_dropped_agent_means_going_away(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client, data = await self.link(control)
        data.tcp.abortConnection()
        code, _ = await client.closed
        self.assertEqual(code, CloseCode.GOING_AWAY)

    async def test_messages_sent_before_the_dial_is_answered_arrive(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client = await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        client.sendMessage(b"first", isBinary=True)
        client.sendMessage(b"second", isBinary=True)
        payload, _ = await control.messages.get()
        link_id = parse_control_message(payload).link_id
        data = await self.connector.connect(data_path("gpu", link_id), AGENT_TOKEN)
        self.assertEqual(await data.messages.get(), (b"first", True))
        self.assertEqual(await data.messages.get(), (b"second", True))

    async def test_spliced_link_outlives_control_connection(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client, data = await self.link(control)
        control.sendClose(1000)
        await control.lost
        self.assertEqual(self.relay.status()["agents_online"], 0)
        client.sendMessage(b"still here", isBinary=True)
        self.assertEqual(await data.messages.get(), (b"still here", True))
        self.assertEqual(self.relay.status()["links"], 1)

    async def test_message_too_big(self) -> None:
        await self.start_relay(make_config({"max_message_size": 64 * 1024}))
        control = await self.agent()
        client, data = await self.link(control)
        client.sendMessage(b"x" * (64 * 1024 + 1), isBinary=True)
        code, reason = await client.closed
        self.assertEqual(code, CloseCode.TOO_BIG)
        self.assertIn("65536", reason)
        code, _ = await data.closed
        self.assertEqual(code, CloseCode.TOO_BIG)

    async def test_links_per_agent_limit(self) -> None:
        await self.start_relay(make_config({"links_per_agent": 1}))
        control = await self.agent()
        await self.link(control)
        second = await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        code, reason = await second.closed
        self.assertEqual(code, CloseCode.LIMIT)
        self.assertIn("limit of 1 links", reason)

    async def test_pending_dials_limit(self) -> None:
        await self.start_relay(make_config({"pending_dials_per_agent": 1}))
        await self.agent()
        await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        second = await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        code, _ = await second.closed
        self.assertEqual(code, CloseCode.LIMIT)


@implementer(IPushProducer)
class _Sender:
    """Sends numbered messages as fast as its transport takes them, up to CAP messages."""

    def __init__(
        self, proto: TestClient, size: int, cap: int, on_pause: Callable[[], None]
    ) -> None:
        self._proto = proto
        self._size = size
        self.cap = cap
        self._on_pause = on_pause
        self.sent = 0
        self.paused = False
        proto.tcp.registerProducer(self, True)

    def message(self, seq: int) -> bytes:
        return seq.to_bytes(8, "big") + bytes([seq % 251]) * (self._size - 8)

    def pauseProducing(self) -> None:
        self.paused = True
        self._on_pause()

    def resumeProducing(self) -> None:
        self.paused = False
        reactor.callLater(0, self.run)

    def stopProducing(self) -> None:
        self.paused = True

    def run(self) -> None:
        while not self.paused and self.sent < self.cap:
            self._proto.sendMessage(self.message(self.sent), isBinary=True)
            self.sent += 1


class BackpressureTests(RelayTestCase):
    """A reader that stops makes the relay stop reading the writer; nothing piles up."""

    MESSAGE = 256 * 1024
    #: what the relay may hold for one link: a transport's high-water mark, a read, a message
    # A transport stops its reader once it holds BUFFER_SIZE; one more message may be in flight.
    BOUND = BUFFER_SIZE + 2 * 1024 * 1024
    #: messages sent after the reader reads again (64 MiB)
    MORE = 256

    async def _check_direction(self, agent_writes: bool) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client, data = await self.link(control)
        writer, reader = (data, client) if agent_writes else (client, data)
        relay_link, relay_data = self.spliced_ends()
        relay_writer = relay_data if agent_writes else relay_link

        # The reader stops reading; the writer keeps pushing whenever its transport lets it.
        reader.tcp.pauseProducing()
        stalled: Deferred[None] = Deferred()
        most_held = 0

        def on_writer_pause() -> None:
            nonlocal most_held
            most_held = max(most_held, write_buffered(relay_link) + write_buffered(relay_data))
            if relay_writer.reading_paused and not stalled.called:
                stalled.callback(None)

        sender = _Sender(writer, self.MESSAGE, cap=100_000, on_pause=on_writer_pause)
        sender.run()
        await stalled
        self.assertTrue(relay_writer.reading_paused)
        self.assertLessEqual(most_held, self.BOUND)

        # The reader reads again: everything arrives, in order, unchanged; the relay still
        # holds no more than the bound while the writer pushes 64 MiB more.
        sender.cap = total = sender.sent + self.MORE
        received = 0
        done: Deferred[None] = Deferred()

        def got(payload: bytes, is_binary: bool) -> None:
            nonlocal received
            if done.called:
                return
            if payload != sender.message(received) or not is_binary:
                done.errback(AssertionError(f"message {received} differs"))
                return
            received += 1
            if received == total:
                done.callback(None)

        self.assertEqual(len(reader.messages.pending), 0)
        reader.on_message = got
        reader.tcp.resumeProducing()
        sender.resumeProducing()
        await done
        self.assertEqual(received, total)
        self.assertLessEqual(most_held, self.BOUND)
        self.assertFalse(relay_writer.reading_paused)

    async def test_agent_to_slow_client(self) -> None:
        await self._check_direction(agent_writes=True)

    async def test_client_to_slow_agent(self) -> None:
        await self._check_direction(agent_writes=False)


class ControlTests(RelayTestCase):
    """The control connection: dials arrive as JSON text."""

    async def test_dial_message(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        payload, is_binary = await control.messages.get()
        self.assertFalse(is_binary)
        message = json.loads(payload)
        self.assertEqual(message["op"], "dial")
        self.assertEqual(len(message["link"]), 32)
        self.assertEqual(message["url"], f"/v1/agents/gpu/data/{message['link']}")
        self.assertTrue(self.relay.is_online("gpu"))
        self.assertEqual(control_path("gpu"), "/v1/agents/gpu/control")


class TLSBackpressureTests(BackpressureTests):
    """The same, when both sides speak TLS to the relay."""

    async def start_relay(self, *args: Any, **kwargs: Any) -> Any:
        files = write_server_files(os.path.abspath(self.mktemp()))
        kwargs.update(endpoint=files.ssl_endpoint(), ca_pem=files.ca_pem)
        return await super().start_relay(*args, **kwargs)


class LifecycleTests(RelayTestCase):
    """Heartbeats find dead peers; stopping the relay closes everything and waits."""

    async def test_idle_connections_are_pinged(self) -> None:
        await self.start_relay(make_config(), limits=Limits(ping_interval=0.1, ping_timeout=5))
        control = await self.agent()
        pinged: Deferred[bytes] = Deferred()
        control.onPing = lambda payload: pinged.called or pinged.callback(payload)
        await pinged
        self.assertTrue(self.relay.is_online("gpu"))

    async def test_silent_peer_is_dropped(self) -> None:
        await self.start_relay(make_config(), limits=Limits(ping_interval=0.1, ping_timeout=0.2))
        control = await self.agent()
        self.assertEqual(len(self.relay_side(ControlProtocol)), 1)
        control.tcp.pauseProducing()  # reads no ping, so answers none
        await self.service.connections.when_idle()
        self.assertFalse(self.relay.is_online("gpu"))
        control.tcp.resumeProducing()
        code, _ = await control.closed
        self.assertEqual(code, 1006)  # dropped, as a dead peer would be

    async def test_stop_closes_everything(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client, data = await self.link(control)
        await self.service.stopService()
        self.assertEqual(self.service.connections.open_protocols(), [])
        for peer in (control, client, data):
            code, reason = await peer.closed
            self.assertEqual((code, reason), (CloseCode.GOING_AWAY, "relay shutting down"))
