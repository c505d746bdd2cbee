"""A stream cut mid-transfer must end with a reset at the user's end, never a clean EOF.

Issue 16: a two-way stream through a forward, broken mid-transfer, gave the application on the
client side a clean end of stream (FIN) before any error. A program that only reads would take
the cut-off stream for a complete one. Whenever bytes in flight are lost (the link is lost,
the session ends, the channel is reset, the service's connection is reset rather than closed),
the user's connection must be aborted (RST), whatever is buffered or paused.

Each round opens every kind of stream at once through one client (two-way through an echo,
a download, an upload; each unpaused and with a stalled reader), cuts them all with one fault,
and checks how each user connection ended. Each fault is repeated over several rounds, since
the defect showed in some runs only.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from nbbridge._internals import NOT_ENDED, RESET, check_eof

from . import _tcp
from ._harness import CLIENT, RELAY, Client, TunnelTestCase

KB = 1024
MB = 1024 * KB
HUGE = 1024 * MB
#: Bytes a stalled reader takes before it stops reading.
STALL_AT = 256 * KB
#: Bytes each stream carries before the fault (a stalled one: up to its stall).
MOVING = 128 * KB
#: Seconds each user connection may take to end after the fault.
END_WITHIN = 20.0
#: Faults per test (``CUT_ROUNDS=...`` changes it; `make test-lowest` runs 4, on library
#: versions whose abort paths are what it checks, not nbbridge's logic at length).
ROUNDS = int(os.environ.get("CUT_ROUNDS", "10"))


class UserPeer(_tcp.Peer):
    """A user's end; an EOF is the failure looked for, so it ends the connection at once.

    (``_tcp.Peer`` closes after EOF, which waits for its endless upload to finish.)
    """

    def readConnectionLost(self) -> None:
        # Twisted's epoll reactor can report a reset as an EOF when reading resumes in the
        # batch that holds the reset (see check_eof); an application calling recv() would
        # get ECONNRESET, so that is what counts here.
        ended = check_eof(self.transport)
        if ended == NOT_ENDED:
            self.transport.startReading()  # type: ignore[union-attr]
            return
        self.eof = ended != RESET
        self.transport.abortConnection()  # type: ignore[union-attr]


class StallingPeer(UserPeer):
    """A user's end that stops reading once ``STALL_AT`` bytes have arrived (a slow reader)."""

    def __init__(self, to_send: int = 0, seed: int = 0) -> None:
        super().__init__(to_send, seed)
        self.stalled: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.received >= STALL_AT and not self.stalled.called:
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.stalled.callback(None)

    def read_again(self) -> None:
        if self.transport is not None and not self.lost.called:
            self.transport.resumeProducing()  # type: ignore[attr-defined]


