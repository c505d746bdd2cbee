"""Security: each kind of refusal, said clearly on the right side, and nothing else disturbed.

Every test keeps a legitimate client (laptop, with its authorized key) downloading through the
tunnel while the refused party tries its luck, and checks afterwards that this download kept
flowing and that new connections of the legitimate client still work.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from nbbridge.contract import bearer_headers, link_path
from nbbridge.crypto import Initiator, private_key_text
from nbbridge.crypto._secure import NOT_AUTHORIZED
from nbbridge.relay._splice import Splice, SpliceEnd
from nbbridge.transport import websocket_client_factory
from nbbridge.websocket import StreamClientProtocol, bind

from . import _tcp
from ._harness import AGENT, CLIENT, MUX, RELAY, Client, TunnelTestCase

MB = 1024 * 1024
#: Seconds within which a refused user's connection must close (the client waits 30 s for a
#: link that is merely down; a refusal must not look like that).
PROMPT = 10


class SecurityTestCase(TunnelTestCase):
    """A relay, agent gpu (echo and an endless source), and the legitimate client laptop."""

    async def start(self) -> Client:
        echo, _ = await self.serve(_tcp.Echo)
        source, self.sources = await self.serve(_tcp.Source)
        await self.start_relay()
        self.agent = await self.start_agent({"echo": str(echo), "source": str(source)})
        client = await self.start_client(forward=["echo", "source"])
        await self.echo_once(client.port("echo"))
        self.download = await self.connect(client.port("source"))
        await self.download.wait_received(MB)
        return client

    async def assert_unaffected(self, client: Client) -> None:
        """The legitimate download kept flowing, and new connections still work."""
        before = self.download.received
        await self.download.wait_received(before + 2 * MB)
        self.assertFalse(self.download.lost.called)
        await self.echo_once(client.port("echo"), size=MB, seed=99)

    async def refused(self, port: int) -> None:
        """A user's connection to PORT is closed promptly, without a byte of service data."""
        peer = await self.connect(port, _tcp.Peer(1000, seed=1))
        lost: Deferred[BaseException] = peer.lost
        lost.addTimeout(PROMPT, reactor)
        await lost
        self.assertEqual(peer.received, 0)

    def assert_logged(self, text: str, namespace: str, since: int) -> str:
        """A line containing TEXT was logged under NAMESPACE after SINCE; returns it."""
        lines = self.logs.lines(text, namespace, since=since)
        self.assertTrue(
            lines,
            f"nothing containing {text!r} logged by {namespace}; it logged:\n  "
            + "\n  ".join(self.logs.lines(namespace=namespace, since=since)),
        )
        return lines[0]


class RelayRefusalTests(SecurityTestCase):
    """Refusals decided by the relay (tokens, who may reach whom): close codes 4401/4403."""

    async def test_wrong_client_token(self) -> None:
        good = await self.start()
        mark = self.logs.mark()
        bad = await self.start_client(forward=["echo"], token="stranger")
        await self.refused(bad.port("echo"))
        self.assert_logged("link to gpu refused: token not recognised", RELAY, mark)
        self.assert_logged(
            "cannot open link to agent gpu: relay closed the link (4401): token not recognised",
            CLIENT,
            mark,
        )
        await self.assert_unaffected(good)

    async def test_agent_not_listed_for_client(self) -> None:
        """Client phone may reach agent cpu only; its valid token does not open gpu."""
        good = await self.start()
        mark = self.logs.mark()
        phone = await self.start_client(forward=["echo"], token="phone")
        await self.refused(phone.port("echo"))
        reason = "client 'phone' may not reach agent 'gpu'"
        self.assert_logged(f"link to gpu refused: {reason}", RELAY, mark)
        self.assert_logged(f"relay closed the link (4403): {reason}", CLIENT, mark)
        await self.assert_unaffected(good)

    async def test_agent_with_wrong_token_does_not_replace_the_real_one(self) -> None:
        """Someone registering as gpu with a bad or another agent's token is refused."""
        good = await self.start()
        for token, code, reason in [
            ("stranger", 4401, "token not recognised"),
            ("cpu", 4403, "agent 'cpu' may not register as 'gpu'"),
        ]:
            mark = self.logs.mark()
            impostor = await self.start_agent(
                {"echo": "tcp:127.0.0.1:9"}, token=token, key="impostor", wait_online=False
            )
            await self.logs.wait_for(
                f"control connection to the relay closed ({code}): {reason}", AGENT, since=mark
            )
            self.assert_logged(f"agent gpu refused: {reason}", RELAY, mark)
            await self.stop_agent(impostor)
        status = await self.status()
        self.assertEqual([a["name"] for a in status["agents"]], ["gpu"])
        await self.assert_unaffected(good)

    async def test_refused_agent_does_not_say_it_is_online(self) -> None:
        """An agent whose token is refused must not tell its operator it is online."""
        await self.start_relay()
        mark = self.logs.mark()
        await self.start_agent({"echo": "tcp:127.0.0.1:9"}, token="stranger", wait_online=False)
        await self.logs.wait_for(
            "control connection to the relay closed (4401): token not recognised", AGENT, mark
        )
        self.assertEqual(self.logs.lines("online", AGENT, since=mark), [])


