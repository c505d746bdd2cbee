"""Faults: the relay or the agent dies; connections resume or end visibly; the tunnel comes back.

When the relay dies, client and agent resume their session on the next link (docs/resume.md):
transfers under way go on, on the same connections. When the agent dies, a transfer cut short
must never look complete: the user's program must not see a clean EOF after a truncated
stream, but a reset (or at least an error with fewer bytes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import CannotListenError

from nbbridge.client import tap as client_tap
from nbbridge.client._forward import ForwardService
from nbbridge.mux import SessionClosed

from . import _tcp
from ._harness import CLIENT, RELAY, Client, TunnelTestCase

MB = 1024 * 1024
#: A download far larger than any test lets through before the fault.
HUGE = 1024 * MB


@attrs.frozen
class InFlight:
    """A download and an upload under way through a client, with both ends' protocols."""

    down: _tcp.Peer
    source: _tcp.Source
    up: _tcp.Peer
    sink: _tcp.ReplyAfterEOF


class FaultTestCase(TunnelTestCase):
    """Services behind the agent: echo, an endless source, and a sink that answers at EOF."""

    async def serve_all(self) -> dict[str, str]:
        echo, _ = await self.serve(_tcp.Echo)
        source, self.sources = await self.serve(lambda: _tcp.Source(HUGE))
        sink, self.sinks = await self.serve(_tcp.ReplyAfterEOF)
        return {"echo": str(echo), "source": str(source), "sink": str(sink)}

    async def transfers(self, client: Client) -> InFlight:
        """Start a download and an upload, and wait until a megabyte went through each."""
        down = await self.connect(client.port("source"))
        up = await self.connect(client.port("sink"), _tcp.Peer(HUGE, seed=7))
        source = await self.sources.accepted.get()
        sink = await self.sinks.accepted.get()
        await down.wait_received(MB)
        await sink.wait_received(MB)
        return InFlight(down, source, up, sink)

    async def assert_cut(self, flows: InFlight, agent_alive: bool = True) -> None:
        """Each end of both transfers ended with an error, none with a clean close.

        When the agent process itself is killed, its kernel closes its sockets (with a FIN
        when nothing was left unread), so what the services behind it see is out of anyone's
        hands; only the user's side is checked then.
        """
        ends: list[tuple[str, _tcp.Counting]] = [
            ("user's download", flows.down),
            ("user's upload", flows.up),
        ]
        if agent_alive:
            ends += [("agent-side source", flows.source), ("agent-side sink", flows.sink)]
        for name, protocol in ends:
            reason = await protocol.lost
            self.assertFalse(
                _tcp.clean(reason), f"{name} saw a clean close after a cut transfer: {reason!r}"
            )
        self.assertLess(flows.down.received, HUGE)
        if agent_alive:
            self.assertFalse(flows.sink.eof, "the sink saw EOF: a cut upload looked complete")
        # No data past the cut was invented: what arrived is the source's stream, in order.
        self.assertEqual(flows.down.received_hash.digest(), _pattern_digest(flows.down.received))

    async def relay_gone_and_back(self, take_down: Callable[[], Awaitable[None]]) -> None:
        """The in-process relay is taken down mid-transfer and started again on its port."""
        services = await self.serve_all()
        await self.start_relay()
        await self.start_agent(services)
        client = await self.start_client(forward=["echo", "source", "sink"])
        flows = await self.transfers(client)
        port = self.relay_port

        mark = self.logs.mark()
        await take_down()

        await self.start_relay(port)
        self.assertEqual(self.relay_port, port)
        await self.wait_agent_online(since=mark)
        await self.assert_back(client, since=mark)
        await self.assert_resumed(flows)

    async def assert_resumed(self, flows: InFlight) -> None:
        """Both transfers go on, on the same connections, with the stream intact so far."""
        await flows.down.wait_received(flows.down.received + 4 * MB)
        await flows.sink.wait_received(flows.sink.received + 4 * MB)
        for protocol in (flows.down, flows.up, flows.source, flows.sink):
            self.assertFalse(protocol.lost.called, f"{protocol!r} ended across a relay restart")
        self.assertEqual(flows.down.received_hash.digest(), _pattern_digest(flows.down.received))

    async def assert_back(self, client: Client, since: int) -> None:
        """Agent and client reconnected by themselves, and new connections work."""
        # Both retry with backoff (with jitter); a slow machine may need a few rounds.
        await self.wait_link_up(since, timeout=60)
        await self.echo_once(client.port("echo"), size=2 * MB, seed=11)
        # And the next connection, on the same new link.
        await self.echo_once(client.port("echo"), size=1, seed=12)


def _pattern_digest(n: int) -> bytes:
    """The SHA-256 of the first N bytes a Source sends."""
    h = hashlib.sha256()
    offset = 0
    while offset < n:
        size = min(_tcp.CHUNK, n - offset)
        h.update(_tcp.pattern(offset, size))
        offset += size
    return h.digest()


class RelayDiesTests(FaultTestCase):
    async def test_relay_dies_in_process(self) -> None:
        """The relay's port closes and its connections drop; it comes back on the same port."""
        await self.relay_gone_and_back(self.kill_relay)

    async def test_relay_process_killed(self) -> None:
        """``twistd nbbridge-relay`` gets SIGKILL mid-transfer, and is started again."""
        services = await self.serve_all()
        relay = await self.start_relay_process()
        port = self.relay_port
        await self.start_agent(services)
        client = await self.start_client(forward=["echo", "source", "sink"])
        flows = await self.transfers(client)

        mark = self.logs.mark()
        await relay.kill()
        self.assertTrue(relay.killed(), relay.exit)

        relay = await self.start_relay_process(port)
        self.assertEqual(self.relay_port, port)
        await relay.wait_for("agent gpu online")
        await self.assert_back(client, since=mark)
        await self.assert_resumed(flows)


