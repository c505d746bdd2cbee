"""The agent answers only dials for its own data route at its own relay, and only so many."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from nbbridge.agent import _agent
from nbbridge.agent._agent import Agent
from nbbridge.contract import Dial, data_path, dial_message, parse_control_message
from nbbridge.crypto import AuthorizedKeys, PrivateKey
from nbbridge.mux import ServiceMap
from nbbridge.transport import parse_relay_url

LINK = "a" * 32


def make_agent(reactor: MemoryReactorClock, relay: str, max_pending: int = 16) -> Agent:
    return Agent(
        reactor,
        parse_relay_url(relay),
        "gpu",
        "token",
        PrivateKey.generate(),
        AuthorizedKeys({}),
        ServiceMap({}),
        max_pending_dials=max_pending,
    )


def dial(link_id: str = LINK, url: str | None = None) -> Dial:
    message = parse_control_message(dial_message(link_id, url or data_path("gpu", link_id)))
    assert isinstance(message, Dial)
    return message


class DialURLTests(SynchronousTestCase):
    def test_a_route_of_the_relay_url(self) -> None:
        agent = make_agent(MemoryReactorClock(), "ws://127.0.0.1:8765/nbb")
        self.assertEqual(
            agent.dial_url(dial()), f"ws://127.0.0.1:8765/nbb/v1/agents/gpu/data/{LINK}"
        )

    def test_the_same_relay_by_absolute_url(self) -> None:
        agent = make_agent(MemoryReactorClock(), "ws://127.0.0.1:8765")
        url = f"ws://127.0.0.1:8765/v1/agents/gpu/data/{LINK}"
        self.assertEqual(agent.dial_url(dial(url=url)), url)

    def test_another_origin_or_agent_is_refused(self) -> None:
        agent = make_agent(MemoryReactorClock(), "ws://127.0.0.1:8765")
        for url in (
            f"ws://127.0.0.2:8765/v1/agents/gpu/data/{LINK}",
            f"wss://127.0.0.1:8765/v1/agents/gpu/data/{LINK}",
            f"/v1/agents/cpu/data/{LINK}",
        ):
            self.assertIsNone(agent.dial_url(dial(url=url)), url)

    def test_refused_dials_open_nothing(self) -> None:
        reactor = MemoryReactorClock()
        agent = make_agent(reactor, "ws://127.0.0.1:8765")
        agent.dial(dial(url=f"ws://198.51.100.7:80/v1/agents/gpu/data/{LINK}"))
        self.assertEqual(reactor.tcpClients, [])


class _Recording:
    """A relay endpoint that records each data connection the agent opens (its link id)."""

    def __init__(self) -> None:
        self.attempts: list[Deferred[object]] = []
        self.links: list[str] = []

    def connect(self, factory: Any) -> Deferred[object]:
        self.links.append(factory.link_id)
        self.attempts.append(Deferred())
        return self.attempts[-1]


class PendingDialTests(SynchronousTestCase):
    def test_dials_in_progress_are_bounded(self) -> None:
        relay = _Recording()
        attempts = relay.attempts
        self.patch(_agent, "client_endpoint", lambda *args: relay)
        agent = make_agent(MemoryReactorClock(), "ws://127.0.0.1:8765", max_pending=2)
        for n in range(5):
            agent.dial(dial(link_id=f"{n}" * 32))
        self.assertEqual(len(attempts), 2)
        # A connection that fails frees its slot: the oldest waiting dial takes it.
        attempts[0].errback(ConnectionRefusedError())
        self.assertEqual(len(attempts), 3)
        self.assertEqual(relay.links[-1], "2" * 32)

    def test_waiting_dials_start_in_order_while_the_relay_still_waits(self) -> None:
        """Dials beyond the pending ones wait (64 at most, the rest refused); one that waited
        longer than the relay's dial timeout is not answered (its client was closed)."""
        relay = _Recording()
        attempts = relay.attempts
        self.patch(_agent, "client_endpoint", lambda *args: relay)
        reactor = MemoryReactorClock()
        agent = make_agent(reactor, "ws://127.0.0.1:8765", max_pending=1)
        agent.dial(dial(link_id="a" * 32))
        reactor.advance(5)
        agent.dial(dial(link_id="b" * 32))
        reactor.advance(5)
        agent.dial(dial(link_id="c" * 32))
        for n in range(_agent.MAX_QUEUED_DIALS):  # the queue is full after 62 of these
            agent.dial(dial(link_id=f"{n:032d}"))
        self.assertEqual(len(attempts), 1)
        self.assertEqual(len(agent._queued_dials), _agent.MAX_QUEUED_DIALS)
        attempts[0].errback(ConnectionRefusedError())  # b waited 5 s: still answered
        self.assertEqual(relay.links[-1], "b" * 32)
        reactor.advance(_agent.QUEUED_DIAL_LIFETIME)
        attempts[1].errback(ConnectionRefusedError())  # everything queued has expired
        self.assertEqual(len(attempts), 2)
        self.assertEqual(len(agent._queued_dials), 0)
