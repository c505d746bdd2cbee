"""The mixer between a real local Jupyter and a real remote one behind a real agent and relay."""

from __future__ import annotations

import treq

from tests._cleanup import add_async_cleanup
from tests.tunnel._jupyter import execute_request, open_channels

from ._setup import MARK, MixerTestCase, start_jupyter

CELL = f"import os; print('mark=' + os.environ.get('{MARK}', 'none'))"


class MixingTests(MixerTestCase):
    async def run_cell(self, kernel_id: str, code: str = CELL) -> str:
        channels = await open_channels(self, self.mixer_port, kernel_id, self.auth)
        request = execute_request(code, "mixer-test")
        channels.send_json(request)
        reply = await channels.reply_to(request, "shell", "execute_reply")
        self.assertEqual(reply["content"]["status"], "ok", reply["content"])
        out = await channels.reply_to(request, "iopub", "stream")
        return str(out["content"]["text"]).strip()

    async def test_token_guard(self) -> None:
        await self.start_all()
        response = await self.http.get(self.url("/api/kernelspecs"))
        self.assertEqual(response.code, 401)
        response = await self.http.get(
            self.url("/api/kernelspecs"), headers={"Authorization": "token wrong"}
        )
        self.assertEqual(response.code, 401)
        response = await self.http.get(self.url(f"/api/kernelspecs?token={self.token}"))
        self.assertEqual(response.code, 200)
        self.assertIn("nbbridge-mixer-", "".join(response.headers.getRawHeaders("set-cookie")))
        await treq.content(response)

    async def test_kernelspecs_kernels_and_cells(self) -> None:
        await self.start_all()
        specs = await self.api("GET", "/api/kernelspecs")
        self.assertEqual(specs["default"], "python3")
        self.assertEqual(set(specs["kernelspecs"]), {"python3", "gpu:python3"})
        remote_spec = specs["kernelspecs"]["gpu:python3"]
        self.assertTrue(remote_spec["spec"]["display_name"].endswith(" (gpu)"))
        logo = remote_spec["resources"]["logo-64x64"]
        self.assertTrue(logo.startswith("/kernelspecs/gpu:python3/"), logo)
        response = await self.http.get(self.url(logo), headers=self.auth)
        self.assertEqual(response.code, 200)
        self.assertTrue((await treq.content(response)).startswith(b"\x89PNG"))

        local = await self.api("POST", "/api/kernels", {"name": "python3"}, code=201)
        remote = await self.api("POST", "/api/kernels", {"name": "gpu:python3"}, code=201)
        self.assertEqual(remote["name"], "gpu:python3")
        listed = {k["id"]: k["name"] for k in await self.api("GET", "/api/kernels")}
        self.assertEqual(listed, {local["id"]: "python3", remote["id"]: "gpu:python3"})
        # The remote kernel lives on the remote Jupyter, under its own id.
        on_remote = await self.api(
            "GET", "/api/kernels", port=self.remote.port, token=self.remote.token
        )
        self.assertEqual([k["id"] for k in on_remote], [remote["id"]])

        self.assertEqual(await self.run_cell(remote["id"]), "mark=remote-host")
        self.assertEqual(await self.run_cell(local["id"]), "mark=none")

        one = await self.api("GET", f"/api/kernels/{remote['id']}")
        self.assertEqual(one["name"], "gpu:python3")
        await self.api("POST", f"/api/kernels/{remote['id']}/interrupt", code=204)
        restarted = await self.api("POST", f"/api/kernels/{remote['id']}/restart")
        self.assertEqual(restarted["id"], remote["id"])
        self.assertEqual(await self.run_cell(remote["id"]), "mark=remote-host")
        await self.api("DELETE", f"/api/kernels/{remote['id']}", code=204)
        await self.api("GET", f"/api/kernels/{remote['id']}", code=404)

    async def test_sessions(self) -> None:
        await self.start_all()
        body = {
            "path": "a.ipynb",
            "name": "a.ipynb",
            "type": "notebook",
            "kernel": {"name": "gpu:python3"},
        }
        session = await self.api("POST", "/api/sessions", body, code=201)
        self.assertEqual(session["kernel"]["name"], "gpu:python3")
        listed = await self.api("GET", "/api/sessions")
        self.assertEqual([s["id"] for s in listed], [session["id"]])
        renamed = await self.api(
            "PATCH", f"/api/sessions/{session['id']}", {"path": "b.ipynb", "name": "b.ipynb"}
        )
        self.assertEqual(renamed["path"], "b.ipynb")
        self.assertEqual(renamed["kernel"]["name"], "gpu:python3")
        self.assertEqual(await self.run_cell(session["kernel"]["id"]), "mark=remote-host")
        await self.api("DELETE", f"/api/sessions/{session['id']}", code=204)
        self.assertEqual(await self.api("GET", "/api/sessions"), [])

    async def test_restart_rebuilds_table(self) -> None:
        await self.start_all()
        remote = await self.api("POST", "/api/kernels", {"name": "gpu:python3"}, code=201)
        await self.stop_mixer()
        await self.start_mixer()  # a fresh memory store: the table is rebuilt
        one = await self.api("GET", f"/api/kernels/{remote['id']}")
        self.assertEqual(one["name"], "gpu:python3")
        self.assertEqual(await self.run_cell(remote["id"]), "mark=remote-host")

    async def test_agent_killed(self) -> None:
        """The remote's agent gets SIGKILL: local kernels carry on, remote ones are dead."""
        await self.start_all(agent_process=True)
        local = await self.api("POST", "/api/kernels", {"name": "python3"}, code=201)
        remote = await self.api("POST", "/api/kernels", {"name": "gpu:python3"}, code=201)
        mark = self.logs.mark()
        await self.agent_process.kill()
        specs = await self.api("GET", "/api/kernelspecs")
        self.assertEqual(set(specs["kernelspecs"]), {"python3"})
        await self.logs.wait_for("remote gpu unreachable", "nbbridge.mixer", since=mark)
        one = await self.api("GET", f"/api/kernels/{remote['id']}")
        self.assertEqual(one["execution_state"], "dead")
        states = {k["id"]: k["execution_state"] for k in await self.api("GET", "/api/kernels")}
        self.assertEqual(states[remote["id"]], "dead")
        self.assertEqual(await self.run_cell(local["id"]), "mark=none")
        # Back: once the mixer's link is up again (it retries on its own), its specs return.
        mark = self.logs.mark()
        self.agent = await self.start_agent({"jupyter": f"tcp:127.0.0.1:{self.remote.port}"})
        await self.wait_link_up(since=mark, timeout=120)
        specs = await self.api("GET", "/api/kernelspecs")
        self.assertEqual(set(specs["kernelspecs"]), {"python3", "gpu:python3"})


