"""Resumption end to end: the relay dies and comes back; the user's connections go on.

Real pieces throughout: the relay (in this process, or ``twistd nbbridge-relay`` killed with
SIGKILL), the agent and the client built by their taps, TCP services on loopback, a real
Jupyter kernel. The unit tests of the protocol (every byte position of a cut) are in
tests/mux/test_resume.py.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from nbbridge.client._status import StatusService
from nbbridge.crypto import parse_public_key
from nbbridge.mux import MuxSession
from nbbridge.tunnel import AgentLink
from nbbridge.wire import FrameType
from tests._tools import unavailable

from . import _tcp
from ._harness import MUX, Client, TunnelTestCase
from ._jupyter import execute_request, missing_jupyter, open_channels, start_jupyter
from .test_faults import _pattern_digest

MB = 1024 * 1024
#: What the client's session logs once resumed (its label names the agent).
RESUMED_LINE = "session with gpu: session resumed after"
#: ... when its link is lost and it suspends (the agent's session says the same under its
#: own label, in either order: a test that means the client's waits for this).
CLIENT_SUSPENDED_LINE = "session with gpu: link lost ("
#: ... when the link it was resuming on is lost, or the agent refuses: an attempt's outcome.
RESUME_OUTCOMES = (
    RESUMED_LINE,
    "session with gpu: link lost again while resuming",
    "session with gpu: session could not be resumed",
)


class _Interactive(_tcp.Peer):
    """An ssh-like user: sends a line, waits for its echo, again and again."""

    def __init__(self) -> None:
        super().__init__()
        self.keep = bytearray()

    async def say(self, test: TunnelTestCase, line: bytes) -> None:
        expected = len(self.keep) + len(line)
        self.transport.write(line)  # type: ignore[union-attr]
        await test.within(60, f"echo of {line!r}", self.wait_received(expected))
        test.assertEqual(bytes(self.keep[-len(line) :]), line)


class ResumeTests(TunnelTestCase):
    timeout = 300

    async def wait_resumed(self, since: int) -> None:
        await self.logs.wait_for(RESUMED_LINE, MUX, since, timeout=90)

    async def session_status(self, client: Client) -> dict[str, Any]:
        """The ``session`` part of the client's /status.json."""
        [status] = [s for s in client.service if isinstance(s, StatusService)]  # type: ignore[attr-defined]
        port = (await status.listening).getHost().port
        response = await self.http.get(f"http://127.0.0.1:{port}/status.json")
        document: dict[str, Any] = json.loads(await treq.content(response))
        return document["session"]  # type: ignore[no-any-return]

    async def test_200mb_across_two_relay_kills(self) -> None:
        """A 200 MB download and a 64 MB upload, the relay SIGKILLed twice mid-way: same TCP
        connections, every byte, in order (SHA-256), then a clean end."""
        size = 200 * MB
        source, sources = await self.serve(lambda: _tcp.Source(size))
        sink, sinks = await self.serve(_tcp.ReplyAfterEOF)
        relay = await self.start_relay_process()
        port = self.relay_port
        await self.start_agent({"source": str(source), "sink": str(sink)})
        client = await self.start_client(forward=["source", "sink"])
        down = await self.connect(client.port("source"))
        up = await self.connect(
            client.port("sink"), _tcp.Peer(64 * MB, seed=3, max_chunk=200_000, half_close=True)
        )
        up.keep = bytearray()
        await sinks.accepted.get()
        await sources.accepted.get()
        for threshold in (30 * MB, 110 * MB):
            await self.within(120, f"{threshold} bytes down", down.wait_received(threshold))
            mark = self.logs.mark()
            await relay.kill()
            relay = await self.start_relay_process(port)
            await self.wait_resumed(mark)
        reason = await self.within(240, "the download's end", down.lost)
        self.assertTrue(_tcp.clean(reason), f"download ended with {reason!r}")
        self.assertEqual(down.received, size)
        self.assertEqual(down.received_hash.digest(), _pattern_digest(size))
        reason = await self.within(120, "the upload's answer", up.lost)
        self.assertTrue(_tcp.clean(reason), f"upload ended with {reason!r}")
        header = bytes(up.keep).split(b"\n", 1)[0].decode()
        self.assertEqual(header, f"{64 * MB} {up.sent_hash.hexdigest()}")
        self.assertEqual(len(self.logs.lines(RESUMED_LINE, MUX)), 2)

    async def test_interactive_echo_survives_a_relay_restart(self) -> None:
        """An ssh-like session: lines echoed before, across and after a relay restart."""
        echo, echoes = await self.serve(_tcp.Echo)
        await self.start_relay()
        port = self.relay_port
        await self.start_agent({"ssh": str(echo)})
        client = await self.start_client(forward=["ssh"])
        user = await self.connect(client.port("ssh"), _Interactive())
        await user.say(self, b"uname -a\n")
        mark = self.logs.mark()
        await self.stop_relay()
        await self.logs.wait_for(CLIENT_SUSPENDED_LINE, MUX, since=mark)
        suspended = await self.session_status(client)
        self.assertEqual((suspended["state"], suspended["channels"]), ("suspended", 1))
        self.assertGreaterEqual(suspended["suspended_for"], 0)
        # Typed while the relay is away: kept, and echoed once the session resumes.
        user.transport.write(b"typed while away\n")  # type: ignore[union-attr]
        await self.start_relay(port)
        await self.wait_resumed(mark)
        resumed = await self.session_status(client)
        self.assertEqual((resumed["state"], resumed["resumes"]), ("live", 1))
        self.assertGreater(resumed["last_suspended_for"], 0)
        await self.within(60, "the line typed while away", user.wait_received(26))
        await user.say(self, b"exit\n")
        self.assertEqual(bytes(user.keep), b"uname -a\ntyped while away\nexit\n")
        self.assertFalse(user.lost.called)
        self.assertEqual(len(echoes.protocols), 1, "the service saw a second connection")

    async def test_grace_period_ends_with_resets(self) -> None:
        """The agent's 1-second bound: the relay stays away longer; the connection is reset
        at both ends (never a clean end), both ends say why, and a new session starts
        afterwards."""
        echo, echoes = await self.serve(_tcp.Echo)
        await self.start_relay()
        port = self.relay_port
        agent = await self.start_agent({"echo": str(echo)}, extra=["--resume-grace", "1"])
        client = await self.start_client(forward=["echo"])
        user = await self.connect(client.port("echo"), _Interactive())
        await user.say(self, b"hello\n")
        service = await echoes.accepted.get()
        # The agent's end of the session logs under its link's label.
        [agent_session] = list(agent.sessions)
        mark = self.logs.mark()
        await self.stop_relay()
        # Each end's grace period runs from the moment it saw the link go, and the relay's
        # close reaches client and agent in either order, some milliseconds apart: each end
        # is waited for, never looked at once the other one has ended.
        for end, protocol in (("the user's", user), ("the service's", service)):
            reason = await self.within(30, f"{end} reset", protocol.lost)
            self.assertFalse(_tcp.clean(reason), f"{end} cut connection ended cleanly: {reason!r}")
        expired = "session not resumed within the 1 s grace period"
        await self.logs.wait_for(f"session with gpu: {expired}", MUX, mark)
        await self.logs.wait_for(f"{agent_session.label}: {expired}", MUX, mark)
        await self.start_relay(port)
        await self.wait_link_up(mark, timeout=60)
        await self.echo_once(client.port("echo"))

    async def test_forged_resume_with_another_key_is_refused(self) -> None:
        """A second authorized client names the first one's session (with its real resume
        key, even): refused and logged; the first client's connection is untouched."""
        impostor = self.files.keys["impostor"].public_key.to_text()
        with open(self.files.authorized_keys, "a") as f:
            f.write(f"{impostor} impostor\n")
        echo, _ = await self.serve(_tcp.Echo)
        await self.start_relay()
        await self.start_agent({"echo": str(echo)})
        client = await self.start_client(forward=["echo"])
        user = await self.connect(client.port("echo"), _Interactive())
        await user.say(self, b"mine\n")
        victim = client.link.current_session
        assert victim is not None
        secrets, _ = victim.resume_identity()

        forger = AgentLink(
            reactor,
            client.link.relay,
            "gpu",
            parse_public_key(self.files.public("agent")),
            self.files.keys["impostor"],
            self.files.tokens["laptop"],
        )
        forged = MuxSession(initiator=True, label="forged", clock=reactor, resume_grace=60)
        forged._secrets = secrets
        forged._suspended_at = reactor.seconds()
        forger._session = forged
        mark = self.logs.mark()
        session = await self.within(30, "the forger's link", forger.session())
        self.addCleanup(forger.stopService)
        await self.logs.wait_for("belongs to another client key", MUX, since=mark)
        self.assertEqual(session.resumes, 0)
        await user.say(self, b"still mine\n")
        self.assertIs(client.link.current_session, victim)


