"""Integration: who may register and reach which agent, and what a refused peer is told."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from nbbridge.contract import CloseCode, control_path, data_path, link_path, parse_control_message

from ._harness import (
    AGENT_TOKEN,
    CLIENT_TOKEN,
    LIMITED_CLIENT_TOKEN,
    OTHER_AGENT_TOKEN,
    RelayTestCase,
    make_config,
)
from ._ws import HandshakeFailed


class RefusalTests(RelayTestCase):
    """Each refusal is a close code with a reason that says what happened."""

    async def test_wrong_client_token(self) -> None:
        await self.start_relay(make_config())
        await self.agent()
        client = await self.connector.connect(link_path("gpu"), "not-a-token")
        self.assertEqual(await client.closed, (CloseCode.BAD_TOKEN, "token not recognised"))

    async def test_missing_token(self) -> None:
        await self.start_relay(make_config())
        client = await self.connector.connect(link_path("gpu"))
        self.assertEqual(await client.closed, (CloseCode.BAD_TOKEN, "missing bearer token"))

    async def test_wrong_agent_token(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent("gpu", "not-a-token", registered=False)
        code, _ = await control.closed
        self.assertEqual(code, CloseCode.BAD_TOKEN)
        self.assertFalse(self.relay.is_online("gpu"))

    async def test_agent_registering_another_name(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent("gpu", OTHER_AGENT_TOKEN, registered=False)
        self.assertEqual(
            await control.closed, (CloseCode.NOT_PERMITTED, "agent 'cpu' may not register as 'gpu'")
        )
        self.assertFalse(self.relay.is_online("gpu"))

    async def test_client_token_cannot_register(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent("gpu", CLIENT_TOKEN, registered=False)
        code, _ = await control.closed
        self.assertEqual(code, CloseCode.NOT_PERMITTED)

    async def test_client_not_listed(self) -> None:
        await self.start_relay(make_config())
        await self.agent()
        client = await self.connector.connect(link_path("gpu"), LIMITED_CLIENT_TOKEN)
        self.assertEqual(
            await client.closed,
            (CloseCode.NOT_PERMITTED, "client 'phone' may not reach agent 'gpu'"),
        )

    async def test_listed_client_reaches_its_agent(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent("cpu", OTHER_AGENT_TOKEN)
        client, data = await self.link(control, "cpu", LIMITED_CLIENT_TOKEN, OTHER_AGENT_TOKEN)
        client.sendMessage(b"ping", isBinary=True)
        self.assertEqual(await data.messages.get(), (b"ping", True))

    async def test_offline_agent(self) -> None:
        await self.start_relay(make_config())
        client = await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        self.assertEqual(await client.closed, (CloseCode.OFFLINE, "agent 'gpu' is offline"))

    async def test_unknown_agent(self) -> None:
        await self.start_relay(make_config())
        client = await self.connector.connect(link_path("nobody"), CLIENT_TOKEN)
        self.assertEqual(await client.closed, (CloseCode.OFFLINE, "agent 'nobody' is unknown"))

    async def test_dial_not_answered(self) -> None:
        clock = Clock()
        await self.start_relay(make_config(), clock=clock)
        control = await self.agent()
        client = await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        await control.messages.get()  # the dial, which this agent ignores
        clock.advance(9.9)
        self.assertFalse(client.closed.called)
        clock.advance(0.1)
        self.assertEqual(
            await client.closed,
            (CloseCode.DIAL_TIMEOUT, "agent 'gpu' did not answer the dial within 10 s"),
        )
        self.assertEqual(self.relay.pending_count, 0)

    async def test_pending_links_fail_when_agent_goes(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client = await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        await control.messages.get()
        control.sendClose(1000)
        code, reason = await client.closed
        self.assertEqual(code, CloseCode.OFFLINE)
        self.assertIn("went offline", reason)

    async def test_data_connection_with_unknown_link(self) -> None:
        await self.start_relay(make_config())
        await self.agent()
        data = await self.connector.connect(data_path("gpu", "A" * 32), AGENT_TOKEN)
        code, _ = await data.closed
        self.assertEqual(code, CloseCode.OFFLINE)

    async def test_data_connection_needs_the_agents_token(self) -> None:
        await self.start_relay(make_config())
        control = await self.agent()
        client = await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        payload, _ = await control.messages.get()
        link_id = parse_control_message(payload).link_id
        thief = await self.connector.connect(data_path("gpu", link_id), OTHER_AGENT_TOKEN)
        code, _ = await thief.closed
        self.assertEqual(code, CloseCode.NOT_PERMITTED)
        # The link still waits for its real agent.
        data = await self.connector.connect(data_path("gpu", link_id), AGENT_TOKEN)
        client.sendMessage(b"ok", isBinary=True)
        self.assertEqual(await data.messages.get(), (b"ok", True))

    async def test_unknown_routes_are_404(self) -> None:
        await self.start_relay(make_config())
        for path in (
            "/v1/agents/gpu/bogus",
            "/v1/agents/bad!name/control",
            "/v1/agents/gpu/data/short",
            "/nope",
            "/v1",
        ):
            with self.assertRaises(HandshakeFailed) as caught:
                await self.connector.connect(path, AGENT_TOKEN)
            self.assertIn("404", str(caught.exception))


class ReplacementTests(RelayTestCase):
    """A reconnecting agent replaces its older control connection."""

    async def test_newer_control_replaces_older(self) -> None:
        await self.start_relay(make_config())
        old = await self.agent()
        new = await self.agent()
        self.assertEqual(
            await old.closed,
            (CloseCode.REPLACED, "replaced by a newer connection of this agent"),
        )
        await old.lost
        # The old connection's end did not take the agent offline.
        self.assertTrue(self.relay.is_online("gpu"))
        client, data = await self.link(new)
        data.sendMessage(b"via new", isBinary=True)
        self.assertEqual(await client.messages.get(), (b"via new", True))

    async def test_pending_dials_move_to_the_newer_connection(self) -> None:
        await self.start_relay(make_config())
        old = await self.agent()
        client = await self.connector.connect(link_path("gpu"), CLIENT_TOKEN)
        await old.messages.get()
        new = await self.agent()
        payload, _ = await new.messages.get()
        link_id = parse_control_message(payload).link_id
        data = await self.connector.connect(data_path("gpu", link_id), AGENT_TOKEN)
        data.sendMessage(b"late but fine", isBinary=True)
        self.assertEqual(await client.messages.get(), (b"late but fine", True))


class OpenModeTests(RelayTestCase):
    """Without a relay.toml, any token (or none) is accepted."""

    async def test_any_token(self) -> None:
        await self.start_relay(None)
        control = await self.agent("laptop-dev", "whatever")
        client, data = await self.link(control, "laptop-dev", "anything", "else")
        client.sendMessage(b"hi", isBinary=True)
        self.assertEqual(await data.messages.get(), (b"hi", True))

    async def test_no_token(self) -> None:
        await self.start_relay(None)
        await self.connector.connect(control_path("dev"))
        self.assertTrue(self.relay.is_online("dev"))


class SecretsTests(RelayTestCase):
    """No token appears in the relay's log, whatever happens."""

    async def test_tokens_never_logged(self) -> None:
        events: list[str] = []

        def observe(event: dict[str, object]) -> None:
            events.append(formatEvent(event) + repr(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await self.start_relay(make_config())
        control = await self.agent()
        client, data = await self.link(control)
        client.sendMessage(b"x", isBinary=True)
        await data.messages.get()
        bad = await self.connector.connect(link_path("gpu"), "wrong-secret-token-xyz")
        await bad.closed
        await self.agent("gpu", OTHER_AGENT_TOKEN, registered=False)
        client.sendClose(1000)
        await data.closed
        log = "\n".join(events)
        self.assertIn("spliced", log)
        for secret in (AGENT_TOKEN, CLIENT_TOKEN, OTHER_AGENT_TOKEN, "wrong-secret-token-xyz"):
            self.assertNotIn(secret, log)
