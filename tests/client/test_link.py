"""AgentLink's waiting, refusal and backoff rules, on a fake clock."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from nbbridge.crypto import PrivateKey
from nbbridge.mux import MuxSession
from nbbridge.transport import RelayCertificateError, parse_relay_url
from nbbridge.tunnel import AgentLink, LinkDown, LinkState
from nbbridge.websocket import LinkClosed


class FakeLink(AgentLink):
    """An AgentLink whose connection attempts the test decides."""

    def __init__(self, clock: Clock, outcomes: list[Callable[[], Deferred[MuxSession]]]) -> None:
        key = PrivateKey.generate()
        super().__init__(
            clock, parse_relay_url("ws://127.0.0.1:9"), "gpu", key.public_key, key, "token"
        )
        self.outcomes = outcomes
        self.attempts: list[float] = []

    async def _open(self) -> MuxSession:
        self.attempts.append(self.clock.seconds())
        # Made only when used: an unused failed Deferred would be logged as an error later.
        return await self.outcomes.pop(0)()


def refused() -> Deferred[MuxSession]:
    return fail(ConnectionRefusedError("127.0.0.1:9"))


class AgentLinkTests(TestCase):
    def test_connections_wait_30_seconds_while_the_relay_is_down(self) -> None:
        clock = Clock()
        link = FakeLink(clock, [refused] * 50)
        d = link.session()
        for _ in range(29):
            clock.advance(1)
        self.assertNoResult(d)
        self.assertGreater(len(link.attempts), 2)  # it kept trying meanwhile
        clock.advance(1)
        f = self.failureResultOf(d, LinkDown)
        self.assertIn("no link to agent 'gpu' after 30 s", str(f.value))
        self.assertIn("refused", str(f.value))

    def test_offline_agent_fails_at_once(self) -> None:
        clock = Clock()
        link = FakeLink(clock, [lambda: fail(LinkClosed(4404, "agent 'gpu' is offline"))])
        d = link.session()
        clock.advance(0)  # waiters hear on a later turn
        f = self.failureResultOf(d, LinkDown)
        self.assertIn("4404", str(f.value))
        self.assertIn("offline", str(f.value))

    def test_refused_certificate_fails_at_once_and_keeps_retrying(self) -> None:
        """A certificate refusal closes waiting connections at once, like a refused key.

        Retrying soon will not cure it, so nobody should hang for 30 s; the link keeps
        trying in the background all the same (the certificate may be renewed).
        """
        clock = Clock()
        why = "TLS: certificate of relay.example.com is not signed by a trusted CA (use --ca FILE?)"
        link = FakeLink(clock, [lambda: fail(RelayCertificateError(why))] * 10)
        d = link.session()
        clock.advance(0)  # waiters hear on a later turn
        f = self.failureResultOf(d, LinkDown)
        self.assertEqual(str(f.value), why)
        clock.advance(2)
        clock.advance(4)
        self.assertGreaterEqual(len(link.attempts), 2)

    def test_link_comes_up_for_waiting_connections(self) -> None:
        clock = Clock()
        session = MuxSession(initiator=True)
        later: Deferred[MuxSession] = Deferred()
        link = FakeLink(clock, [refused, lambda: later])
        d = link.session()
        clock.advance(2)  # the retry after the refusal
        self.assertNoResult(d)
        later.callback(session)
        clock.advance(0)  # waiters hear on a later turn
        self.assertIs(self.successResultOf(d), session)

    def test_backoff_grows_and_is_capped_at_60_seconds(self) -> None:
        clock = Clock()
        link = FakeLink(clock, [refused] * 40)
        link.session().addErrback(lambda f: None)
        for _ in range(600):
            clock.advance(1)
        gaps = [b - a for a, b in zip(link.attempts, link.attempts[1:], strict=False)]
        self.assertLess(gaps[0], 2)
        self.assertLessEqual(max(gaps), 61)
        self.assertGreater(max(gaps), 25)

    def test_reconnects_and_uptime(self) -> None:
        """What the status page shows: when the link came up, and how often it came back."""
        clock = Clock()
        first, second = (MuxSession(initiator=True, clock=clock) for _ in range(2))
        link = FakeLink(clock, [lambda: succeed(first), lambda: succeed(second)])
        link.session()
        clock.advance(0)
        self.assertEqual((link.state, link.reconnects, link.up_since), (LinkState.UP, 0, 0.0))
        clock.advance(5)
        first.connectionLost(Failure(ConnectionDone()))
        clock.advance(0)  # the session says so on a later turn
        self.assertEqual((link.state, link.up_since, link.rtt), (LinkState.BACKING_OFF, None, None))
        self.assertIn("link lost", link.last_error)
        clock.advance(1)  # the first retry comes within a second
        clock.advance(0)
        self.assertEqual((link.state, link.reconnects), (LinkState.UP, 1))
        assert link.up_since is not None
        self.assertGreater(link.up_since, 5.0)

    def test_backoff_is_short_while_a_session_is_suspended(self) -> None:
        """Connections wait, open, for the link: it is looked for every 8 s at most."""
        clock = Clock()
        link = FakeLink(clock, [])
        suspended = MuxSession(initiator=True, clock=clock)
        suspended._suspended_at = 0.0
        link._session = suspended
        for _ in range(10):
            link._schedule_retry()
            retry = link._retry
            assert retry is not None
            self.assertLessEqual(retry.getTime() - clock.seconds(), 8.0)
            retry.cancel()
        link._session = None
        link._delay = 60.0
        link._schedule_retry()
        assert link._retry is not None
        self.assertGreater(link._retry.getTime() - clock.seconds(), 8.0)
        link._retry.cancel()

    def test_open_session_is_reused(self) -> None:
        clock = Clock()
        session = MuxSession(initiator=True)
        session._connected = True  # as after connectionMade
        link = FakeLink(clock, [lambda: succeed(session)])
        first = link.session()
        clock.advance(0)  # waiters hear on a later turn
        self.assertIs(self.successResultOf(first), session)
        self.assertIs(self.successResultOf(link.session()), session)
        self.assertEqual(len(link.attempts), 1)

    def test_stopping_the_service_fails_waiters(self) -> None:
        clock = Clock()
        link = FakeLink(clock, [lambda: Deferred()])
        link.startService()
        d = link.session()
        self.assertIsNone(self.successResultOf(link.stopService()))
        clock.advance(0)
        self.assertIn("stopping", str(self.failureResultOf(d, LinkDown).value))
        self.assertIn("stopping", str(self.failureResultOf(link.session(), LinkDown).value))

    def test_endpoint_opens_channels_on_the_session(self) -> None:
        clock = Clock()
        link = FakeLink(clock, [])
        endpoint = link.endpoint("jupyter")
        self.assertEqual(endpoint.service, "jupyter")