class ResumeFaultInjectionTests(TunnelTestCase):
    """The link is dropped again in the middle of the resume exchange, at random points."""

    timeout = 300

    async def test_link_dropped_mid_resume(self) -> None:
        size = 40 * MB
        source, _ = await self.serve(lambda: _tcp.Source(size))
        await self.start_relay()
        port = self.relay_port
        await self.start_agent({"source": str(source)})
        client = await self.start_client(forward=["source"])
        down = await self.connect(client.port("source"))
        # RESUME_FAULTS_SEED=... repeats a run (or tries others).
        rng = random.Random(int(os.environ.get("RESUME_FAULTS_SEED", "1414")))
        kills: list[Deferred[None]] = []
        injecting = [True]
        original = MuxSession._write_session

        def write_session(session: MuxSession, data: bytes) -> None:
            # The relay dies just as RESUME or RESUMED is written, or a few turns later.
            original(session, data)
            kind = data[0] if data else 0
            wanted = kind in (FrameType.RESUME, FrameType.RESUMED) and len(kills) < 4
            wanted = wanted and bool(injecting)
            if wanted and rng.random() < 0.8:
                turns = rng.choice([0, 0, 1, 2, 5])
                kills.append(_after_turns(turns, self.kill_relay_if_up))

        self.patch(MuxSession, "_write_session", write_session)
        await down.wait_received(5 * MB)
        for _ in range(4):
            mark = self.logs.mark()
            await self.kill_relay_if_up()
            await self.start_relay(port)
            # The client's attempt on the new relay (not its suspension after the kill).
            await self.logs.wait_for(RESUME_OUTCOMES, MUX, mark, 90)
            for kill in kills:
                await kill
            if self.relay is None:
                await self.start_relay(port)
        # No more faults: whatever was injected has run, and the relay is up for the rest.
        injecting.clear()
        for kill in kills:
            await kill
        if self.relay is None:
            await self.start_relay(port)
        self.assertTrue(kills, "no fault was injected in a resume exchange")
        reason = await self.within(240, "the download's end", down.lost)
        if _tcp.clean(reason):
            self.assertEqual(down.received, size)
        else:
            self.assertLess(down.received, size)
        self.assertEqual(down.received_hash.digest(), _pattern_digest(down.received))

    async def kill_relay_if_up(self) -> None:
        if self.relay is not None:
            await self.kill_relay()