class AgentDiesTests(FaultTestCase):
    async def assert_agent_gone(self, client: Client, since: int) -> None:
        """The relay says the agent is offline; a new connection is closed promptly, unserved."""
        await self.logs.wait_for("agent gpu offline", RELAY, since=since)
        status = await self.status()
        self.assertEqual(status["agents_online"], 0)
        self.assertEqual(status["agents"], [])

        peer = await self.connect(client.port("echo"), _tcp.Peer(1000, seed=5))
        # The client would wait 30 s for a link that is merely down; an offline agent is
        # known at once, so the user's connection must close well before that.
        lost: Deferred[BaseException] = peer.lost
        lost.addTimeout(10, reactor)
        await lost
        self.assertEqual(peer.received, 0)
        self.assertTrue(
            self.logs.lines("agent 'gpu' is offline", CLIENT, since=since),
            "the client did not log why: " + "\n".join(self.logs.lines(namespace=CLIENT)),
        )

    async def test_agent_process_killed(self) -> None:
        services = await self.serve_all()
        await self.start_relay()
        agent = await self.start_agent_process(services)
        client = await self.start_client(forward=["echo", "source", "sink"])
        await self.echo_once(client.port("echo"))
        status = await self.status()
        self.assertEqual(status["agents_online"], 1)
        self.assertEqual([a["name"] for a in status["agents"]], ["gpu"])
        flows = await self.transfers(client)

        mark = self.logs.mark()
        await agent.kill()
        self.assertTrue(agent.killed(), agent.exit)
        await self.assert_cut(flows, agent_alive=False)
        await self.assert_agent_gone(client, since=mark)

    async def start_client(self, *args: Any, **kwargs: Any) -> Client:
        """A client that does not resume: an agent that dies is otherwise found out only when
        it comes back (its sessions are gone) or at the end of the grace period."""
        kwargs["extra"] = [*kwargs.get("extra", ()), "--resume-grace", "0"]
        return await super().start_client(*args, **kwargs)

    async def test_agent_stopped(self) -> None:
        """An agent stopped in-process (as by SIGTERM): same outcome for the client."""
        services = await self.serve_all()
        await self.start_relay()
        agent = await self.start_agent(services)
        client = await self.start_client(forward=["echo"])
        await self.echo_once(client.port("echo"))

        mark = self.logs.mark()
        await self.stop_agent(agent)
        await self.assert_agent_gone(client, since=mark)


class RelayRestartTests(FaultTestCase):
    """The relay is stopped as an operator would (1001 to everyone) and started again."""

    async def test_relay_restarts_gracefully(self) -> None:
        await self.relay_gone_and_back(self.stop_relay)

    async def test_client_writes_while_the_relay_closes_its_link(self) -> None:
        """The client has data for a link whose close the relay started: it is dropped quietly.

        Autobahn refuses to send once it has answered the peer's close frame (it raises
        Disconnected); that must not escape into the reactor from the secure channel's
        deferred flush, which is what would happen to any data in flight at that moment.
        """
        services = await self.serve_all()
        await self.start_relay()
        await self.start_agent(services)
        client = await self.start_client(forward=["echo"])
        await self.echo_once(client.port("echo"))
        session = await client.link.session()
        # The link's WebSocket, under the secure channel and its byte-stream adapter.
        websocket = session.transport.transport._ws  # type: ignore[union-attr]
        answer_close = websocket.onCloseFrame
        opens: list[Deferred[object]] = []

        def close_frame_arrives(*args: object) -> object:
            handled = answer_close(*args)
            # A user connects just then: the mux writes an OPEN into the closing link.
            try:
                opens.append(session.open("echo"))
            except Exception as e:
                opens.append(fail(e))
            return handled

        websocket.onCloseFrame = close_frame_arrives
        mark = self.logs.mark()
        port = self.relay_port
        await self.stop_relay()
        [opening] = opens
        # The open fails with the session, as everything on a lost link does.
        await self.assertFailure(opening, SessionClosed)
        self.assertEqual(self.flushLoggedErrors(), [])

        await self.start_relay(port)
        await self.wait_agent_online(since=mark)
        await self.assert_back(client, since=mark)


class _StopRecorder:
    """The reactor given to makeService: the real one, except that stop() is only counted.

    It says it is running, as after twistd's start-up: before that, a forward that cannot
    listen ends the start-up with SystemExit instead (tests/client/test_startup.py).
    """

    running = True

    def __init__(self, real: Any) -> None:
        self._real = real
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class ClientCannotListenTests(TunnelTestCase):
    async def test_forward_port_in_use_stops_the_given_reactor(self) -> None:
        """A forward that cannot listen stops the reactor makeService was given, not another."""
        port, _ = await self.serve(_tcp.Echo)
        stopped_global: list[bool] = []
        self.patch(reactor, "stop", lambda: stopped_global.append(True))
        given = _StopRecorder(reactor)
        options = client_tap.Options()
        args = self.client_args([], relay_url="ws://127.0.0.1:9")
        options.parseOptions([*args, "--forward", f"echo=tcp:{port}:interface=127.0.0.1"])
        service = client_tap.makeService(options, given)
        service.startService()
        self.addCleanup(service.stopService)
        [forward] = [s for s in service if isinstance(s, ForwardService)]  # type: ignore[attr-defined]
        await self.assertFailure(forward.listening, CannotListenError)
        self.flushLoggedErrors(CannotListenError)
        self.assertEqual((given.stops, stopped_global), (1, []))
