"""Faults at scale: relay, agent and client each killed at random points during mixed traffic.

Issue 16, "Deliver 3". For each of the three daemons, ``KILLS`` rounds: mixed traffic runs
through a client forward to an echo service behind the agent (a bulk transfer, an interactive
request/response stream and lanes of short connections, each checked byte for byte), the
daemon under test (a real ``twistd`` child) gets SIGKILL at a random point, and then:

* every stream must end within ``END_WITHIN`` seconds, and each end must be *exact* (every
  byte, in order, then a clean close) or see an *explicit* error (a reset, a refused
  connection). An end that sees a clean end of stream with bytes missing, or wrong bytes, is
  the failure looked for: a program that reads until EOF would take it for complete;
* one more connection, opened while the daemon is dead, must end the same way;
* the daemon is started again, and the tunnel must carry a new connection within
  ``RECOVER_WITHIN`` seconds;
* after ``WARMUP`` rounds and again after the last, with no traffic, this process's open file
  descriptors and RSS (which hold the two daemons that survive, in-process) and the killed
  daemon's (its latest incarnation) are measured: they must stay flat.

The ends inside the killed process's host are closed by its kernel, which sends a FIN when
nothing was left unread: that is out of anyone's hands, so those ends (the services' ends
when the agent dies, the users' ends when the client dies) only have to end; the ends whose
nbbridge peer survived are held to the rule.

Kill points are random but event-driven ("once the bulk transfer has echoed N bytes", "once
K exchanges are done", "once J short connections have completed", J may be 0), drawn from
a seeded generator: the seed is logged and named in every failure; ``FAULTS_SEED=...`` repeats
a run, ``FAULTS_KILLS=...`` changes the number of kills per daemon (default 50).
"""

from __future__ import annotations

import gc
import os
import random
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _tcp
from ._harness import CLIENT, TunnelTestCase
from ._process import ChildProcess

#: Kills per daemon. Each round costs a daemon restart (a Python process start, 1-2 s) and the
#: survivors' reconnection backoff (their defaults, 1-2 s): about 4 s a round on 2 busy cores.
KILLS = int(os.environ.get("FAULTS_KILLS", "50"))
#: The seed of every random choice (kill points, sizes, data); logged, and named on failure.
SEED = int(os.environ.get("FAULTS_SEED") or random.SystemRandom().randrange(2**32))
#: Rounds before the footprint baseline is taken (caches, pools and buffers settle).
WARMUP = 2

KB = 1024
MB = 1024 * KB
#: The bulk transfer: this many bytes up, all echoed back.
BULK = 2 * MB
#: The interactive stream: this many request/response exchanges, each of 1..EXCHANGE_MAX bytes.
EXCHANGES = 40
EXCHANGE_MAX = 2 * KB
#: Lanes of short connections, one after another in each lane; each of 1..SHORT_MAX bytes.
SHORT_LANES = 3
SHORT_MAX = 8 * KB
#: The latest kill point for the short connections (completed connections, all lanes).
SHORT_KILL_MAX = 30
#: The new connection that shows the tunnel is back.
PROBE = 64 * KB

#: Seconds each stream may take to end after the kill; the tunnel may take to recover.
END_WITHIN = 30.0
RECOVER_WITHIN = 60.0
TRIGGER_WITHIN = 30.0
#: Allowed growth between the warm-up baseline and the end: file descriptors (a leak of one
#: per kill would be ~KILLS), and RSS (the log capture keeps every event of the test).
FD_SLACK = 2
RSS_SLACK_KB = 16 * KB
DAEMON_RSS_SLACK_KB = 8 * KB

#: The verdicts an end may have; the first three are what the rule allows.
EXACT, RESET, REFUSED, TRUNCATED, CORRUPT = "exact", "reset", "refused", "truncated", "corrupt"
ALLOWED = {EXACT, RESET, REFUSED}

#: Each stream starts with its payload's length and seed, so either end can check it alone.
HEADER = struct.Struct("!QI")

_log = Logger(namespace="tests.tunnel.faults_at_scale")


