"""Two MuxSessions in memory, driven by Hypothesis through random interleavings of what
either side may do: open, write, pause and resume reading, half-close, close, reset, GOAWAY,
and deliver any prefix of the bytes in flight each way.

Invariants, after every step: each direction of each channel delivered a prefix of what was
written, in order, and all of it when the reader saw the writer's half-close; nothing was
delivered to a paused reader, and no channel buffers more than its window allows; no peer
ever reset a channel for a flow-control or protocol error. At the end, once everything is
resumed, closed and delivered: no channel id is left in either session's tables, every open
Deferred has fired, and every application saw its connection end exactly once.

Only the public API of `nbbridge.mux` is used: sessions, channels as transports and push
producers, and `SpliceFactory`/`TcpSide` for the accepting side's channel.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nbbridge.mux import Acceptor, Channel, ChannelReset, MuxSession, OpenRequest, TcpSide
from nbbridge.wire import Reason

WINDOW = 64
MAX_WINDOW = 256
SIDES = ("a", "b")


@implementer(IHalfCloseableProtocol)
class App(Protocol):
    """One end of a channel: keeps what it wrote and what it was given, and checks its calls."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.channel: Channel | None = None
        self.sent = bytearray()
        self.received = bytearray()
        self.paused = False
        self.write_closed = False
        self.read_closed = False
        self.ended: list[Failure] = []
        self.problems: list[str] = []

    def connectionMade(self) -> None:
        assert isinstance(self.transport, Channel)
        self.channel = self.transport

    def dataReceived(self, data: bytes) -> None:
        if self.paused:
            self.problems.append(f"{len(data)} bytes delivered while paused")
        if self.read_closed or self.ended:
            self.problems.append("data after the end of the stream")
        self.received += data

    def readConnectionLost(self) -> None:
        if self.read_closed:
            self.problems.append("read side closed twice")
        self.read_closed = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.ended.append(reason)
        if len(self.ended) > 1:
            self.problems.append("connectionLost twice")

    @property
    def writable(self) -> bool:
        return self.channel is not None and not self.write_closed and not self.ended


class Pipe:
    """One direction of the byte stream between the sessions, delivered in pieces at will."""

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport
        self.pending = bytearray()

    def take(self) -> bytearray:
        self.pending += self.transport.value()
        self.transport.clear()
        return self.pending


@implementer(IStreamClientEndpoint)
class AcceptingEndpoint:
    """The accepting side's service: attaches an App straight to the new channel."""

    def __init__(self, machine: MuxMachine, side: str) -> None:
        self._machine = machine
        self._side = side

    def connect(self, factory: Any) -> Deferred[IProtocol]:
        tcp = factory.buildProtocol(None)
        assert isinstance(tcp, TcpSide) and tcp.channel is not None
        app = App(self._side)
        self._machine.apps.append(app)
        tcp.channel.attach(app)
        return succeed(app)


class MuxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.apps: list[App] = []
        self.opens: list[Deferred[Channel]] = []
        self.sessions: dict[str, MuxSession] = {}
        self.pipes: dict[str, Pipe] = {}
        self.lost: set[str] = set()
        for side in SIDES:
            session = MuxSession(
                initiator=side == "a",
                acceptor=self._acceptor(side),
                window=WINDOW,
                max_window=MAX_WINDOW,
                label=side,
            )
            transport = StringTransport()
            session.makeConnection(transport)
            self.sessions[side] = session
            self.pipes[side] = Pipe(transport)

    def _acceptor(self, side: str) -> Acceptor:
        def accept(request: OpenRequest) -> IStreamClientEndpoint:
            return AcceptingEndpoint(self, side)

        return accept

    # --- helpers ---------------------------------------------------------------------------

    def _peer_app(self, app: App) -> App | None:
        """The App at the other end of APP's channel, if both ends exist."""
        if app.channel is None:
            return None
        cid = app.channel.id
        for other in self.apps:
            if other.side != app.side and other.channel is not None and other.channel.id == cid:
                return other
        return None

    def _app(self, index: int) -> App:
        """An app picked by INDEX, among those whose channel has not ended if there are any."""
        live = [app for app in self.apps if not app.ended] or self.apps
        return live[index % len(live)]

    def _deliver(self, side: str, size: int | None) -> None:
        """Send up to SIZE of the bytes SIDE wrote to the other side (all if None)."""
        other = "b" if side == "a" else "a"
        pending = self.pipes[side].take()
        n = len(pending) if size is None else min(size, len(pending))
        if n and other not in self.lost:
            chunk = bytes(pending[:n])
            del pending[:n]
            self.sessions[other].dataReceived(chunk)
        elif other in self.lost:
            pending.clear()
        if not pending and self.pipes[side].transport.disconnecting:
            self._disconnect()

    def _disconnect(self) -> None:
        """A side closed its transport and all it wrote went out: the connection ends."""
        for side in SIDES:
            if side not in self.lost:
                self.lost.add(side)
                self.sessions[side].connectionLost(Failure(ConnectionDone()))

    def _settle(self) -> None:
        for _ in range(1000):
            moved = False
            for side in SIDES:
                if self.pipes[side].take():
                    moved = True
                    self._deliver(side, None)
                elif self.pipes[side].transport.disconnecting:
                    self._deliver(side, None)
            if not moved:
                return
        raise AssertionError("the sessions never stopped talking")

    # --- rules -------------------------------------------------------------------------------

    @initialize(from_a=st.integers(0, 3), from_b=st.integers(0, 2))
    def channels_open(self, from_a: int, from_b: int) -> None:
        """Most runs start with channels open both ways, so the steps reach data and ends."""
        for side, count in (("a", from_a), ("b", from_b)):
            for _ in range(count):
                self.open(side)
        self._settle()

    @rule(side=st.sampled_from(SIDES))
    def open(self, side: str) -> None:
        d = self.sessions[side].open("app")
        self.opens.append(d)

        def opened(channel: Channel) -> None:
            app = App(side)
            self.apps.append(app)
            channel.attach(app)

        d.addCallbacks(opened, lambda f: None)

    @precondition(lambda self: self.apps)
    @rule(index=st.integers(0, 1000), data=st.binary(min_size=1, max_size=300))
    def write(self, index: int, data: bytes) -> None:
        app = self._app(index)
        if app.writable:
            assert app.channel is not None
            app.channel.write(data)
            app.sent += data

    @precondition(lambda self: self.apps)
    @rule(index=st.integers(0, 1000))
    def pause(self, index: int) -> None:
        app = self._app(index)
        if app.channel is not None and not app.ended:
            app.paused = True
            app.channel.pauseProducing()

    @precondition(lambda self: self.apps)
    @rule(index=st.integers(0, 1000))
    def resume(self, index: int) -> None:
        app = self._app(index)
        if app.channel is not None and not app.ended:
            app.paused = False
            app.channel.resumeProducing()

    @precondition(lambda self: self.apps)
    @rule(index=st.integers(0, 1000))
    def half_close(self, index: int) -> None:
        app = self._app(index)
        if app.channel is not None and not app.ended:
            app.write_closed = True
            app.channel.loseWriteConnection()

    @precondition(lambda self: self.apps)
    @rule(index=st.integers(0, 1000))
    def close(self, index: int) -> None:
        app = self._app(index)
        if app.channel is not None and not app.ended:
            app.write_closed = True
            app.channel.loseConnection()

    @precondition(lambda self: self.apps)
    @rule(index=st.integers(0, 1000))
    def reset(self, index: int) -> None:
        app = self._app(index)
        if app.channel is not None:
            app.channel.reset(Reason.ABORTED, "reset by the test")

    @rule(side=st.sampled_from(SIDES))
    def goaway(self, side: str) -> None:
        self.sessions[side].close("goaway from the test")

    @rule(side=st.sampled_from(SIDES), full=st.booleans())
    def transport_full(self, side: str, full: bool) -> None:
        """SIDE's transport fills up (or drains): the session pauses (resumes) its channels."""
        if full:
            self.sessions[side].pauseProducing()
        else:
            self.sessions[side].resumeProducing()

    @rule(side=st.sampled_from(SIDES), size=st.integers(1, 400))
    def deliver(self, side: str, size: int) -> None:
        self._deliver(side, size)

    @rule()
    def deliver_all(self) -> None:
        """Everything in flight both ways, and the answers to it, until the sessions are quiet."""
        self._settle()

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def bytes_in_order_and_exact(self) -> None:
        for app in self.apps:
            assert not app.problems, app.problems
            peer = self._peer_app(app)
            if peer is None:
                assert not app.received, "bytes from a channel with no writer"
                continue
            assert app.received == peer.sent[: len(app.received)], "bytes changed or reordered"
            if app.read_closed:
                assert app.received == peer.sent, "a clean end of stream lost bytes"

    @invariant()
    def windows_respected(self) -> None:
        for app in self.apps:
            if app.channel is not None:
                assert app.channel.buffered <= MAX_WINDOW, app.channel.buffered
            for reason in app.ended:
                if reason.check(ChannelReset):
                    assert reason.value.code not in (
                        Reason.WINDOW_EXCEEDED,
                        Reason.PROTOCOL_ERROR,
                        Reason.INTERNAL_ERROR,
                    ), f"channel reset: {reason.value.reason}"

    def teardown(self) -> None:
        """Resume and close everything, deliver it all: nothing may be left behind."""
        try:
            for side in SIDES:
                self.sessions[side].resumeProducing()
            for app in self.apps:
                if app.channel is not None and not app.ended:
                    app.paused = False
                    app.channel.resumeProducing()
            self._settle()
            for app in self.apps:
                if app.channel is not None and not app.ended:
                    app.write_closed = True
                    app.channel.loseConnection()
            self._settle()
            self.bytes_in_order_and_exact()
            for side in SIDES:
                session = self.sessions[side]
                assert session.channels == {}, f"{side} leaked channels {sorted(session.channels)}"
                assert session.opening == {}, f"{side} leaked opens {sorted(session.opening)}"
            assert all(d.called for d in self.opens), "an open's Deferred never fired"
            for app in self.apps:
                assert len(app.ended) == 1, f"a channel's app ended {len(app.ended)} times"
        finally:
            for side in SIDES:
                self.sessions[side].close("test over")
            self._settle()


class MuxStateMachineTests(TestCase):
    """Runs the state machine under trial (Hypothesis' own runner for unittest cases)."""

    def test_random_interleavings(self) -> None:
        MuxMachine.TestCase.settings = settings(
            max_examples=150,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        MuxMachine.TestCase("runTest").runTest()
