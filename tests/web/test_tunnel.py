"""The proxy in front of a Jupyter behind an agent: every upstream connection is a channel.

A real relay and agent (in this process, built by their taps), the client's `AgentLink`
giving the endpoint, jupyter-server behind the agent. The browser side talks to the proxy.
"""

from __future__ import annotations

import json

import treq

from nbbridge.web import Route, Upstream
from tests._tools import unavailable
from tests.tunnel._harness import TunnelTestCase
from tests.tunnel._jupyter import missing_jupyter, start_jupyter

from ._kernel import V1, execute, open_kernel
from ._proxy import CountingEndpoint, ProxyTestCase


class ProxyThroughTunnelTests(TunnelTestCase, ProxyTestCase):
    skip = unavailable(missing_jupyter())
    timeout = 180

    async def test_jupyter_behind_agent(self) -> None:
        jupyter = await start_jupyter(self)
        await self.start_relay()
        await self.start_agent({"jupyter": f"tcp:127.0.0.1:{jupyter.port}"})
        client = await self.start_client(forward=["jupyter"])
        endpoint = CountingEndpoint(client.link.endpoint("jupyter"))
        upstream = Upstream("gpu/jupyter", endpoint)
        base = await self.start_proxy(
            lambda request: Route(upstream, set_headers={"Authorization": f"token {jupyter.token}"})
        )

        async def call(method: str, path: str, body: object = None) -> object:
            data = None if body is None else json.dumps(body).encode()
            response = await self.http.request(method, base + path, data=data)
            content = await treq.content(response)
            self.assertIn(response.code, (200, 201, 204), content[:300])
            return json.loads(content) if content else None

        status = await self.within(30, "GET /api/status", call("GET", "/api/status"))
        self.assertIn("started", status)  # type: ignore[operator]
        kernel = await self.within(60, "start a kernel", call("POST", "/api/kernels", {}))
        kernel_id = kernel["id"]  # type: ignore[index]
        channels = await self.within(
            60, "kernel WebSocket", open_kernel(self, self.proxy_port, kernel_id, {}, v1=True)
        )
        self.assertEqual(channels.websocket_protocol_in_use, V1)
        result = await self.within(60, "execute 1+1", execute(channels, "1+1"))
        self.assertEqual(result["data"]["text/plain"], "2")
        # The two plain requests shared one channel; the WebSocket had its own.
        self.assertEqual(endpoint.connections, 2)
        await self.within(30, "stop the kernel", call("DELETE", f"/api/kernels/{kernel_id}"))
