"""The shipped nginx config, run by the real nginx in front of a WebSocket + HTTP backend.

The backend is shaped like the relay (one twisted.web Site: a WebSocket route and
``GET /status``); the client is ours (client_endpoint + websocket_client_factory) speaking
wss:// to nginx with a test CA, exactly as an agent or a client reaches a relay behind nginx.
"""

from __future__ import annotations

import json
import os
import re

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nbbridge.transport import client_endpoint, parse_relay_url, websocket_client_factory
from tests.transport._servers import LINK_ROUTE, EchoClientProtocol, echo_site, http_get, serve

from ._nginx import SHIPPED_CONF, SHIPPED_MAIN_CONF, adapt_config, start_nginx

TOKEN = "nginx-test-token"


class NginxProxyTests(TestCase):
    async def test_websocket_and_http_through_nginx(self) -> None:
        site, ws = echo_site()
        relay_port = await serve(self, "tcp:0:interface=127.0.0.1", site)
        https_port, ca = await start_nginx(self, relay_port)
        relay = parse_relay_url(f"wss://localhost:{https_port}", insecure=False)

        factory = websocket_client_factory(
            relay.url_for(LINK_ROUTE), {"Authorization": f"Bearer {TOKEN}"}, EchoClientProtocol
        )
        client = await client_endpoint(reactor, relay, ca).connect(factory)
        assert isinstance(client, EchoClientProtocol)
        await client.opened
        messages = [os.urandom(n) for n in (1, 100, 64 * 1024, 1024 * 1024, 2 * 1024 * 1024)]
        for m in messages:
            client.sendMessage(m, isBinary=True)
        echoed = await client.wait_messages(len(messages))
        self.assertEqual([m for m, _ in echoed], messages)
        self.assertTrue(all(binary for _, binary in echoed))

        (request,) = ws.requests
        self.assertEqual(request.path, LINK_ROUTE)
        self.assertEqual(request.headers["authorization"], f"Bearer {TOKEN}")
        self.assertEqual(request.headers["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(request.headers["x-forwarded-proto"], "https")

        status, headers, body = await http_get(
            client_endpoint(reactor, relay, ca),
            relay.netloc,
            "/status",
            {"Authorization": f"Bearer {TOKEN}"},
        )
        self.assertEqual(status, 200)
        self.assertEqual(headers["server"].split("/")[0], "nginx")
        seen = json.loads(body)["headers"]
        self.assertEqual(seen["authorization"], f"Bearer {TOKEN}")
        self.assertEqual(seen["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(seen["x-forwarded-proto"], "https")
        self.assertEqual(seen["host"], "localhost")

        client.sendClose(1000, "done")
        was_clean, code, _ = await client.closed
        self.assertTrue(was_clean)
        self.assertEqual(code, 1000)


class ShippedConfigTests(SynchronousTestCase):
    """What the shipped file must say, whether or not nginx is installed here."""

    def setUp(self) -> None:
        self.text = SHIPPED_CONF.read_text()
        # Directives only: drop comments.
        self.directives = "\n".join(line.split("#", 1)[0] for line in self.text.splitlines())

    def test_directives(self) -> None:
        for directive in (
            r"map \$http_upgrade \$connection_upgrade \{",
            r"listen 443 ssl;",
            r"ssl_certificate\s+\S+;",
            r"ssl_certificate_key\s+\S+;",
            r"proxy_pass http://127\.0\.0\.1:8765;",
            r"proxy_http_version 1\.1;",
            r"proxy_set_header Upgrade \$http_upgrade;",
            r"proxy_set_header Connection \$connection_upgrade;",
            r"proxy_set_header Authorization \$http_authorization;",
            r"proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;",
            r"proxy_read_timeout 3600s;",
            r"proxy_send_timeout 3600s;",
            r"proxy_buffering off;",
            r"proxy_request_buffering off;",
        ):
            self.assertRegex(self.directives, directive)

    def test_old_workers_let_go_of_tunnels_after_a_reload(self) -> None:
        """worker_shutdown_timeout is main-context: in its own file, which nginx runs above."""
        main = "\n".join(
            line.split("#", 1)[0] for line in SHIPPED_MAIN_CONF.read_text().splitlines()
        )
        self.assertRegex(main, r"(?m)^worker_shutdown_timeout \d+[sm];$")
        self.assertEqual(main.split(), ["worker_shutdown_timeout", main.split()[1]])
        self.assertNotIn("worker_shutdown_timeout", self.directives)
        self.assertIn("nbbridge-main.conf", self.text)

    def test_no_web_front_that_does_not_exist(self) -> None:
        self.assertNotIn("datalab", self.text)
        self.assertNotIn("client_max_body_size", self.directives)

    def test_adapt_config_replaces_each_placeholder_once(self) -> None:
        adapted = adapt_config(self.text, listen_port=1, relay_port=2, cert="/c", key="/k")
        self.assertIn("listen 127.0.0.1:1 ssl;", adapted)
        self.assertIn("proxy_pass http://127.0.0.1:2;", adapted)
        self.assertRegex(adapted, r"ssl_certificate /c;")
        self.assertRegex(adapted, r"ssl_certificate_key /k;")
        self.assertNotRegex(adapted, re.escape("/etc/letsencrypt") + r"\S*;")