def payload(seed: int, offset: int, size: int) -> bytes:
    """SIZE bytes of stream SEED from OFFSET: any slice can be checked where it lands."""
    return _tcp.pattern(seed + offset, size)


class Checker:
    """Checks a stream as it arrives: the header, then ``payload(seed, ...)`` up to its length."""

    def __init__(self) -> None:
        self._header = b""
        self.total: int | None = None
        self.seed = 0
        #: payload bytes received (and checked)
        self.offset = 0
        self.corrupt: str | None = None

    def feed(self, data: bytes) -> None:
        if self.total is None:
            need = HEADER.size - len(self._header)
            self._header += data[:need]
            data = data[need:]
            if len(self._header) < HEADER.size:
                return
            self.total, self.seed = HEADER.unpack(self._header)
        if data and self.corrupt is None:
            if self.offset + len(data) > self.total:
                self.corrupt = f"{self.offset + len(data) - self.total} bytes past the end"
            elif data != payload(self.seed, self.offset, len(data)):
                self.corrupt = f"wrong bytes within {len(data)} at offset {self.offset}"
        self.offset += len(data)

    @property
    def complete(self) -> bool:
        return self.total is not None and self.offset == self.total and self.corrupt is None


def verdict(eof: bool, complete: bool, corrupt: str | None, reason: BaseException | None) -> str:
    """How an end came out: an EOF (or a clean close) with bytes missing is a truncation."""
    if corrupt:
        return CORRUPT
    if eof and not complete:
        return TRUNCATED
    if isinstance(reason, ConnectionDone):
        return EXACT if complete and eof else TRUNCATED
    return RESET


