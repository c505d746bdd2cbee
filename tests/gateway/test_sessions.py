"""Reservations through the REST API, service scripts from --remote_session_config, /v1/stop."""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from nbbridge.gateway._scripts import ServiceSpec, load_config
from nbbridge.gateway._sessions import ApiError, Sessions
from nbbridge.gateway._splice import Refused
from nbbridge.gateway._users import token_hash
from nbbridge.store import PASSWORD_ENV, MemoryStore

from .._redis import start_redis
from ._harness import RFB_GREETING, open_ws, start_gateway
from ._scripted import EVENTS, SCRIPT, ScriptedService


def write_config(directory: str, services: dict[str, Any]) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "scripted.py"), "w") as f:
        f.write(SCRIPT)
    path = os.path.join(directory, "services.json")
    with open(path, "w") as f:
        json.dump(services, f)
    return path


async def connected(gw: Any) -> None:
    """Wait until GW's Redis store is connected (and authenticated): a refused password fails
    the test in 30 s, with the store's health, instead of hanging until trial's timeout."""
    backend = gw.service.getServiceNamed("sessions").backend
    try:
        await backend.when_connected().addTimeout(30, reactor)
    except defer.TimeoutError:
        raise AssertionError(f"the store did not connect: {backend.health.reason}") from None


class ReservationTests(TestCase):
    def setUp(self) -> None:
        EVENTS.reset()
        self.stopped: list[bool] = []

    async def gateway(self, services: dict[str, Any], *extra: str) -> Any:
        config = write_config(self.mktemp(), services)
        gw = await start_gateway(
            self,
            ["--remote_session_config", config, "--http_port", "0", *extra, "0"],
        )
        self.base = f"http://127.0.0.1:{gw.http_port}"
        return gw

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(self.base + path, headers=headers, pool=pool)
        return response.code, json.loads(await response.text())

    async def reserve(self, service: str, token: str | None = None) -> tuple[int, Any]:
        return await self.get(f"/v1/reserve?service={service}", token)

    async def test_reserve_connect_close_stops(self) -> None:
        gw = await self.gateway(
            {"Viz": {"script": "scripted.py", "count": 2, "options": {"file_ext": [".vtk"]}}}
        )
        code, body = await self.reserve("Viz")
        self.assertEqual(code, 200)
        self.assertEqual((body["service"], body["expires_in"]), ("Viz", 300))
        self.assertGreaterEqual(len(body["token"]), 22)
        code, status = await self.get("/v1/status")
        self.assertEqual(
            status["services"]["Viz"],
            {"count": 2, "in_use": 0, "reserved": 1, "file_ext": [".vtk"], "group": None},
        )
        client = await open_ws(self, gw.ws_port, f"/any?token={body['token']}")
        await EVENTS.wait(("start", 0))
        self.assertEqual(await client.messages.get(), (RFB_GREETING, True))
        client.sendMessage(b"both ways", isBinary=True)
        self.assertEqual(await client.messages.get(), (b"both ways", True))
        _, status = await self.get("/v1/status")
        self.assertEqual(status["services"]["Viz"]["in_use"], 1)
        self.assertEqual(status["connections"], 1)
        client.close(1000, "done")
        await EVENTS.wait(("stop", 0))
        # The token was used once: a second WebSocket with it gets no service.
        again = await open_ws(self, gw.ws_port, f"/?token={body['token']}")
        code, reason = await again.closed
        self.assertEqual(code, 4401)
        self.assertIn("unknown, used or expired", reason)

    async def test_reservations_in_redis(self) -> None:
        """--store redis://: the token is kept in a real redis-server, taken once."""
        redis = await start_redis(self)
        gw = await self.gateway(
            {"Viz": {"script": "scripted.py", "count": 1}}, "--store", redis.url
        )
        await connected(gw)
        _, body = await self.reserve("Viz")
        keys = await redis.cli("--scan", "--pattern", "gateway:reservation:*")
        self.assertEqual(len(keys.split()), 1)
        client = await open_ws(self, gw.ws_port, f"/?token={body['token']}")
        self.assertEqual(await client.messages.get(), (RFB_GREETING, True))
        self.assertEqual(await redis.cli("--scan", "--pattern", "gateway:reservation:*"), "")
        client.close(1000, "done")
        await EVENTS.wait(("stop", 0))

    async def test_reservations_in_password_protected_redis(self) -> None:
        """--store-password-file, then $NBBRIDGE_REDIS_PASSWORD: a real redis-server with
        requirepass keeps the reservation."""
        password = 'gw pass: "quoted"'
        redis = await start_redis(self, password=password)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(password + "\n")
        services = {"Viz": {"script": "scripted.py", "count": 2}}
        self.patch(os, "environ", {**os.environ, PASSWORD_ENV: "not this one"})
        by_file = await self.gateway(services, "--store", redis.url, "--store-password-file", path)
        await connected(by_file)
        code, _ = await self.reserve("Viz")
        self.assertEqual(code, 200)
        self.patch(os, "environ", {**os.environ, PASSWORD_ENV: password})
        by_env = await self.gateway(services, "--store", redis.url)
        await connected(by_env)
        code, body = await self.reserve("Viz")
        self.assertEqual(code, 200)
        keys = await redis.cli("--scan", "--pattern", "gateway:reservation:*")
        self.assertEqual(len(keys.split()), 2)
        client = await open_ws(self, by_env.ws_port, f"/?token={body['token']}")
        self.assertEqual(await client.messages.get(), (RFB_GREETING, True))

    async def test_unknown_token_refused_without_service_byte(self) -> None:
        gw = await self.gateway({"Viz": {"script": "scripted.py", "count": 1}})
        client = await open_ws(self, gw.ws_port, "/?token=not-a-reservation")
        code, _reason = await client.closed
        self.assertEqual(code, 4401)
        self.assertEqual(client.messages.pending, [])
        self.assertEqual(EVENTS.seen, [])

    async def test_count_limit(self) -> None:
        await self.gateway({"Viz": {"script": "scripted.py", "count": 1}})
        code, _ = await self.reserve("Viz")
        self.assertEqual(code, 200)
        code, body = await self.reserve("Viz")
        self.assertEqual(code, 503)
        self.assertIn("all 1 instances of Viz are taken", body["error"])
        code, body = await self.reserve("Nope")
        self.assertEqual((code, body), (404, {"error": "unknown service: Nope"}))

    async def test_groups_and_tokens(self) -> None:
        users = os.path.join(self.mktemp())
        with open(users, "w") as f:
            json.dump(
                {
                    "users": {
                        "ann": {"token_sha256": token_hash("ann-token"), "groups": ["vis"]},
                        "bob": {"token_sha256": token_hash("bob-token"), "groups": ["other"]},
                    }
                },
                f,
            )
        admin = self.mktemp()
        with open(admin, "w") as f:
            f.write("admin-secret\n")
        os.chmod(admin, 0o600)
        services = {"Viz": {"script": "scripted.py", "count": 2, "options": {"group": "vis"}}}
        await self.gateway(services, "--users", users, "--admin-token-file", admin)
        code, body = await self.reserve("Viz", "bob-token")
        self.assertEqual(code, 403)
        self.assertIn("only for group vis", body["error"])
        code, _ = await self.reserve("Viz", "wrong-token")
        self.assertEqual(code, 401)
        code, _ = await self.reserve("Viz", "ann-token")
        self.assertEqual(code, 200)
        code, _ = await self.get("/v1/stop", "ann-token")
        self.assertEqual(code, 403)

    async def test_failing_script(self) -> None:
        gw = await self.gateway(
            {"Bad": {"script": "scripted.py", "count": 1, "options": {"fail": True}}}
        )
        for _ in range(2):  # the index is freed: it can be reserved again
            code, body = await self.reserve("Bad")
            self.assertEqual(code, 200)
            client = await open_ws(self, gw.ws_port, f"/?token={body['token']}")
            code, reason = await client.closed
            self.assertEqual(code, 4503)
            self.assertIn("Bad failed to start: RuntimeError: scripted failure", reason)
        _, status = await self.get("/v1/status")
        self.assertEqual(status["services"]["Bad"]["in_use"], 0)

    async def test_script_reports_no_socket_in_time(self) -> None:
        gw = await self.gateway(
            {"Slow": {"script": "scripted.py", "count": 1,
                      "options": {"hang": True, "ready_timeout": 0.5}}}
        )  # fmt: skip
        _, body = await self.reserve("Slow")
        client = await open_ws(self, gw.ws_port, f"/?token={body['token']}")
        code, reason = await client.closed
        self.assertEqual(code, 4503)
        self.assertEqual(reason, "Slow failed to start: it reported no socket within 0.5 s")
        code, _ = await self.reserve("Slow")
        self.assertEqual(code, 200)  # the index was freed

    async def test_stop(self) -> None:
        stop_called: Deferred[None] = Deferred()
        from nbbridge.gateway.tap import Options, makeService

        config = write_config(self.mktemp(), {"Viz": {"script": "scripted.py", "count": 1}})
        options = Options()
        options.parseOptions(["--remote_session_config", config, "--http_port", "0", "0"])
        service = makeService(options, reactor, stop=lambda: stop_called.callback(None))
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        ws_port = (await service.getServiceNamed("ws").port).getHost().port
        self.base = (
            f"http://127.0.0.1:{(await service.getServiceNamed('http').port).getHost().port}"
        )
        _, body = await self.reserve("Viz")
        client = await open_ws(self, ws_port, f"/?token={body['token']}")
        await EVENTS.wait(("start", 0))
        code, answer = await self.get("/v1/stop")
        self.assertEqual((code, answer), (200, {"stopping": True}))
        await stop_called
        await service.stopService()
        code, reason = await client.closed
        self.assertEqual((code, reason), (1001, "the gateway is stopping"))
        await EVENTS.wait(("stop", 0))


