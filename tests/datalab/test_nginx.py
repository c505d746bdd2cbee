"""deploy/nginx/nbbridge-datalab.conf, run by the real nginx (TLS) in front of a datalab.

Through nginx: a signed upload, the view (its cookie Secure, since nginx says https), the
proxied API and a kernel WebSocket over wss:// whose Origin is the https front's.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid

import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from treq.client import HTTPClient
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from nbbridge.datalab import SESSION_COOKIE
from tests._cleanup import add_async_cleanup
from tests._tools import unavailable
from tests.deploy._nginx import REPO, start_nginx
from tests.tunnel._jupyter import KernelChannels, execute_request, missing_jupyter

from ._harness import CSV, DatalabTestCase, sign

CONF = REPO / "deploy" / "nginx" / "nbbridge-datalab.conf"


class NginxTests(DatalabTestCase):
    skip = unavailable(missing_jupyter())

    async def test_through_nginx(self) -> None:
        await self.start_datalab()
        backend = int(self.base.rsplit(":", 1)[1])
        port, ca = await start_nginx(self, backend, conf=CONF, shipped_port=8890)
        with open(ca, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        pool = HTTPConnectionPool(reactor, persistent=False)
        https = HTTPClient(Agent(reactor, BrowserLikePolicyForHTTPS(trust), pool=pool))
        front = f"https://localhost:{port}"

        ts = str(int(time.time()))
        query = urllib.parse.urlencode({"ts": ts, "filename": "weather.csv"})
        response = await self.within(
            120,
            "upload through nginx",
            https.post(
                f"{front}/datalab/start?{query}",
                data=CSV,
                headers={"X-SIGN": sign(ts, "weather.csv")},
            ),
        )
        nonce = (await treq.json_content(response))["result"]["nonce"]

        response = await https.get(f"{front}/datalab/view/{nonce}/lab", allow_redirects=False)
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"Location"), [b"/lab"])
        set_cookie = response.headers.getRawHeaders(b"Set-Cookie")[0].decode()
        self.assertIn("secure", set_cookie.lower())
        cookie = set_cookie.split(";")[0].split("=", 1)[1]
        headers = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": front}

        response = await https.post(
            f"{front}/api/kernels", json={"name": "python3"}, headers=headers
        )
        kernel = await treq.json_content(response)
        self.assertIn(response.code, (200, 201), kernel)

        url = f"wss://localhost:{port}/api/kernels/{kernel['id']}/channels"
        factory = WebSocketClientFactory(url, headers=headers, reactor=reactor)
        factory.protocol = KernelChannels
        endpoint = wrapClientTLS(
            ssl.optionsForClientTLS("localhost", trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        channels: KernelChannels = await endpoint.connect(factory)

        async def close() -> None:
            if channels.state == channels.STATE_OPEN:
                channels.sendClose(1000)
            await channels.lost

        add_async_cleanup(self, close)
        await self.within(60, "kernel WebSocket through nginx", channels.opened)
        request = execute_request(
            "print(open('weather.csv').read().count('\\n'))", uuid.uuid4().hex
        )
        channels.send_json(request)
        stream = await self.within(60, "output", channels.reply_to(request, "iopub", "stream"))
        self.assertEqual(stream["content"]["text"], "4\n")
