"""Integration: hub topics span relays that share a real redis-server.

Two (or three) relays run in this process, each with its own Redis connections (as separate
relay processes would have), each on its own port; clients are real WebSockets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.client import HTTPConnectionPool

from nbbridge.hub import HubRuntime, mount_hub
from nbbridge.hub._core import Member
from nbbridge.hub._routes import TopicKind
from nbbridge.relay._auth import Authority
from nbbridge.relay._config import parse_config
from nbbridge.relay._core import Relay
from nbbridge.relay._service import RelayService
from nbbridge.relay.tap import SECTIONS
from nbbridge.store import Backend, open_store
from tests._cleanup import add_async_cleanup
from tests._redis import RedisServer, start_redis

from ..relay._harness import RelayTestCase
from ..relay._ws import Connector, TestClient
from ._harness import collect, message, seq_of
from ._schema import DOCUMENT, check
from .test_slow import SIZE, Pump

CAP = 1024 * 1024


class HubNode:
    """One relay with its hub, on its own port and its own Redis connections."""

    def __init__(self, connector: Connector, runtime: HubRuntime, backend: Backend) -> None:
        self.connector = connector
        self.runtime = runtime
        self.backend = backend

    @property
    def hub(self) -> Any:
        return self.runtime.hub

    @property
    def bridge(self) -> Any:
        return self.runtime.bridge

    async def join(self, path: str) -> TestClient:
        return await self.connector.connect(path, None)

    def when(self, event: str, predicate: Callable[[Member], bool]) -> Deferred[Member]:
        d: Deferred[Member] = Deferred()

        def observe(name: str, member: Member) -> None:
            if name == event and not d.called and predicate(member):
                remove()
                d.callback(member)

        remove = self.hub.add_observer(observe)
        return d


class ClusterHubTests(RelayTestCase):
    timeout = 120

    async def node(self, redis: RedisServer, hub: dict[str, Any] | None = None) -> HubNode:
        config = parse_config({"hub": hub or {}}, "test.toml", SECTIONS)
        hub_config = config.sections["hub"]
        backend = open_store(redis.url, reactor=reactor)
        self.addCleanup(backend.close)
        await backend.when_connected()
        relay = Relay(Authority(config), config.limits, reactor)
        service = RelayService(
            relay,
            serverFromString(reactor, "tcp:0:interface=127.0.0.1"),
            reactor=reactor,
            secure=False,
            mounts={
                "hub": lambda root, core, r: mount_hub(root, core, r, hub_config, bus=backend.bus)
            },
        )
        service.startService()
        port = await service.when_listening()
        connector = Connector(reactor, port.getHost().port, None)

        async def stop() -> None:
            await service.stopService()
            await connector.all_lost()

        add_async_cleanup(self, stop)
        runtime = service.connections.wrappedFactory.extensions["hub"]
        return HubNode(connector, runtime, backend)

    async def subscribed(self, node: HubNode, path: str, kind: TopicKind, topic: str) -> Any:
        """A member on PATH of NODE, once NODE's relay hears the topic from the others."""
        client = await node.join(path)
        await _until(lambda: (kind, topic) in node.bridge.subscribed())
        # `subscribed` lists a subscription being made too: wait until it is made.
        while node.bridge._subscriptions.get((kind, topic)) is None:
            await _turn()
        return client

    async def test_two_way_topic_spans_relays(self) -> None:
        redis = await start_redis(self)
        a, b = await self.node(redis), await self.node(redis)
        alice = await self.subscribed(a, "/hub/room", TopicKind.BOTH, "room")
        alice2 = await self.subscribed(a, "/hub/room", TopicKind.BOTH, "room")
        bob = await self.subscribed(b, "/hub/room", TopicKind.BOTH, "room")

        alice.sendMessage(b"hello from a", isBinary=True)
        self.assertEqual(await collect(bob, 1), [(b"hello from a", True)])
        self.assertEqual(await collect(alice2, 1), [(b"hello from a", True)])
        bob.sendMessage("héllo from b".encode(), isBinary=False)
        self.assertEqual(await collect(alice, 1), [("héllo from b".encode(), False)])
        self.assertEqual(await collect(alice2, 1), [("héllo from b".encode(), False)])
        # Nobody got a message twice (a's own message came back from Redis and was dropped),
        # and the sender did not hear itself: one more round shows nothing else was queued.
        alice2.sendMessage(b"last", isBinary=True)
        self.assertEqual(await collect(bob, 1), [(b"last", True)])
        self.assertEqual(await collect(alice, 1), [(b"last", True)])
        for client in (alice, alice2, bob):
            self.assertEqual(len(client.messages.pending), 0)
        # Counted where they happened: sent on a, delivered on b.
        self.assertEqual(a.hub.totals.messages_in, 2)
        self.assertEqual(b.hub.totals.messages_in, 1)
        self.assertEqual(b.hub.totals.messages_out, 2)

    async def test_stream_sender_on_one_relay_readers_on_three(self) -> None:
        redis = await start_redis(self)
        a, b, c = [await self.node(redis) for _ in range(3)]
        sender = await a.join("/hub/in/cam")
        self.assertEqual(a.bridge.subscribed(), set(), "a relay with no readers subscribes not")
        local = await self.subscribed(a, "/hub/out/cam", TopicKind.STREAM, "cam")
        far = [
            await self.subscribed(node, "/hub/out/cam", TopicKind.STREAM, "cam") for node in (b, c)
        ]
        count = 200
        for seq in range(count):
            sender.sendMessage(message(seq, 1000), isBinary=True)
        for reader in [local, *far]:
            got = await collect(reader, count)
            self.assertEqual([seq_of(p) for p, _ in got], list(range(count)))
        self.assertEqual(a.hub.totals.messages_in, count)
        self.assertEqual((b.hub.totals.messages_in, b.hub.totals.messages_out), (0, count))

    async def test_subscribed_only_while_the_relay_has_readers(self) -> None:
        redis = await start_redis(self)
        a, b = await self.node(redis), await self.node(redis)
        reader = await self.subscribed(b, "/hub/out/cam", TopicKind.STREAM, "cam")
        channel = "nbbridge:0:hub:stream:cam"
        self.assertEqual(await redis.cli("PUBSUB", "NUMSUB", channel), f"{channel}\n1")
        left = b.when("left", lambda m: True)
        reader.close()
        await left
        self.assertEqual(b.bridge.subscribed(), set())
        # Redis forgets the subscription too (the UNSUBSCRIBE is on its way: wait for it).
        while await redis.cli("PUBSUB", "NUMSUB", channel) != f"{channel}\n0":
            await _turn(0.05)
        self.assertEqual(a.bridge.subscribed(), set())

    async def test_a_stalled_reader_on_another_relay_drops_and_slows_nobody(self) -> None:
        redis = await start_redis(self)
        settings = {"queue_bytes": CAP, "max_message_size": SIZE}
        a, b = await self.node(redis, settings), await self.node(redis, settings)
        stalled = await self.subscribed(b, "/hub/out/cam", TopicKind.STREAM, "cam")
        [stalled_member] = b.hub.members()
        fast = await self.subscribed(b, "/hub/out/cam", TopicKind.STREAM, "cam")
        sender = await a.join("/hub/in/cam")
        stalled.tcp.pauseProducing()

        pump = Pump(sender, 1, lambda: None)
        received: list[int] = []
        finished: Deferred[None] = Deferred()

        def got(payload: bytes, is_binary: bool) -> None:
            received.append(seq_of(payload))
            pump.delivered(0)
            if pump.cap is not None and len(received) == pump.cap and not finished.called:
                finished.callback(None)

        fast.on_message = got
        dropping = b.when("dropped", lambda m: m is stalled_member and m.counters.dropped >= 40)
        pump.schedule()
        await dropping
        pump.cap = pump.sent + 40
        pump.schedule()
        await finished
        self.assertEqual(received, list(range(pump.cap)))
        self.assertLessEqual(stalled_member.peak_queued_bytes, CAP)
        self.assertGreaterEqual(b.hub.totals.dropped, 40)
        self.assertEqual(a.hub.totals.dropped, 0)
        # The stalled reader reads again: the newest messages, in order, the drops missing.
        total = pump.cap
        seqs: list[int] = []
        last: Deferred[None] = Deferred()

        def late(payload: bytes, is_binary: bool) -> None:
            seqs.append(seq_of(payload))
            if seqs[-1] == total - 1 and not last.called:
                last.callback(None)

        stalled.on_message = late
        stalled.tcp.resumeProducing()
        await last
        self.assertEqual(seqs, sorted(set(seqs)))
        self.assertEqual(len(seqs) + stalled_member.counters.dropped, total)

    async def test_stats_show_the_cluster(self) -> None:
        redis = await start_redis(self)
        a, b = await self.node(redis), await self.node(redis)
        await self.subscribed(a, "/hub/room", TopicKind.BOTH, "room")
        await self.subscribed(b, "/hub/room", TopicKind.BOTH, "room")
        await self.subscribed(b, "/hub/out/cam", TopicKind.STREAM, "cam")
        heard = a.bridge.when_summary()
        b.bridge.tick()
        self.assertEqual(await heard, b.bridge.id.hex())

        document = json.loads(a.runtime.documents.get("full"))
        check(self, document, DOCUMENT)
        cluster = document["cluster"]
        self.assertEqual(cluster["relays"], 2)
        self.assertEqual(cluster["totals"]["members"], 3)
        self.assertEqual(cluster["totals"]["topics"], 2)
        self.assertEqual(
            cluster["topics"],
            [
                {"name": "cam", "kind": "stream", "members": 1, "relays": 1},
                {"name": "room", "kind": "both", "members": 2, "relays": 2},
            ],
        )
        self.assertEqual(document["totals"]["members"], 1, "the relay's own figures stay its own")
        # Anonymous readers (the totals view, over HTTP) see the cluster's totals, not its topics.
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        response = await treq.get(f"http://127.0.0.1:{a.connector.port}/stats/json", pool=pool)
        anonymous = json.loads(await response.content())
        check(self, anonymous, DOCUMENT)
        self.assertEqual(anonymous["view"], "totals")
        self.assertEqual(anonymous["cluster"]["relays"], 2)
        self.assertEqual(anonymous["cluster"]["totals"]["members"], 3)
        self.assertEqual(anonymous["cluster"]["topics"], [])


async def _turn(seconds: float = 0) -> None:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await _turn()