class SessionsUnitTests(TestCase):
    """Expiry with a fake clock."""

    def test_expiry_frees_the_index(self) -> None:
        clock = task.Clock()
        spec = ServiceSpec("Viz", ScriptedService, 1, {})
        sessions = Sessions([spec], MemoryStore(clock), clock, 300, fallback=None)  # type: ignore[arg-type]

        def settle(d: Deferred[Any]) -> Deferred[Any]:
            clock.advance(0)  # the memory store answers on a later turn
            return d

        def reserve() -> Deferred[Any]:
            return settle(Deferred.fromCoroutine(sessions.reserve("Viz", "u", None)))

        reserved = self.successResultOf(reserve())
        full = self.failureResultOf(reserve(), ApiError)
        self.assertEqual(full.value.status, 503)  # type: ignore[attr-defined]
        clock.advance(301)
        self.assertEqual(sessions.status()["services"]["Viz"]["reserved"], 0)
        refused = self.failureResultOf(settle(sessions.open(reserved["token"], _FakeWs())), Refused)  # type: ignore[arg-type]
        self.assertEqual(refused.value.code, 4401)  # type: ignore[attr-defined]
        self.successResultOf(reserve())

    def test_load_config_errors(self) -> None:
        from nbbridge.gateway._scripts import ConfigError

        path = self.mktemp()
        with open(path, "w") as f:
            f.write('{"X": {"count": 0}}')
        with self.assertRaises(ConfigError):
            load_config(path)


class _FakeWs:
    label = "test websocket"
