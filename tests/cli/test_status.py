"""`nbbridge status`: where it looks, and what it prints for a link that is down."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from nbbridge.cli import main
from nbbridge.cli._errors import UserError
from nbbridge.cli._status import configured_endpoint, render, status_url

DOWN = {
    "link": {
        "state": "backing off",
        "relay": "wss://relay.example.com/",
        "agent": "gpu",
        "agent_key": "nbb1key",
        "up_for": None,
        "rtt_ms": None,
        "reconnects": 1,
        "last_error": "link lost: connection to the relay lost",
    },
    "forwards": [
        {"service": "jupyter", "line": "jupyter → http://127.0.0.1:8080/", "open": 0,
         "connections": 3, "bytes_up": 2_500_000, "bytes_down": 12_000, "rate_up": 0.0,
         "rate_down": 0.0},
        {"service": "ssh", "line": None, "open": 0, "connections": 0, "bytes_up": 0,
         "bytes_down": 0, "rate_up": 0.0, "rate_down": 0.0},
    ],
}  # fmt: skip


class StatusTests(SynchronousTestCase):
    def test_status_url(self) -> None:
        for endpoint, url in (
            ("8767", "http://127.0.0.1:8767/status.json"),
            ("tcp:9000:interface=127.0.0.1", "http://127.0.0.1:9000/status.json"),
            ("tcp6:9000:interface=\\:\\:1", "http://[::1]:9000/status.json"),
        ):
            self.assertEqual(status_url(endpoint), url)
        self.assertIn("give PORT", str(self.assertRaises(UserError, status_url, "unix:/x")))

    def test_render_a_link_that_is_down(self) -> None:
        self.assertEqual(
            render(DOWN).splitlines(),
            [
                "link     backing off · 1 reconnect",
                "relay    wss://relay.example.com/",
                "agent    gpu (nbb1key)",
                "error    link lost: connection to the relay lost",
                "jupyter → http://127.0.0.1:8080/   0 open, 3 in all · sent 2.5 MB (0 B/s) · "
                "received 12.0 kB (0 B/s)",
                "ssh (not listening)   0 open, 0 in all · sent 0 B (0 B/s) · received 0 B (0 B/s)",
            ],
        )

    def test_endpoint_from_the_config(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        config = directory / "client.toml"
        config.write_text('status = "tcp:9001:interface=127.0.0.1"\n')
        self.assertEqual(configured_endpoint(str(config)), "tcp:9001:interface=127.0.0.1")
        config.write_text('relay = "wss://r"\n')
        self.assertEqual(configured_endpoint(str(config)), "tcp:8767:interface=127.0.0.1")
        config.write_text('status = "off"\n')
        self.assertIn("serves no status page", str(self.assertRaises(
            UserError, configured_endpoint, str(config))))  # fmt: skip
        missing = str(directory / "nothing.toml")
        self.assertIn(
            "no config at", str(self.assertRaises(UserError, configured_endpoint, missing))
        )

    def test_default_without_a_config(self) -> None:
        self.patch(os.path, "expanduser", lambda p: p.replace("~", "/nonexistent"))
        self.assertEqual(configured_endpoint(None), "tcp:8767:interface=127.0.0.1")

    def test_bad_endpoint_is_one_line(self) -> None:
        err = io.StringIO()
        with redirect_stderr(err):
            status = main(["status", "--status", "unix:/run/x.sock"])
        self.assertEqual(status, 2)
        self.assertEqual(
            err.getvalue(),
            "nbbridge: status endpoint unix:/run/x.sock: give PORT or tcp:PORT:interface=HOST\n",
        )