class UsageTests(MixerTestCase):
    async def test_gateway_client(self) -> None:
        """A third Jupyter with the mixer as its GatewayClient.url runs a cell on each side."""
        await self.start_all()
        front = await start_jupyter(
            self,
            {"JUPYTER_GATEWAY_AUTH_TOKEN": self.token},
            [f"--GatewayClient.url=http://127.0.0.1:{self.mixer_port}/"],
        )
        specs = await self.api("GET", "/api/kernelspecs", port=front.port, token=front.token)
        self.assertEqual(set(specs["kernelspecs"]), {"python3", "gpu:python3"})
        for name, expected in (("gpu:python3", "mark=remote-host"), ("python3", "mark=none")):
            kernel = await self.api(
                "POST", "/api/kernels", {"name": name}, code=201, port=front.port, token=front.token
            )
            channels = await open_channels(self, front.port, kernel["id"], front.auth)
            request = execute_request(CELL, "gateway-test")
            channels.send_json(request)
            out = await channels.reply_to(request, "iopub", "stream")
            self.assertEqual(out["content"]["text"].strip(), expected)
            await self.api(
                "POST",
                f"/api/kernels/{kernel['id']}/interrupt",
                code=204,
                port=front.port,
                token=front.token,
            )
            await self.api(
                "POST", f"/api/kernels/{kernel['id']}/restart", port=front.port, token=front.token
            )
            await self.api(
                "DELETE",
                f"/api/kernels/{kernel['id']}",
                code=204,
                port=front.port,
                token=front.token,
            )

    async def test_front_of_local_jupyter(self) -> None:
        """The browser's way: everything but the mixed APIs is the local Jupyter's."""
        await self.start_all()
        self.local.root.child("hello.txt").setContent(b"hello")
        contents = await self.api("GET", "/api/contents")
        self.assertEqual([c["name"] for c in contents["content"]], ["hello.txt"])
        response = await self.http.get(self.url(f"/files/hello.txt?token={self.token}"))
        self.assertEqual(await treq.content(response), b"hello")
        cookie = response.cookies()
        response = await self.http.get(self.url("/files/hello.txt"), cookies=cookie)
        self.assertEqual(await treq.content(response), b"hello")