class AgentRefusalTests(SecurityTestCase):
    """Refusals decided end to end, by the agent and the client: keys and services."""

    async def test_client_key_not_authorized(self) -> None:
        good = await self.start()
        mark = self.logs.mark()
        bad = await self.start_client(forward=["echo"], key="stranger")
        await self.refused(bad.port("echo"))
        stranger = self.files.public("stranger")
        self.assert_logged(f"link refused: client key {stranger} is not authorized", AGENT, mark)
        line = self.assert_logged(
            f"cannot open link to agent gpu: refused by the agent: {NOT_AUTHORIZED}", CLIENT, mark
        )
        # The refusal crosses the relay in clear: it must not name the key IK keeps hidden.
        self.assertNotIn(stranger, line)
        await self.assert_unaffected(good)

    async def test_replayed_handshake_is_never_a_client(self) -> None:
        """Whoever captured the laptop's first handshake message (the relay, or anyone on a
        ws:// path) replays it: the agent answers, but never counts a client as connected,
        and drops the link at its short deadline, saying why."""
        good = await self.start()
        self.agent.handshake_timeout = 1.0
        captured = Initiator(self.files.keys["client"], self.files.keys["agent"].public_key).start()
        mark = self.logs.mark()
        replayer = await self.replay(captured)
        await self.within(10, "the agent to drop the replayed link", replayer.closed)
        self.assertGreater(replayer.received, 0, "the agent answered message 1")
        line = self.assert_logged(
            "link refused: the first record from the client claiming", AGENT, mark
        )
        self.assertIn(self.files.public("client"), line)
        self.assertIn("did not come within 1 s of the handshake", line)
        self.assertIn("replayed", line)
        self.assertEqual(self.logs.lines("connected", AGENT, since=mark), [])
        await self.assert_unaffected(good)

    async def test_idle_client_is_confirmed(self) -> None:
        """A client with no connection to forward yet still proves itself at once."""
        await self.start_relay()
        self.agent = await self.start_agent({"echo": "tcp:127.0.0.1:9"})
        mark = self.logs.mark()
        client = await self.start_client(forward=["echo"])
        await client.link.session()  # the link is up; not one channel is opened on it
        await self.logs.wait_for("client laptop", AGENT, since=mark)
        self.assert_logged("connected", AGENT, mark)

    async def replay(self, captured: bytes) -> _Replayer:
        """Open a client link through the relay (a valid client token) and send CAPTURED."""
        replayer = _Replayer(captured)
        factory = bind(
            websocket_client_factory(
                self.relay_url + link_path("gpu"),
                bearer_headers(self.files.tokens["laptop"]),
                _ReplayLink,
            ),
            replayer,
        )
        link = await TCP4ClientEndpoint(reactor, "127.0.0.1", self.relay_port).connect(factory)
        self.addCleanup(
            lambda: None if link.transport is None else link.transport.abortConnection()
        )
        return replayer

    async def test_pinned_agent_key_does_not_match(self) -> None:
        """The client pins another key than the agent's: neither side gets a session."""
        good = await self.start()
        mark = self.logs.mark()
        bad = await self.start_client(forward=["echo"], agent_key="impostor")
        await self.refused(bad.port("echo"))
        self.assert_logged("the client pinned a different agent key", AGENT, mark)
        self.assert_logged(
            "cannot open link to agent gpu: refused by the agent: agent key does not match "
            "the pinned key",
            CLIENT,
            mark,
        )
        await self.assert_unaffected(good)

    async def test_impostor_agent_does_not_get_the_client(self) -> None:
        """An agent with another key (valid token) cannot pass itself off as the pinned one."""
        echo, _ = await self.serve(_tcp.Echo)
        await self.start_relay()
        await self.start_agent({"echo": str(echo)}, key="impostor")
        mark = self.logs.mark()
        client = await self.start_client(forward=["echo"])
        await self.refused(client.port("echo"))
        self.assert_logged("agent key does not match the pinned key", CLIENT, mark)
        self.assert_logged("the client pinned a different agent key", AGENT, mark)

    async def test_unknown_service(self) -> None:
        """A service the agent does not expose: that connection is refused, the link lives on."""
        echo, _ = await self.serve(_tcp.Echo)
        source, self.sources = await self.serve(_tcp.Source)
        await self.start_relay()
        self.agent = await self.start_agent({"echo": str(echo), "source": str(source)})
        client = await self.start_client(forward=["echo", "source", "ssh"])
        await self.echo_once(client.port("echo"))
        self.download = await self.connect(client.port("source"))
        await self.download.wait_received(MB)
        session = await client.link.session()

        mark = self.logs.mark()
        await self.refused(client.port("ssh"))
        line = self.assert_logged("ssh: cannot open a channel", MUX, mark)
        self.assertIn("unknown service 'ssh'", line)
        await self.assert_unaffected(client)
        # Same session all along: the refusal closed one channel, not the link.
        self.assertIs(await client.link.session(), session)


