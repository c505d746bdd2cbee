"""Three relays sharing a real Redis behind a real HAProxy (issue 13), all on loopback.

A client waiting at one relay reaches an agent held by another (the dial crosses on Redis
pub/sub, the data connection comes back through HAProxy to the client's relay); a killed
relay's agent is back, through HAProxy, on another within 10 s; a Redis restart is survived;
the newest of two connections of one agent name wins everywhere; a hub topic spans relays.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from tests._tools import unavailable
from tests.relay._ws import Connector, TestClient
from tests.tunnel import _tcp
from tests.tunnel._harness import CLIENT
from tests.tunnel._jupyter import execute_request, missing_jupyter, open_channels, start_jupyter

from ._cluster import ClusterTestCase

#: Issue 13: a dead relay's agents are back within this long.
FAILOVER_LIMIT = 10.0
#: The registry's refresh period (TTL 30 s / 3): Redis restarted, entries are back within it.
REFRESH_PERIOD = 10.0


class CrossRelayTests(ClusterTestCase):
    async def test_echo_through_another_relay(self) -> None:
        """A client at one relay, the agent at another: the link is spliced at the client's."""
        await self.start_cluster()
        port, _ = await self.serve(_tcp.Echo)
        holder = await self.start_agent_on_cluster({"echo": f"tcp:127.0.0.1:{port}"})
        other = self.other_than(holder)
        since = self.marks()
        client = await self.start_client(relay_url=self.relay_url_of(other))
        await self.echo_once(client.port(), size=256 * 1024)
        # The holder passed the dial on; the client's relay spliced the link.
        await self.relay_logs("dialing for a client at another relay", since, among={holder})
        await self.relay_logs(r"link \S+ from laptop to gpu: spliced", since, among={other})

    async def test_echo_through_another_relay_behind_nginx(self) -> None:
        """The same with nginx (TLS) in front: deploy/nginx/nbbridge-cluster.conf."""
        await self.start_cluster(front="nginx")
        port, _ = await self.serve(_tcp.Echo)
        holder = await self.start_agent_on_cluster({"echo": f"tcp:127.0.0.1:{port}"})
        other = self.other_than(holder)
        since = self.marks()
        client = await self.start_client(relay_url=self.relay_url_of(other), extra=self.front_args)
        await self.echo_once(client.port(), size=256 * 1024)
        await self.relay_logs("dialing for a client at another relay", since, among={holder})
        await self.relay_logs(r"link \S+ from laptop to gpu: spliced", since, among={other})

    async def test_unknown_agent_is_refused_clearly(self) -> None:
        await self.start_cluster()
        mark = self.logs.mark()
        client = await self.start_client(agent="gpu", relay_url=self.relay_url_of(2))
        await self.refused(client.port(), "agent 'gpu' is offline", mark)


