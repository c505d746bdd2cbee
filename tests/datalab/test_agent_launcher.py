"""``--launcher agent``: instances on an agent, reached through a real relay.

A relay, an agent started with ``--datalab-launcher`` (exposing nothing else), and a datalab
daemon that is a tunnel client of the agent with its own key (authorized like a client's):
the upload travels to the agent over a control channel, every proxied connection (REST, the
kernel WebSocket, static downloads) is a channel to that instance, and stop ends it there.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid
from typing import Any

import treq
from twisted.internet import reactor
from twisted.python.filepath import FilePath

from nbbridge.agent._agent import Agent
from nbbridge.datalab import SESSION_COOKIE, DatalabService
from nbbridge.datalab import tap as datalab_tap
from nbbridge.instances import InstanceHost
from tests._cleanup import add_async_cleanup
from tests._redis import start_redis
from tests._tools import unavailable
from tests.tunnel._harness import TunnelTestCase
from tests.tunnel._jupyter import execute_request, missing_jupyter
from tests.web._kernel import open_kernel

from ._harness import CSV, SIGN_KEY, sign


def host_of(agent: Agent) -> InstanceHost:
    [host] = [s for s in agent if isinstance(s, InstanceHost)]
    return host


class AgentLauncherTests(TunnelTestCase):
    timeout = 300
    skip = unavailable(missing_jupyter())

    async def start_datalab(self, *extra: str) -> tuple[DatalabService, str]:
        key = FilePath(self.mktemp())
        key.setContent(SIGN_KEY.encode() + b"\n")
        os.chmod(key.path, 0o600)
        options = datalab_tap.Options()
        options.parseOptions(
            [
                "--listen", "tcp:0:interface=127.0.0.1",
                "--sign-key-file", key.path,
                "--launcher", "agent",
                "--relay", self.relay_url,
                "--agent", "gpu",
                "--agent-key", self.files.public("agent"),
                "--key", self.files.key_files["client"],
                "--token-file", self.files.token_files["laptop"],
                *extra,
            ]
        )  # fmt: skip
        service = datalab_tap.makeService(options, reactor)
        assert isinstance(service, DatalabService)
        service.startService()

        async def stop() -> None:
            if service.running:
                await service.stopService()

        add_async_cleanup(self, stop)
        port = await service.when_listening()
        return service, f"http://127.0.0.1:{port.getHost().port}"

    async def call(self, method: str, url: str, **kwargs: Any) -> Any:
        return await self.http.request(method, url, allow_redirects=False, **kwargs)

    async def test_upload_view_kernel_static_stop(self) -> None:
        await self.start_relay()
        agent = await self.start_agent({}, extra=["--datalab-launcher"])
        host = host_of(agent)
        datalab, base = await self.start_datalab()

        ts = str(int(time.time()))
        query = urllib.parse.urlencode({"ts": ts, "filename": "weather.csv"})
        response = await self.within(
            120,
            "start on the agent",
            self.call(
                "POST",
                f"{base}/datalab/start?{query}",
                data=CSV,
                headers={"X-SIGN": sign(ts, "weather.csv")},
            ),
        )
        answer = await treq.json_content(response)
        self.assertEqual(answer["code"], "OK", answer)
        nonce = answer["result"]["nonce"]
        [instance_id] = host.processes.ids()
        running = host.processes.get(instance_id)
        assert running is not None
        with open(os.path.join(running.root, "weather.csv"), "rb") as f:
            self.assertEqual(f.read(), CSV)  # the file went to the agent's instance

        response = await self.call("GET", f"{base}/datalab/static/{nonce}/weather.csv")
        self.assertEqual(await response.content(), CSV)

        response = await self.call("GET", f"{base}/datalab/view/{nonce}/lab")
        self.assertEqual(response.code, 302)
        cookie = response.cookies()[SESSION_COOKIE]
        headers = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": base}
        response = await self.call(
            "POST", f"{base}/api/kernels", json={"name": "python3"}, headers=headers
        )
        kernel = await treq.json_content(response)
        self.assertIn(response.code, (200, 201), kernel)
        port = int(base.rsplit(":", 1)[1])
        channels = await self.within(
            90, "kernel WebSocket", open_kernel(self, port, kernel["id"], headers, v1=True)
        )
        request = execute_request(
            "print(open('weather.csv').read().splitlines()[3])", uuid.uuid4().hex
        )
        channels.send_json(request)
        stream = await self.within(60, "output", channels.reply_to(request, "iopub", "stream"))
        self.assertEqual(stream["content"]["text"], "Cairo,27\n")
        channels.sendClose(1000)
        await channels.lost

        ts = str(int(time.time()))
        response = await self.call(
            "POST",
            f"{base}/datalab/stop?ts={ts}&nonce={nonce}",
            headers={"X-SIGN": sign(ts, nonce)},
        )
        self.assertEqual((await treq.json_content(response))["code"], "OK")
        await running.when_ended()
        self.assertEqual(host.processes.ids(), [])
        self.assertFalse(os.path.exists(running.directory))
        self.assertEqual(datalab.instances.ids(), [])

    async def test_agent_without_launcher_refuses(self) -> None:
        await self.start_relay()
        await self.start_agent({"echo": "tcp:127.0.0.1:9"})
        _, base = await self.start_datalab()
        ts = str(int(time.time()))
        response = await self.call(
            "POST",
            f"{base}/datalab/start?ts={ts}&filename=a.csv",
            data=b"a\n",
            headers={"X-SIGN": sign(ts, "a.csv")},
        )
        answer = await treq.json_content(response)
        self.assertEqual((response.code, answer["code"]), (503, "UNAVAILABLE"), answer)


class RestartWithRedisTests(AgentLauncherTests):
    """With Redis, a restarted datalab daemon keeps serving sessions of instances still
    running (on the agent): nonces, sessions and instance records outlive the process."""

    async def test_upload_view_kernel_static_stop(self) -> None:
        pass  # run once, in AgentLauncherTests

    async def test_agent_without_launcher_refuses(self) -> None:
        pass  # run once, in AgentLauncherTests

    async def test_restarted_daemon_serves_the_session(self) -> None:
        redis = await start_redis(self)
        await self.start_relay()
        agent = await self.start_agent({}, extra=["--datalab-launcher"])
        host = host_of(agent)
        first, base = await self.start_datalab("--store", redis.url)

        ts = str(int(time.time()))
        query = urllib.parse.urlencode({"ts": ts, "filename": "weather.csv"})
        response = await self.within(
            120,
            "start on the agent",
            self.call(
                "POST",
                f"{base}/datalab/start?{query}",
                data=CSV,
                headers={"X-SIGN": sign(ts, "weather.csv")},
            ),
        )
        nonce = (await treq.json_content(response))["result"]["nonce"]
        response = await self.call("GET", f"{base}/datalab/view/{nonce}/lab")
        cookie = response.cookies()[SESSION_COOKIE]
        headers = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": base}
        response = await self.call("GET", f"{base}/api/contents", headers=headers)
        self.assertEqual(response.code, 200)

        # The daemon stops; the instance on the agent keeps running.
        await first.stopService()
        [instance_id] = host.processes.ids()

        second, base = await self.start_datalab("--store", redis.url)
        headers["Origin"] = base
        response = await self.call("GET", f"{base}/api/contents", headers=headers)
        listing = await treq.json_content(response)
        self.assertEqual(response.code, 200, listing)
        self.assertEqual([f["name"] for f in listing["content"]], ["weather.csv"])
        response = await self.call("GET", f"{base}/datalab/static/{nonce}/weather.csv")
        self.assertEqual(await response.content(), CSV)
        self.assertEqual(second.instances.ids(), [instance_id])

        # ... and can stop it: it adopted the instance.
        running = host.processes.get(instance_id)
        assert running is not None
        ts = str(int(time.time()))
        response = await self.call(
            "POST",
            f"{base}/datalab/stop?ts={ts}&nonce={nonce}",
            headers={"X-SIGN": sign(ts, nonce)},
        )
        self.assertEqual((await treq.json_content(response))["code"], "OK")
        await running.when_ended()
        response = await self.call("GET", f"{base}/api/contents", headers=headers)
        self.assertEqual(response.code, 403)


class AgentOptionTests(TunnelTestCase):
    """The agent's --datalab-launcher: enough on its own; without it an --expose is needed."""

    def test_launcher_alone_is_enough(self) -> None:
        from twisted.python import usage

        from nbbridge.agent import tap as agent_tap

        args = self.agent_args({}, relay_url="ws://127.0.0.1:8765")
        options = agent_tap.Options()
        options.parseOptions([*args, "--datalab-launcher"])
        self.assertTrue(options["datalab-launcher"])
        self.assertEqual(options["expose"], [])
        with self.assertRaises(usage.UsageError):
            agent_tap.Options().parseOptions(args)