class _Replayer(Protocol):
    """Sends bytes it captured, holds no key, counts what comes back."""

    def __init__(self, captured: bytes) -> None:
        self.captured = captured
        self.received = 0
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.captured)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.closed.called:
            self.closed.callback(None)


class _ReplayLink(StreamClientProtocol):
    def make_inner(self) -> IProtocol:
        replayer: Any = self.owner
        assert isinstance(replayer, _Replayer)
        return replayer


class RelayCannotReadTests(TunnelTestCase):
    """What the relay carries is ciphertext: a marker sent through never appears in it."""

    async def test_marker_never_in_spliced_bytes(self) -> None:
        carried: dict[int, list[bytes]] = {}
        forward = Splice.forward

        def recording_forward(splice: Splice, source: SpliceEnd, payload: bytes, b: bool) -> None:
            carried.setdefault(id(source), []).append(bytes(payload))
            forward(splice, source, payload, b)

        self.patch(Splice, "forward", recording_forward)
        port, echo = await self.serve(_tcp.Echo)
        await self.start_relay()
        await self.start_agent({"echo": str(port)})
        client = await self.start_client(forward=["echo"])

        marker = b"NBBRIDGE-MARKER-7f3a9c2e-" * 4
        peer = _tcp.Peer(half_close=False)
        peer.keep = bytearray()
        await self.connect(client.port("echo"), peer)
        # The marker alone, then inside bulk data, in both directions (the echo sends it back).
        for i in range(50):
            peer.transport.write(marker if i % 2 else b"x" * 4000 + marker)  # type: ignore[union-attr]
        sent = 25 * len(marker) + 25 * (4000 + len(marker))
        await peer.wait_received(sent)
        [service] = [w.wrappedProtocol for w in echo.protocols]
        self.assertEqual(service.received, sent)
        self.assertEqual(peer.keep.count(marker), 50)
        peer.transport.loseConnection()  # type: ignore[union-attr]
        await peer.lost

        self.assertEqual(len(carried), 2, "the relay carried data in both directions")
        total = sum(len(p) for payloads in carried.values() for p in payloads)
        self.assertGreater(total, 2 * sent)
        for payloads in carried.values():
            stream = b"".join(payloads)
            self.assertNotIn(b"NBBRIDGE-MARKER", stream)

    async def test_no_secret_in_logs_or_status(self) -> None:
        """Tokens and private keys never reach a log line or /status, refusals included."""
        port, _ = await self.serve(_tcp.Echo)
        await self.start_relay()
        await self.start_agent({"echo": str(port)})
        client = await self.start_client(forward=["echo"])
        await self.echo_once(client.port("echo"))
        bad = await self.start_client(forward=["echo"], token="stranger", key="stranger")
        peer = await self.connect(bad.port("echo"), _tcp.Peer(10))
        await peer.lost
        status = await self.status()
        secrets = [*self.files.tokens.values()]
        for key in self.files.keys.values():
            secrets.append(private_key_text(key).split("\n")[1].rstrip("="))
            secrets.append(key.private_bytes().hex())
            secrets.append(repr(key.private_bytes())[2:-1])
        texts = [repr(status)] + [repr(e) for e in self.logs.events]
        self.assertGreater(len(texts), 20)
        for secret in secrets:
            for text in texts:
                self.assertNotIn(secret, text)