@implementer(IHalfCloseableProtocol)
class Sink(_tcp.Tracked):
    """A service that reads forever; ``stall`` ones stop reading after ``STALL_AT`` bytes."""

    stall = False

    def __init__(self) -> None:
        super().__init__()
        self.eof = False

    def dataReceived(self, data: bytes) -> None:
        self.count(data)
        if self.stall and self.received >= STALL_AT:
            self.stall = False
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def read_again(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.eof = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


class StallingSink(Sink):
    stall = True


@attrs.define
class Stream:
    """One user connection under way, the kind it is, and the service's end of it."""

    kind: str
    peer: _tcp.Peer
    service: _tcp.Tracked


class CutStreamTestCase(TunnelTestCase):
    async def start_client(self, *args: Any, **kwargs: Any) -> Client:
        """A client that does not resume: these faults must end in resets. (With resumption,
        a lost link does not cut streams at all: tests/tunnel/test_resume.py.)"""
        kwargs["extra"] = [*kwargs.get("extra", ()), "--resume-grace", "0"]
        return await super().start_client(*args, **kwargs)

    timeout = 240

    async def serve_all(self) -> dict[str, str]:
        """echo (two-way), source (download), sink and slow-sink (upload)."""
        self.factories = {}
        services = {}
        for name, protocol in [
            ("echo", _tcp.Echo),
            ("source", lambda: _tcp.Source(None)),
            ("sink", Sink),
            ("slow-sink", StallingSink),
        ]:
            port, factory = await self.serve(protocol)
            self.factories[name] = factory
            services[name] = f"tcp:127.0.0.1:{port}"
        return services

    def forwards(self) -> list[str]:
        return list(self.factories)

    async def open_streams(self, client: Client, seed: int) -> list[Stream]:
        """Every kind of stream, each moving data (or stalled) before the fault."""
        plan: list[tuple[str, str, _tcp.Peer]] = [
            ("two-way", "echo", UserPeer(HUGE, seed=seed)),
            ("two-way, user stalls", "echo", StallingPeer(HUGE, seed=seed + 1)),
            ("download", "source", UserPeer()),
            ("download, user stalls", "source", StallingPeer()),
            ("upload", "sink", UserPeer(HUGE, seed=seed + 2)),
            ("upload, service stalls", "slow-sink", UserPeer(HUGE, seed=seed + 3)),
        ]
        streams = []
        for kind, service, peer in plan:
            await self.connect(client.port(service), peer)
            accepted = self.factories[service].accepted.get()
            streams.append(Stream(kind, peer, await self.within(10, kind, accepted)))
        for stream in streams:
            moving = stream.service if stream.kind.startswith("upload") else stream.peer
            await self.within(10, f"{stream.kind}: data moving", moving.wait_received(MOVING))
            if isinstance(stream.peer, StallingPeer):
                await self.within(10, f"{stream.kind}: reader stalled", stream.peer.stalled)
        return streams

    async def assert_reset(self, streams: list[Stream], why: str) -> None:
        """Each user connection ended with an error; none saw an EOF or a clean close."""
        for stream in streams:
            if isinstance(stream.peer, StallingPeer):
                stream.peer.read_again()
        for stream in streams:
            peer = stream.peer
            lost = peer.lost
            lost.addTimeout(END_WITHIN, reactor)
            try:
                reason = await lost
            except TimeoutError:
                self.fail(f"{why}, {stream.kind}: the user's connection did not end")
            self.assertFalse(
                peer.eof or _tcp.clean(reason),
                f"{why}, {stream.kind}: the user saw a clean end of stream after "
                f"{peer.received} bytes (eof={peer.eof}, {reason!r})",
            )


class RelayKilledTests(CutStreamTestCase):
    async def test_relay_killed(self) -> None:
        """The relay drops every connection (RST) mid-transfer, ROUNDS times."""
        services = await self.serve_all()
        await self.start_relay()
        port = self.relay_port
        await self.start_agent(services)
        client = await self.start_client(forward=self.forwards())
        for round in range(ROUNDS):
            streams = await self.open_streams(client, seed=10 * round)
            mark = self.logs.mark()
            await self.kill_relay()
            await self.assert_reset(streams, f"round {round}, relay killed")
            await self.start_relay(port)
            await self.wait_agent_online(since=mark)
            await self.wait_link_up(mark, timeout=60)

    async def test_relay_process_killed(self) -> None:
        """``twistd nbbridge-relay`` gets SIGKILL mid-transfer (its kernel closes its sockets)."""
        services = await self.serve_all()
        relay = await self.start_relay_process()
        port = self.relay_port
        await self.start_agent(services)
        client = await self.start_client(forward=self.forwards())
        for round in range(ROUNDS // 2):
            streams = await self.open_streams(client, seed=10 * round)
            mark = self.logs.mark()
            await relay.kill()
            await self.assert_reset(streams, f"round {round}, relay process killed")
            relay = await self.start_relay_process(port)
            await relay.wait_for("agent gpu online")
            await self.wait_link_up(mark, timeout=60)


class AgentKilledTests(CutStreamTestCase):
    async def test_agent_process_killed(self) -> None:
        """``twistd nbbridge-agent`` gets SIGKILL mid-transfer, and is started again."""
        services = await self.serve_all()
        await self.start_relay()
        client = await self.start_client(forward=self.forwards())
        agent = await self.start_agent_process(services)
        for round in range(ROUNDS // 2):
            streams = await self.open_streams(client, seed=10 * round)
            mark = self.logs.mark()
            await agent.kill()
            await self.assert_reset(streams, f"round {round}, agent killed")
            await self.logs.wait_for("agent gpu offline", RELAY, since=mark)
            await self.logs.wait_for("link to agent gpu lost", CLIENT, since=mark)
            mark = self.logs.mark()
            agent = await self.start_agent_process(services)
            # The client retries its link by itself (with backoff) until the agent is back.
            await self.wait_link_up(mark, timeout=60)


class ServiceResetTests(CutStreamTestCase):
    async def test_service_resets(self) -> None:
        """The service behind the agent resets its connection (SO_LINGER 0 close)."""
        services = await self.serve_all()
        await self.start_relay()
        await self.start_agent(services)
        client = await self.start_client(forward=self.forwards())
        for round in range(ROUNDS):
            streams = await self.open_streams(client, seed=10 * round)
            for stream in streams:
                # Twisted's abortConnection closes with SO_LINGER 0: the kernel sends a RST.
                stream.service.transport.abortConnection()  # type: ignore[union-attr]
            await self.assert_reset(streams, f"round {round}, service reset")

    async def test_user_resets(self) -> None:
        """The user resets its connection: the service's end is reset too, never closed."""
        services = await self.serve_all()
        await self.start_relay()
        await self.start_agent(services)
        client = await self.start_client(forward=self.forwards())
        for round in range(ROUNDS):
            streams = await self.open_streams(client, seed=10 * round)
            for stream in streams:
                stream.peer.transport.abortConnection()  # type: ignore[union-attr]
            for stream in streams:
                service = stream.service
                if isinstance(service, StallingSink):
                    # A reader that stopped reading learns of the reset only when it reads.
                    service.read_again()
                what = f"round {round}, user reset, {stream.kind}: the service's end"
                reason = await self.within(END_WITHIN, what, service.lost)
                self.assertFalse(
                    getattr(service, "eof", False) or _tcp.clean(reason),
                    f"round {round}, user reset, {stream.kind}: the service saw a clean close "
                    f"({reason!r})",
                )
