"""The agent answers only dials for its own data route at its own relay, and only so many."""

from __future__ import annotations

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


class PendingDialTests(SynchronousTestCase):
    def test_dials_in_progress_are_bounded(self) -> None:
        attempts: list[Deferred[object]] = []

        class Endpoint:
            def connect(self, factory: object) -> Deferred[object]:
                attempts.append(Deferred())
                return attempts[-1]

        self.patch(_agent, "client_endpoint", lambda *args: Endpoint())
        agent = make_agent(MemoryReactorClock(), "ws://127.0.0.1:8765", max_pending=2)
        for n in range(5):
            agent.dial(dial(link_id=f"{n}" * 32))
        self.assertEqual(len(attempts), 2)
        # A connection that fails frees its slot.
        attempts[0].errback(ConnectionRefusedError())
        agent.dial(dial(link_id="z" * 32))
        self.assertEqual(len(attempts), 3)