V1 = "v1.kernel.websocket.jupyter.org"


class ProtocolAndUrlTests(MixerTestCase):
    async def test_v1_subprotocol_passed_through(self) -> None:
        """The browser's v1 kernel protocol is negotiated with the remote Jupyter itself."""
        from autobahn.twisted.websocket import WebSocketClientFactory
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint

        from tests.tunnel._jupyter import KernelChannels

        await self.start_all()
        remote = await self.api("POST", "/api/kernels", {"name": "gpu:python3"}, code=201)
        url = f"ws://127.0.0.1:{self.mixer_port}/api/kernels/{remote['id']}/channels"
        factory = WebSocketClientFactory(url, headers=self.auth, protocols=[V1], reactor=reactor)
        factory.protocol = KernelChannels
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.mixer_port)
        channels = await endpoint.connect(factory)
        await channels.opened
        self.assertEqual(channels.websocket_protocol_in_use, V1)
        channels.sendClose(1000)
        await channels.lost

    async def test_url_remote(self) -> None:
        """--remote NAME=http://host:port/base: a Jupyter under a base URL, no tunnel."""
        from twisted.internet import reactor
        from twisted.python.filepath import FilePath

        from nbbridge.mixer import tap as mixer_tap

        self.local = await start_jupyter(self)
        self.remote = await start_jupyter(
            self, {MARK: "remote-host"}, ["--ServerApp.base_url=/base/"]
        )
        token_file = FilePath(self.mktemp())
        token_file.setContent(self.remote.token.encode())
        token_file.chmod(0o600)
        self.token = self.local.token
        options = mixer_tap.Options()
        options.parseOptions(
            ["--port", "0", "--jupyter-port", str(self.local.port),
             "--jupyter-token", self.local.token,
             "--remote", f"lab=http://127.0.0.1:{self.remote.port}/base",
             "--remote-token-file", f"lab={token_file.path}"]
        )  # fmt: skip
        self.mixer = mixer_tap.makeService(options, reactor)
        self.mixer.startService()
        add_async_cleanup(self, self.stop_mixer)
        port = await self.mixer.listening.when_listening  # type: ignore[attr-defined]
        self.mixer_port = port.getHost().port
        specs = await self.api("GET", "/api/kernelspecs")
        self.assertEqual(set(specs["kernelspecs"]), {"python3", "lab:python3"})
        logo = specs["kernelspecs"]["lab:python3"]["resources"]["logo-64x64"]
        response = await self.http.get(self.url(logo), headers=self.auth)
        self.assertEqual(response.code, 200)
        await treq.content(response)
        kernel = await self.api("POST", "/api/kernels", {"name": "lab:python3"}, code=201)
        channels = await open_channels(self, self.mixer_port, kernel["id"], self.auth)
        request = execute_request(CELL, "url-test")
        channels.send_json(request)
        out = await channels.reply_to(request, "iopub", "stream")
        self.assertEqual(out["content"]["text"].strip(), "mark=remote-host")


class RedisTableTests(MixerTestCase):
    async def test_table_survives_a_restart_in_redis(self) -> None:
        """With --store redis://, a restarted mixer still knows a remote kernel whose
        server is down now (it can only list it, as dead, from the table)."""
        from tests._redis import start_redis

        redis = await start_redis(self)
        await self.start_all(["--store", redis.url])
        remote = await self.api("POST", "/api/kernels", {"name": "gpu:python3"}, code=201)
        await self.stop_mixer()
        await self.stop_agent(self.agent)
        await self.start_mixer()
        listed = {k["id"]: k for k in await self.api("GET", "/api/kernels")}
        self.assertEqual(listed[remote["id"]]["execution_state"], "dead")
        self.assertEqual(listed[remote["id"]]["name"], "gpu:python3")
        keys = await redis.cli("KEYS", "mixer:*")
        self.assertIn(f"mixer:kernel:{remote['id']}", keys)