class JupyterAcrossRelaysTests(ClusterTestCase):
    skip = unavailable(missing_jupyter())

    async def request(
        self, method: str, url: str, auth: dict[str, str], body: object = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(auth)
        if data is not None:
            headers["Content-Type"] = "application/json"
        response = await self.http.request(method, url, data=data, headers=headers)
        content = await treq.content(response)
        self.assertIn(response.code, (200, 201, 204), f"{method} {url}: {content[:300]!r}")
        return json.loads(content) if content else None

    async def test_http_and_kernel_websocket(self) -> None:
        """Jupyter behind an agent at one relay, used by a client at another (REST + kernel)."""
        jupyter = await start_jupyter(self)
        await self.start_cluster()
        holder = await self.start_agent_on_cluster({"jupyter": f"tcp:127.0.0.1:{jupyter.port}"})
        other = self.other_than(holder)
        client = await self.start_client(forward=["jupyter"], relay_url=self.relay_url_of(other))
        base = f"http://127.0.0.1:{client.port('jupyter')}"
        status = await self.within(
            30, "GET /api/status", self.request("GET", f"{base}/api/status", jupyter.auth)
        )
        self.assertIn("started", status)
        kernel = await self.within(
            60,
            "start a kernel",
            self.request("POST", f"{base}/api/kernels", jupyter.auth, {"name": "python3"}),
        )
        channels = await self.within(
            60,
            "open the kernel WebSocket",
            open_channels(self, client.port("jupyter"), kernel["id"], jupyter.auth),
        )
        request = execute_request("print(6*7)", uuid.uuid4().hex)
        channels.send_json(request)
        stream = await self.within(60, "output", channels.reply_to(request, "iopub", "stream"))
        self.assertEqual(stream["content"]["text"], "42\n")
        await self.within(
            30,
            "stop the kernel",
            self.request("DELETE", f"{base}/api/kernels/{kernel['id']}", jupyter.auth),
        )


class FailoverTests(ClusterTestCase):
    async def test_killed_relay_agents_are_back_within_10_s(self) -> None:
        await self.start_cluster()
        port, _ = await self.serve(_tcp.Echo)
        holder = await self.start_agent_on_cluster({"echo": f"tcp:127.0.0.1:{port}"})
        other = self.other_than(holder)
        client = await self.start_client(relay_url=self.relay_url_of(other))
        await self.echo_once(client.port())
        # A client as users run it, through HAProxy's origin: its link is wherever it lands.
        roaming = await self.start_client(relay_url=self.lb_url)
        await self.echo_once(roaming.port())

        since = self.marks()
        killed_at = self.now()
        await self.relay_processes[holder].kill()
        # Measured from the kill; the wait itself is generous (the limit is asserted below).
        back = await self.relay_logs("agent gpu online", since, timeout=60)
        took = self.now() - killed_at
        print(f"\n  failover: agent gpu back at relay{back} {took:.2f} s after relay{holder} died")
        self.assertNotEqual(back, holder)
        self.assertLess(took, FAILOVER_LIMIT)
        # The link spliced at the client's relay never went through the dead one: it still
        # works; and a new client's new link works too.
        await self.echo_once(client.port())
        newcomer = await self.start_client(relay_url=self.relay_url_of(other))
        await self.echo_once(newcomer.port())
        # Through HAProxy's origin new links keep working (had its link been at the dead
        # relay — HAProxy's leastconn usually puts it elsewhere — it comes back by itself).
        await self.within(60, "the roaming client's echo", self.echo_once(roaming.port()))

    async def test_redis_restart(self) -> None:
        await self.start_cluster()
        assert self.redis is not None
        port, _ = await self.serve(_tcp.Echo)
        holder = await self.start_agent_on_cluster({"echo": f"tcp:127.0.0.1:{port}"})
        other = self.other_than(holder)
        client = await self.start_client(relay_url=self.relay_url_of(other))
        await self.echo_once(client.port())

        since = self.marks()
        await self.redis.stop()
        await self.relay_logs("store: unreachable", since, among={other})
        status = await self.cluster_status(other)
        self.assertEqual(status["cluster"]["store"], "unreachable")
        # Links already up carry on; a new link to an agent elsewhere is refused, saying why.
        await self.echo_once(client.port())
        # (4500: the client tries again later, as for any relay-side trouble, and says why.)
        mark = self.logs.mark()
        refused = await self.start_client(relay_url=self.relay_url_of(other))
        waiting = await self.connect(refused.port(), _tcp.Peer(1000, seed=5))
        await self.logs.wait_for("shared store is unreachable", CLIENT, since=mark)
        self.assertEqual(waiting.received, 0)
        await self.stop_client(refused)

        since = self.marks()
        started_at = self.now()
        await self.redis.start()  # on the same port, empty: persistence is off
        await self.relay_logs("entry of agent gpu written again", since, among={holder})
        took = self.now() - started_at
        print(f"\n  redis restart: agent gpu registered again {took:.2f} s after Redis was back")
        self.assertLess(took, REFRESH_PERIOD)
        await self.relay_logs("store: connected", since, among={other})
        newcomer = await self.start_client(relay_url=self.relay_url_of(other))
        await self.echo_once(newcomer.port())

    async def test_redis_flushed(self) -> None:
        """Redis forgets everything while up: the holder writes its entry again in one refresh."""
        await self.start_cluster()
        assert self.redis is not None
        port, _ = await self.serve(_tcp.Echo)
        holder = await self.start_agent_on_cluster({"echo": f"tcp:127.0.0.1:{port}"})
        other = self.other_than(holder)
        since = self.marks()
        flushed_at = self.now()
        await self.redis.cli("FLUSHALL")
        await self.relay_logs(
            "entry of agent gpu written again", since, among={holder}, timeout=3 * REFRESH_PERIOD
        )
        took = self.now() - flushed_at
        print(f"\n  redis flushed: agent gpu registered again {took:.2f} s later")
        self.assertLess(took, REFRESH_PERIOD + 2)  # one refresh round, plus its own run time
        client = await self.start_client(relay_url=self.relay_url_of(other))
        await self.echo_once(client.port())

    async def cluster_status(self, n: int) -> dict[str, Any]:
        response = await self.http.get(f"http://127.0.0.1:{self.relay_ports[n]}/status")
        result: dict[str, Any] = json.loads(await treq.content(response))
        return result


class NewestWinsTests(ClusterTestCase):
    async def test_two_relays_claim_one_agent_the_newest_wins_everywhere(self) -> None:
        await self.start_cluster()
        port, _ = await self.serve(_tcp.Echo)
        since = self.marks()
        await self.start_agent(
            {"echo": f"tcp:127.0.0.1:{port}"}, relay_url=self.relay_url_of(1), wait_online=False
        )
        await self.relay_logs("agent gpu online", since, among={1})
        since = self.marks()
        mark = self.logs.mark()
        await self.start_agent(
            {"echo": f"tcp:127.0.0.1:{port}"}, relay_url=self.relay_url_of(2), wait_online=False
        )
        await self.relay_logs("agent gpu online", since, among={2})
        # Relay 1 hears of it on the bus at once, checks the registry and lets its one go.
        await self.relay_logs("registered elsewhere since; closing", since, among={1})
        await self.logs.wait_for("replaced by a newer connection", "nbbridge.agent", since=mark)


class HubAcrossRelaysTests(ClusterTestCase):
    async def test_topic_spans_relays(self) -> None:
        """Members of one topic on relay 1 and relay 3 (through HAProxy) hear each other."""
        await self.start_cluster()
        connector = Connector(reactor, self.lb_port)
        self.addCleanup(lambda: Deferred.fromCoroutine(connector.all_lost()))
        bob = await connector.connect("/r1/hub/room")
        alice = await connector.connect("/r3/hub/room")
        # Pub/sub is at most once: a relay's subscription to the topic is made as its first
        # member joins, so the first messages may go before it is; send until one arrives.
        got = await self.until_received(alice, bob, b"from relay 3")
        self.assertEqual(got, (b"from relay 3", True))
        got = await self.until_received(bob, alice, b"from relay 1")
        self.assertEqual(got, (b"from relay 1", True))

    async def until_received(
        self, sender: TestClient, reader: TestClient, payload: bytes
    ) -> tuple[bytes, bool]:
        resend = LoopingCall(sender.sendMessage, payload, True)
        resend.clock = reactor
        resend.start(0.25)
        try:
            got: tuple[bytes, bool] = await self.within(30, "a message", reader.messages.get())
        finally:
            resend.stop()
        return got