@implementer(IHalfCloseableProtocol)
class Service(Protocol):
    """The echo behind the agent; it checks what it receives and says how its end went."""

    def __init__(self, ends: list[Service]) -> None:
        self.check = Checker()
        self.eof = False
        self.reason: BaseException | None = None
        self.lost: Deferred[None] = Deferred()
        ends.append(self)

    def connectionMade(self) -> None:
        # Its own producer: a full send buffer stops reading (the echo keeps the pace).
        self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.check.feed(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.eof = True
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason.value
        self.lost.callback(None)

    def verdict(self) -> str:
        return verdict(self.eof, self.check.complete, self.check.corrupt, self.reason)

    def describe(self) -> str:
        total = self.check.total
        return (
            f"service end received {self.check.offset} of {total} payload bytes, "
            f"eof={self.eof}, ended with {self.reason!r}"
        )


@implementer(IHalfCloseableProtocol, IPullProducer)
class User(Protocol):
    """A user's connection through the forward: sends a checked stream, checks the echo.

    ``sizes`` are the requests: with ``interactive``, each is sent once the previous one came
    back whole; otherwise they go out as one stream at the pace the connection takes. After
    the last, the user shuts down its writing side and reads until EOF.
    """

    def __init__(self, kind: str, seed: int, sizes: list[int], interactive: bool = False) -> None:
        self.kind = kind
        self.seed = seed
        self.sizes = sizes
        self.interactive = interactive
        self.total = sum(sizes)
        self.check = Checker()
        self.sent = 0
        self.exchanges = 0
        self.eof = False
        self.reason: BaseException | None = None
        self.lost: Deferred[None] = Deferred()
        self._rng = random.Random(seed)
        self._boundaries: list[int] = []
        edge = 0
        for size in sizes:
            edge += size
            self._boundaries.append(edge)
        self._waiters: list[tuple[Callable[[User], bool], Deferred[None]]] = []

    # -- sending -------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.write(HEADER.pack(self.total, self.seed))  # type: ignore[union-attr]
        if self.interactive:
            self._send(self.sizes[0])
        else:
            self.transport.registerProducer(self, False)  # type: ignore[union-attr]

    def _send(self, size: int) -> None:
        self.transport.write(payload(self.seed, self.sent, size))  # type: ignore[union-attr]
        self.sent += size

    def resumeProducing(self) -> None:
        size = min(self._rng.randint(1, _tcp.CHUNK), self.total - self.sent)
        if size <= 0:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.loseWriteConnection()  # type: ignore[union-attr]
            return
        self._send(size)

    def stopProducing(self) -> None:
        pass

    # -- receiving -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.check.feed(data)
        while (
            self.exchanges < len(self._boundaries)
            and self.check.offset >= self._boundaries[self.exchanges]
        ):
            self.exchanges += 1
            if self.interactive and self.transport is not None:
                if self.exchanges < len(self.sizes):
                    self._send(self.sizes[self.exchanges])
                else:
                    self.transport.loseWriteConnection()  # type: ignore[attr-defined]
        for waiter in list(self._waiters):
            if waiter[0](self):
                self._waiters.remove(waiter)
                waiter[1].callback(None)

    def readConnectionLost(self) -> None:
        self.eof = True
        if self.check.complete:
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            # The failure looked for (a truncated EOF): recorded; do not wait for anything more.
            self.transport.abortConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended(reason.value)

    def ended(self, reason: BaseException | None) -> None:
        self.reason = reason
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.errback(AssertionError(f"{self.kind} ended first: {self.describe()}"))
        self.lost.callback(None)

    # -- for the test --------------------------------------------------------------------------

    def when(self, reached: Callable[[User], bool]) -> Deferred[None]:
        """Fires once REACHED(self) holds (fails if the connection ends first)."""
        d: Deferred[None] = Deferred()
        if reached(self):
            d.callback(None)
        elif self.lost.called:
            d.errback(AssertionError(f"{self.kind} ended first: {self.describe()}"))
        else:
            self._waiters.append((reached, d))
        return d

    def verdict(self) -> str:
        if self.transport is None and self.reason is not None:
            return REFUSED  # never connected: the connection attempt failed, visibly
        complete = self.check.complete and self.sent == self.total
        return verdict(self.eof, complete, self.check.corrupt, self.reason)

    def describe(self) -> str:
        return (
            f"user end sent {self.sent} of {self.total} bytes, got back {self.check.offset}, "
            f"{self.exchanges} of {len(self.sizes)} exchanges, "
            + ("saw a clean EOF (then aborted itself), " if self.eof else "")
            + f"ended with {self.reason!r}"
            + (f", {self.check.corrupt}" if self.check.corrupt else "")
        )


class _Quiet(Factory):
    """Builds the one protocol it is given, without logging each start and stop."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self._protocol


def open_user(port: int, user: User) -> Deferred[None]:
    """Connect USER to 127.0.0.1:PORT; fires once its connection has ended (or failed)."""
    d = TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(_Quiet(user))
    d.addErrback(lambda f: user.ended(f.value))
    return user.lost


@attrs.define
class Footprint:
    """Open file descriptors and resident memory of a process."""

    fds: int
    rss_kb: int

    @classmethod
    def of(cls, pid: int | str = "self") -> Footprint:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return cls(fds, rss)


class Traffic:
    """One round's mixed traffic: bulk, interactive, and lanes of short connections."""

    def __init__(self, port: int, rng: random.Random) -> None:
        self.port = port
        self.rng = rng
        self.users: list[User] = []
        self.short_done = 0
        self.stopped = False
        self._lanes: list[Deferred[None]] = []
        self._short_waiters: list[tuple[int, Deferred[None]]] = []

    def seed(self) -> int:
        return self.rng.randrange(2**31)

    def open(self, user: User) -> Deferred[None]:
        self.users.append(user)
        return open_user(self.port, user)

    def start(self) -> None:
        self.bulk = User("bulk", self.seed(), [BULK])
        sizes = [self.rng.randint(1, EXCHANGE_MAX) for _ in range(EXCHANGES)]
        self.interactive = User("interactive", self.seed(), sizes, interactive=True)
        self.open(self.bulk)
        self.open(self.interactive)
        self._lanes = [Deferred.fromCoroutine(self._lane()) for _ in range(SHORT_LANES)]

    async def _lane(self) -> None:
        while not self.stopped:
            await self.open(User("short", self.seed(), [self.rng.randint(1, SHORT_MAX)]))
            self.short_done += 1
            for waiter in list(self._short_waiters):
                if self.short_done >= waiter[0]:
                    self._short_waiters.remove(waiter)
                    waiter[1].callback(None)

    def kill_point(self) -> tuple[str, Deferred[None]]:
        """A random point in this round's traffic, and a Deferred that fires once it is reached."""
        kind = self.rng.choice(["bulk", "interactive", "short"])
        if kind == "bulk":
            n = self.rng.randrange(BULK)
            return f"after {n} bulk bytes echoed", self.bulk.when(lambda u: u.check.offset >= n)
        if kind == "interactive":
            k = self.rng.randrange(EXCHANGES)
            return f"after {k} exchanges", self.interactive.when(lambda u: u.exchanges >= k)
        j = self.rng.randrange(SHORT_KILL_MAX + 1)
        d: Deferred[None] = Deferred()
        if self.short_done >= j:
            d.callback(None)
        else:
            self._short_waiters.append((j, d))
        return f"after {j} short connections", d

    def ends(self) -> Deferred[Any]:
        """Fires once every connection of the round has ended and the lanes have stopped."""
        self.stopped = True
        return DeferredList([*self._lanes, *(u.lost for u in self.users)], consumeErrors=True)


@attrs.define
class Killable:
    """How one test kills its daemon, starts it again, and what the survivors can hold to."""

    name: str
    kill: Callable[[], Awaitable[None]]
    restart: Callable[[], Awaitable[None]]
    pid: Callable[[], int]
    #: whether the users' / the services' ends are held to the rule (see the module docstring)
    judge_users: bool
    judge_services: bool


class FaultsAtScaleTestCase(TunnelTestCase):
    """Runs the rounds for one daemon; collects every end that broke the rule."""

    timeout = 120 + KILLS * 30

    def client_args(self, *args: Any, **kwargs: Any) -> list[str]:
        """Clients that do not resume: every kill must end each stream exactly or with an
        explicit error within END_WITHIN (resumed streams: tests/tunnel/test_resume.py)."""
        return [*super().client_args(*args, **kwargs), "--resume-grace", "0"]

    def setUp(self) -> None:
        super().setUp()
        self.service_ends: list[Service] = []
        self.failures: list[str] = []
        self.tally: Counter[str] = Counter()
        self.broken: Counter[str] = Counter()
        self.client_process: ChildProcess | None = None
        self.open_users: list[User] = []
        self.addCleanup(self._abort_users)

    def _abort_users(self) -> None:
        for user in self.open_users:
            if not user.lost.called and user.transport is not None:
                user.transport.abortConnection()  # type: ignore[attr-defined]

    async def serve_echo(self) -> dict[str, str]:
        port, self.echo_factory = await self.serve(lambda: Service(self.service_ends))
        return {"echo": f"tcp:127.0.0.1:{port}"}

    # -- one round -----------------------------------------------------------------------------

    async def run_rounds(self, daemon: Killable, port: int) -> None:
        _log.info(
            "faults at scale: {name}, {kills} kills, seed {seed}",
            name=daemon.name,
            kills=KILLS,
            seed=SEED,
        )
        await self.recover(port, "before the first kill")
        baseline: tuple[Footprint, Footprint] | None = None
        started = reactor.seconds()  # type: ignore[attr-defined]
        for number in range(KILLS):
            await self.one_round(daemon, port, number)
            if number == min(WARMUP, KILLS) - 1:
                baseline = self.footprints(daemon)
        assert baseline is not None
        final = self.footprints(daemon)
        took = reactor.seconds() - started  # type: ignore[attr-defined]
        summary = (
            f"{daemon.name} killed {KILLS} times (seed {SEED}) in {took:.0f} s; ends: "
            + ", ".join(f"{k} {n}" for k, n in sorted(self.tally.items()))
            + f"; this process {baseline[0]} -> {final[0]}, {daemon.name} {baseline[1]} -> "
            f"{final[1]}"
        )
        _log.info("{summary}", summary=summary)
        if self.failures:
            kinds = ", ".join(f"{k}: {n}" for k, n in self.broken.most_common())
            shown = "\n  ".join(self.failures[:30])
            self.fail(f"{len(self.failures)} ends broke the rule ({kinds}); {summary}:\n  {shown}")
        self.assertLessEqual(final[0].fds, baseline[0].fds + FD_SLACK, summary)
        self.assertLessEqual(final[0].rss_kb, baseline[0].rss_kb + RSS_SLACK_KB, summary)
        self.assertLessEqual(final[1].fds, baseline[1].fds + FD_SLACK, summary)
        self.assertLessEqual(final[1].rss_kb, baseline[1].rss_kb + DAEMON_RSS_SLACK_KB, summary)

    def footprints(self, daemon: Killable) -> tuple[Footprint, Footprint]:
        gc.collect()
        return Footprint.of(), Footprint.of(daemon.pid())

    async def one_round(self, daemon: Killable, port: int, number: int) -> None:
        rng = random.Random(f"{SEED}/{daemon.name}/{number}")
        where = f"seed {SEED}, {daemon.name} kill {number}"
        traffic = Traffic(port, rng)
        traffic.start()
        self.open_users = traffic.users
        point, reached = traffic.kill_point()
        where += f" ({point})"
        await self.within(TRIGGER_WITHIN, f"{where}: kill point", reached)

        traffic.stopped = True
        await daemon.kill()
        cut_services = len(self.service_ends)
        # One more connection while the daemon is dead (not one of the cut streams: it may
        # wait for the link to come back).
        outage = User("during the outage", traffic.seed(), [rng.randint(1, SHORT_MAX)])
        outage_ended = open_user(port, outage)
        self.open_users = [*traffic.users, outage]
        ending = traffic.ends()
        ending.addTimeout(END_WITHIN, reactor)
        try:
            await ending
        except TimeoutError:
            still = [f"{u.kind}: {u.describe()}" for u in traffic.users if not u.lost.called]
            self.fail(f"{where}: not ended within {END_WITHIN:g} s: " + "; ".join(still))
        await daemon.restart()
        await self.within(END_WITHIN + 30, f"{where}: the outage connection ending", outage_ended)
        await self.within(END_WITHIN, f"{where}: the services' ends", self.echo_factory.when_idle())

        for user in [*traffic.users, outage]:
            self.judge(where, user.kind, "user", user, daemon.judge_users)
        for service in self.service_ends[:cut_services]:
            self.judge(where, "a service", "service", service, daemon.judge_services)
        for service in self.service_ends[cut_services:]:
            # Opened after the kill: the outage connection's, through the survivors only.
            self.judge(where, "a service (opened late)", "service", service, daemon.name != "agent")
        self.service_ends.clear()
        self.echo_factory.accepted.pending.clear()
        await self.recover(port, where)
        self.service_ends.clear()
        self.echo_factory.accepted.pending.clear()

    def judge(self, where: str, kind: str, side: str, end: User | Service, held: bool) -> None:
        verdict = end.verdict()
        self.tally[f"{side} {verdict}" + ("" if held else " (not judged)")] += 1
        if held and verdict not in ALLOWED:
            # Cut mid-stream (some bytes came) or before any came (the channel never opened).
            when = "mid-stream" if end.check.offset else "before any payload"
            self.broken[f"{kind} ({side} end) {verdict} {when}"] += 1
            line = f"{where}: {kind}: {verdict}: {end.describe()}"
            # The rarer, mid-stream ones first.
            self.failures.insert(0 if end.check.offset else len(self.failures), line)

    async def recover(self, port: int, where: str) -> None:
        """A new connection through the forward must come through whole within RECOVER_WITHIN.

        One refused while the client's link is still backing off is allowed (it must end with
        an explicit error); the next is tried once the client's link has moved on.
        """
        deadline = reactor.seconds() + RECOVER_WITHIN  # type: ignore[attr-defined]
        while True:
            mark = self.client_mark()
            probe = User("recovery probe", random.Random(where).randrange(2**31), [PROBE])
            self.open_users = [probe]
            await self.within(END_WITHIN, f"{where}: recovery probe ending", open_user(port, probe))
            result = probe.verdict()
            if result == EXACT:
                return
            self.judge(where, probe.kind, "user", probe, True)
            left = deadline - reactor.seconds()  # type: ignore[attr-defined]
            if left <= 0:
                self.fail(f"{where}: not recovered within {RECOVER_WITHIN:g} s: {probe.describe()}")
            await self.client_says("link to agent gpu", mark, left)

    def client_mark(self) -> int:
        if self.client_process is not None:
            return len(self.client_process.lines)
        return self.logs.mark()

    async def client_says(self, text: str, since: int, timeout: float) -> None:
        if self.client_process is not None:
            await self.client_process.wait_for(text, since=since, timeout=timeout)
        else:
            await self.logs.wait_for(text, CLIENT, since=since, timeout=timeout)


class RelayKilledTests(FaultsAtScaleTestCase):
    async def test_relay_killed(self) -> None:
        """``twistd nbbridge-relay`` gets SIGKILL KILLS times; agent and client survive."""
        services = await self.serve_echo()
        await self.start_relay_process()
        relay_port = self.relay_port
        await self.start_agent(services)
        client = await self.start_client(forward=["echo"])

        async def kill() -> None:
            assert self.relay_process is not None
            await self.relay_process.kill()

        async def restart() -> None:
            relay = await self.start_relay_process(relay_port)
            await relay.wait_for("agent gpu online")

        def pid() -> int:
            assert self.relay_process is not None and self.relay_process.transport is not None
            return int(self.relay_process.transport.pid)

        daemon = Killable("relay", kill, restart, pid, judge_users=True, judge_services=True)
        await self.run_rounds(daemon, client.port())


class AgentKilledTests(FaultsAtScaleTestCase):
    async def test_agent_killed(self) -> None:
        """``twistd nbbridge-agent`` gets SIGKILL KILLS times; relay and client survive."""
        services = await self.serve_echo()
        await self.start_relay()
        client = await self.start_client(forward=["echo"])
        agents = [await self.start_agent_process(services)]

        async def kill() -> None:
            await agents[0].kill()

        async def restart() -> None:
            agents[0] = await self.start_agent_process(services)

        def pid() -> int:
            assert agents[0].transport is not None
            return int(agents[0].transport.pid)

        daemon = Killable("agent", kill, restart, pid, judge_users=True, judge_services=False)
        await self.run_rounds(daemon, client.port())


class ClientKilledTests(FaultsAtScaleTestCase):
    async def test_client_killed(self) -> None:
        """``twistd nbbridge-client`` gets SIGKILL KILLS times; relay and agent survive."""
        services = await self.serve_echo()
        await self.start_relay()
        await self.start_agent(services)
        self.client_process, ports = await self.start_client_process({"echo": 0})
        port = ports["echo"]

        async def kill() -> None:
            assert self.client_process is not None
            await self.client_process.kill()

        async def restart() -> None:
            self.client_process, _ = await self.start_client_process({"echo": port})

        def pid() -> int:
            assert self.client_process is not None and self.client_process.transport is not None
            return int(self.client_process.transport.pid)

        daemon = Killable("client", kill, restart, pid, judge_users=False, judge_services=True)
        await self.run_rounds(daemon, port)


class ChannelNeverOpensTests(FaultsAtScaleTestCase):
    """The smallest case of what the rounds found: a user's connection that gets no channel."""

    timeout = 60

    async def test_agent_offline_resets_the_users_connection(self) -> None:
        """The agent is offline: a user who sent a request must see a reset, not a clean EOF.

        The forward accepted the connection and holds the request unread; when the channel
        cannot be opened the request is lost, and a clean close would read as "the service
        answered nothing". (Found by the agent-killed rounds: every connection opened while
        the agent was down, or whose OPEN was in flight when it died, ended with a FIN.)
        """
        await self.serve_echo()
        await self.start_relay()
        client = await self.start_client(forward=["echo"])
        for n in range(3):
            user = User("while the agent is offline", n, [1000 + n])
            await self.within(
                END_WITHIN, "the user's connection ending", open_user(client.port(), user)
            )
            self.assertIn(user.verdict(), ALLOWED, f"attempt {n}: {user.describe()}")
            self.assertEqual(user.check.offset, 0)