async def _turns(n: int) -> None:
    for _ in range(n):
        d: Deferred[None] = Deferred()
        reactor.callLater(0, d.callback, None)
        await d


def _after_turns(n: int, action: Any) -> Deferred[None]:
    async def run() -> None:
        await _turns(n)
        await action()

    return Deferred.fromCoroutine(run())


class JupyterKernelResumeTests(TunnelTestCase):
    """A real kernel's channels WebSocket keeps its connection across a relay restart."""

    skip = unavailable(missing_jupyter())
    timeout = 300

    async def test_kernel_websocket_survives_a_relay_restart(self) -> None:
        jupyter = await start_jupyter(self)
        await self.start_relay()
        port = self.relay_port
        await self.start_agent({"jupyter": f"tcp:127.0.0.1:{jupyter.port}"})
        client = await self.start_client(forward=["jupyter"])
        base = f"http://127.0.0.1:{client.port('jupyter')}"
        headers = {**jupyter.auth, "Content-Type": "application/json"}
        response = await self.within(
            60,
            "start a kernel",
            self.http.post(
                f"{base}/api/kernels",
                data=json.dumps({"name": "python3"}).encode(),
                headers=headers,
            ),
        )
        kernel: dict[str, Any] = json.loads(await treq.content(response))
        channels = await self.within(
            60,
            "open the kernel WebSocket",
            open_channels(self, client.port("jupyter"), kernel["id"], jupyter.auth),
        )

        async def run(code: str, expected: str) -> None:
            request = execute_request(code, uuid.uuid4().hex)
            channels.send_json(request)
            stream = await self.within(60, code, channels.reply_to(request, "iopub", "stream"))
            self.assertEqual(stream["content"]["text"], expected)

        await run("x = 6 * 7; print(x)", "42\n")
        mark = self.logs.mark()
        await self.stop_relay()
        await self.start_relay(port)
        await self.logs.wait_for(RESUMED_LINE, MUX, mark, 90)
        # The same WebSocket, the same kernel state.
        await run("print(x + 1)", "43\n")
