"""Resumption, unit level: the pure pieces, then two sessions over links that are cut.

The sessions are real MuxSessions; only the links are fakes (tests/mux/_links.py), so a cut
can land on any byte, and the clock is a Clock. The real thing, through a relay that is
killed, is in tests/tunnel/test_resume.py.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from nbbridge.mux import ChannelReset, MuxSession, ServiceMap, SessionClosed
from nbbridge.mux._resume import (
    AGENT_PROOF,
    CLIENT_PROOF,
    ChannelPosition,
    ResumeSecrets,
    Retransmit,
    plan_channel,
)
from nbbridge.wire import (
    ENTRY_DISCARD,
    ENTRY_FIN,
    Ack,
    FrameDecoder,
    Hello,
    Resume,
    Resumed,
    ResumeEntry,
    encode_all,
)
from tests._loopback import Collector

from ._helpers import StringEndpoint
from ._links import Pair


class FrameTests(TestCase):
    def test_round_trip(self) -> None:
        frames: list[Any] = [
            Hello(1, 600),
            Ack(3, 2**40, True),
            Ack(5, 0),
            Resume(b"s" * 16, b"p" * 32, (ResumeEntry(1, ENTRY_FIN, 5, 9),)),
            Resumed(0, b"q" * 32, (ResumeEntry(2, ENTRY_DISCARD, 0, 0),), ""),
            Resumed(10, bytes(32), (), "unknown session"),
        ]
        self.assertEqual(FrameDecoder().feed(encode_all(frames)), frames)


class MalformedFrameTests(TestCase):
    def test_refused(self) -> None:
        import struct

        from nbbridge.wire import FrameError

        body = b"s" * 16 + b"p" * 32 + struct.pack(">I", 2) + struct.pack(">IBQQ", 1, 0, 5, 9)
        two_announced_one_given = struct.pack(">BBII", 10, 0, 0, len(body)) + body
        for bad in (
            two_announced_one_given,
            bytes([9, 0, 0, 0, 0, 3, 0, 0, 0, 5]) + bytes(5),  # HELLO on channel 3
            bytes([12, 0, 0, 0, 0, 1, 0, 0, 0, 9]) + bytes([2]) + bytes(8),  # ACK, unknown flag
            bytes([9, 0, 0, 0, 0, 0, 0, 0, 0, 4]) + bytes(4),  # HELLO too short
        ):
            self.assertRaises(FrameError, FrameDecoder().feed, bad)


class RetransmitTests(TestCase):
    def test_ack_and_since(self) -> None:
        r = Retransmit()
        for chunk in (b"abc", b"defg", b"hi"):
            r.append(chunk)
        self.assertEqual((r.acked, r.sent, len(r)), (0, 9, 9))
        self.assertEqual(b"".join(r.since(2)), b"cdefghi")
        r.ack(4)
        self.assertEqual(b"".join(r.since(4)), b"efghi")
        self.assertEqual(b"".join(r.since(8)), b"i")
        r.ack(2)  # stale: nothing changes
        self.assertEqual(r.acked, 4)
        r.ack(9)
        self.assertEqual((len(r), r.since(9)), (0, []))


def _pos(**kw: Any) -> ChannelPosition:
    base: dict[str, Any] = dict(
        channel=1, received=0, limit=100, fin_received=False, acked=10, sent=50, fin_sent=False
    )
    base.update(kw)
    return ChannelPosition(**base)


class PlanTests(TestCase):
    def test_resend_from_what_the_peer_holds(self) -> None:
        plan = plan_channel(_pos(), ResumeEntry(1, 0, 20, 120))
        self.assertEqual((plan.resend_from, plan.credit, plan.reset), (20, 70, None))

    def test_nothing_missing(self) -> None:
        plan = plan_channel(_pos(fin_sent=True), ResumeEntry(1, ENTRY_FIN, 50, 60))
        self.assertEqual((plan.resend_from, plan.resend_close, plan.fin_acked), (None, False, True))

    def test_close_lost(self) -> None:
        plan = plan_channel(_pos(fin_sent=True), ResumeEntry(1, 0, 50, 60))
        self.assertTrue(plan.resend_close)

    def test_unknown_to_the_peer(self) -> None:
        self.assertIsNotNone(plan_channel(_pos(), None).reset)

    def test_peer_claims_too_much_or_too_little(self) -> None:
        self.assertIsNotNone(plan_channel(_pos(), ResumeEntry(1, 0, 51, 99)).reset)
        self.assertIsNotNone(plan_channel(_pos(), ResumeEntry(1, 0, 9, 99)).reset)
        self.assertIsNotNone(plan_channel(_pos(), ResumeEntry(1, ENTRY_FIN, 50, 99)).reset)

    def test_secrets(self) -> None:
        a = ResumeSecrets.derive(b"x" * 32)
        b = ResumeSecrets.derive(b"y" * 32)
        self.assertNotEqual(a.session_id, b.session_id)
        proof = a.proof(CLIENT_PROOF, b"h" * 32)
        self.assertTrue(a.check(CLIENT_PROOF, b"h" * 32, proof))
        self.assertFalse(a.check(CLIENT_PROOF, b"g" * 32, proof))
        self.assertFalse(a.check(AGENT_PROOF, b"h" * 32, proof))
        self.assertFalse(b.check(CLIENT_PROOF, b"h" * 32, proof))


def _pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class ResumeTests(TestCase):
    """A client session and an agent's, over links cut with bytes in flight."""

    def setUp(self) -> None:
        self.service = StringEndpoint()
        self.pair = Pair(ServiceMap({"svc": self.service}), window=64 * 1024)

    def open(self) -> tuple[Collector, StringTransport, Any]:
        """A channel client -> agent: the user's protocol, and the service's transport."""
        d = self.pair.client.open("svc")
        self.pair.link.flush()  # type: ignore[union-attr]
        channel = self.successResultOf(d)
        user = Collector()
        channel.attach(user)
        protocol, transport = self.service.connections[-1]
        return user, transport, protocol

    def test_hello_makes_both_resumable(self) -> None:
        self.pair.connect()
        self.assertTrue(self.pair.client.resumable)
        self.assertTrue(self.pair.agent.resumable)
        self.assertEqual(len(self.pair.registry), 1)

    def test_old_client_is_not_resumed(self) -> None:
        """A client that sends no HELLO: the agent's session is an ordinary one."""
        self.pair.client = MuxSession(initiator=True, label="old", clock=self.pair.clock)
        link = self.pair.connect()
        self.assertFalse(self.pair.agent.resumable)
        user, service_transport, _ = self.open()
        link.cut()
        self.assertTrue(user.lost.called)
        self.assertTrue(service_transport.disconnecting)
        self.assertEqual(len(self.pair.registry), 0)

    def test_sessions_per_client_key_are_bounded(self) -> None:
        """A client that keeps starting sessions (and losing them) cannot pile them up."""
        for _ in range(12):
            self.pair.client = MuxSession(
                initiator=True, label="c", clock=self.pair.clock, resume_grace=60
            )
            self.pair.connect().cut()
        self.assertEqual(len(self.pair.registry), 8)

    def test_live_sessions_of_one_key_are_not_ended(self) -> None:
        """Many live sessions of one key all work; only the suspended ones are capped."""
        links = []
        for _ in range(12):
            self.pair.client = MuxSession(
                initiator=True, label="c", clock=self.pair.clock, resume_grace=60
            )
            links.append(self.pair.connect())
        self.assertEqual(len(self.pair.registry), 12)
        self.assertTrue(all(end.session.is_open for end in self.pair.agent_ends))
        for link in links:
            link.cut()
        self.assertEqual(len(self.pair.registry), 8)
        # The oldest suspended ones ended, the newest wait for their client.
        waiting = [end.session.suspended_since is not None for end in self.pair.agent_ends]
        self.assertEqual(waiting, [False] * 4 + [True] * 8)

    def test_old_agent_is_not_resumed(self) -> None:
        """An agent that does not offer resumption: a lost link resets, as before."""
        link = self.pair.connect(agent_features=b"")
        self.assertFalse(self.pair.client.resumable)
        user, _, _ = self.open()
        link.cut()
        self.assertTrue(user.lost.called)
        self.assertIsInstance(user.reason.value, SessionClosed)  # type: ignore[union-attr]

    def transfer_across_cuts(self, cuts: list[int | None], size: int = 300_000) -> None:
        """SIZE bytes each way while the link is cut after each budget in CUTS."""
        link = self.pair.connect()
        user, service_transport, service = self.open()
        channel = user.transport
        up = _pattern(size, 1)
        down = _pattern(size, 2)
        sent_up = sent_down = 0
        step = 7000
        for budget in cuts:
            # Both ends write a little, the link moves BUDGET bytes, then it is cut.
            for _ in range(5):
                if sent_up < size:
                    channel.write(up[sent_up : sent_up + step])  # type: ignore[union-attr]
                    sent_up += step
                if sent_down < size:
                    service.dataReceived(down[sent_down : sent_down + step])
                    sent_down += step
            link.flush(budget)
            link.cut()
            self.assertFalse(user.lost.called, "the user's connection ended on a cut")
            self.assertIsNotNone(self.pair.client.suspended_since)
            # The next link is not flushed: the next budget may cut it in the resume exchange.
            link = self.pair.connect(flush=False)
        channel.write(up[sent_up:])  # type: ignore[union-attr]
        service.dataReceived(down[sent_down:])
        for _ in range(1000):
            if not link.flush():
                break
            self.pair.clock.advance(0)
        self.assertIsNone(self.pair.client.suspended_since)
        self.assertGreater(self.pair.client.resumes, 0)
        self.assertGreater(self.pair.client.resent_bytes + self.pair.agent.resent_bytes, 0)
        self.assertEqual(len(user.data), size)
        self.assertEqual(bytes(user.data), down)
        self.assertEqual(service_transport.value(), up)
        self.assertFalse(user.lost.called)

    def test_resume_after_cut_with_bytes_in_flight(self) -> None:
        self.transfer_across_cuts([20_000, 5_000, 0])

    def test_cut_at_random_points_including_mid_resume(self) -> None:
        """Cuts anywhere, the resume exchange included (budgets smaller than RESUME)."""
        rng = random.Random(14)
        cuts: list[int | None] = [
            rng.choice([0, 1, 9, 30, 61, 100, 500, 3000, 40_000, 150_000, 400_000])
            for _ in range(25)
        ]
        self.transfer_across_cuts(cuts, size=200_000)

    def test_agent_still_on_the_old_link(self) -> None:
        """The client's network changed: it resumes on a new link while the agent's end of
        the old one is still up; the agent drops the old link and goes on on the new one."""
        link = self.pair.connect()
        user, service_transport, service = self.open()
        service.dataReceived(b"before")
        link.flush()
        old_agent_end = self.pair.agent_ends[-1]
        session = self.pair.agent
        link.cut_client_side()
        service.dataReceived(b" lost on the old link")  # written into the dead link
        self.assertIsNone(session.suspended_since)  # the agent has not noticed
        new = self.pair.connect()
        self.assertIs(self.pair.agent, session)
        self.assertTrue(link.cut_already, "the old link was not dropped")
        self.assertIsNot(session._link, old_agent_end)
        self.assertEqual(bytes(user.data), b"before lost on the old link")
        self.assertFalse(user.lost.called)
        user.transport.write(b"up")  # type: ignore[union-attr]
        new.flush()
        self.assertEqual(service_transport.value(), b"up")

    def test_open_while_resuming_fails_at_once(self) -> None:
        """An open made between RESUME and RESUMED fails as one made while suspended does:
        its OPEN could not go out (nothing but session frames may), so it would wait for
        an answer forever and keep its first window's loan from the budget."""
        link = self.pair.connect()
        link.cut()
        link = self.pair.connect(flush=False)  # the client sent RESUME; no answer yet
        client = self.pair.client
        budget = client._window_budget
        d = client.open("svc")
        self.assertIn("resum", str(self.failureResultOf(d, SessionClosed).value))
        self.assertEqual(client._window_budget, budget)
        link.flush()
        self.assertTrue(client.is_open)
        self.assertEqual(client.opening, {})
        self.open()  # and once resumed, opens work again

    def test_a_peer_that_closed_first_acknowledges_what_it_drops(self) -> None:
        """The client closes both ways while the agent still sends: the client drops (and
        credits) what comes, and acknowledges it too, as it does its CLOSE, so the agent
        keeps none of it for a resume. Credited but never acknowledged, the agent kept every
        byte sent after the close, and the channel's entry in ``_finishing`` with the last
        window of them until the session ended."""
        link = self.pair.connect()
        user, _, service = self.open()
        channel = user.transport
        channel.loseConnection()  # type: ignore[union-attr]
        link.flush()
        (sender,) = self.pair.agent.channels.values()
        for _ in range(40):
            service.dataReceived(b"d" * 100_000)  # 4 MB: all of it credited, dropped
            link.flush()
        self.assertLess(len(sender._retx), 100_000)  # type: ignore[arg-type]
        service.connectionLost(_done())  # the service ends too
        link.flush()
        self.assertEqual((self.pair.agent.channels, self.pair.agent._finishing), ({}, {}))
        self.assertEqual((self.pair.client._draining, self.pair.client._finishing), ({}, {}))
        self.assertEqual(bytes(user.data), b"")

    def test_grace_period_ends_with_resets(self) -> None:
        link = self.pair.connect()
        user, service_transport, _ = self.open()
        link.cut()
        self.pair.clock.advance(59)
        self.assertFalse(user.lost.called)
        self.pair.clock.advance(2)
        self.assertTrue(user.lost.called)
        self.assertIsInstance(user.reason.value, SessionClosed)  # type: ignore[union-attr]
        self.assertIn("grace period", str(user.reason.value))  # type: ignore[union-attr]
        self.assertTrue(service_transport.disconnecting)
        self.assertEqual(len(self.pair.registry), 0)

    def test_agent_bound_counts(self) -> None:
        """The client waits no longer than the agent said it would."""
        self.pair = Pair(ServiceMap({"svc": self.service}), grace=600, agent_grace=30)
        link = self.pair.connect()
        user, _, _ = self.open()
        link.cut()
        self.pair.clock.advance(31)
        self.assertTrue(user.lost.called)

    def test_forged_resume_with_another_key_is_refused(self) -> None:
        link = self.pair.connect()
        user, service_transport, _ = self.open()
        link.cut()
        # The next link's handshake was made with another (authorized) client key.
        link = self.pair.connect(client_key="mallory-key")
        # The agent refused; the client's channels are reset, and it starts a new session.
        self.assertTrue(user.lost.called)
        self.assertIn("another client key", str(user.reason.value))  # type: ignore[union-attr]
        self.assertFalse(service_transport.disconnecting, "the victim's session was touched")
        self.assertTrue(self.pair.client.is_open)
        self.assertEqual(len(self.pair.registry), 2)

    def test_bad_proof_is_refused(self) -> None:
        link = self.pair.connect()
        self.open()
        link.cut()
        agent_session = self.pair.agent
        secrets, _ = agent_session.resume_identity()
        assert secrets is not None
        fresh = MuxSession(
            initiator=False, label="x", clock=self.pair.clock, registry=self.pair.registry
        )
        transport = StringTransport()
        transport.handshake_hash = b"h" * 32  # type: ignore[attr-defined]
        transport.remote_static = "client-key"  # type: ignore[attr-defined]
        fresh.makeConnection(transport)
        replayed = secrets.proof(CLIENT_PROOF, b"an older handshake".ljust(32, b"."))
        fresh.dataReceived(encode_all([Resume(secrets.session_id, replayed, ())]))
        [answer] = FrameDecoder().feed(transport.value())
        assert isinstance(answer, Resumed)
        self.assertNotEqual(answer.code, 0)
        self.assertIn("bad proof", answer.text)
        self.assertIsNotNone(agent_session.suspended_since)

    def test_channel_reset_while_apart_is_reset_after(self) -> None:
        link = self.pair.connect()
        user, _, service = self.open()
        link.cut()
        # The service resets its connection while the link is down.
        service.connectionLost(_reset())
        link = self.pair.connect()
        self.assertTrue(user.lost.called)
        self.assertIsInstance(user.reason.value, ChannelReset)  # type: ignore[union-attr]

    def test_close_lost_in_flight_is_sent_again(self) -> None:
        link = self.pair.connect()
        user, service_transport, service = self.open()
        service.dataReceived(b"last words")
        service_transport.loseConnection()
        service.connectionLost(_done())
        link.cut()  # the DATA and CLOSE never arrived
        self.assertFalse(user.lost.called)
        link = self.pair.connect()
        self.assertEqual(bytes(user.data), b"last words")


def _reset() -> Any:
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    return Failure(ConnectionLost("reset by the service"))


def _done() -> Any:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())
