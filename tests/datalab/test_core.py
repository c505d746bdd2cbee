"""The datalab's rules alone: signatures, names, redirects, nonce expiry, idle stops.

Unit tests on a `Clock` with a stand-in launcher (no process); the same paths run against
real jupyter-server instances in test_api.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.trial import unittest

from nbbridge.datalab import (
    ApiError,
    Datalab,
    DatalabConfig,
    DatalabState,
    InstanceRecord,
    Instances,
)
from nbbridge.datalab._api import (
    check_signature,
    file_path,
    parse_timestamp,
    redirect_target,
    sanitize_filename,
)
from nbbridge.store import MemoryStore

T = TypeVar("T")
KEY = b"k"
NOW = 1_700_000_000


def sign(ts: str, name: str) -> str:
    return hashlib.sha256(KEY + (ts + name).encode()).hexdigest()


@attrs.define
class StandInLauncher:
    """Records starts and stops; its instances end when stopped."""

    name: str = "stand-in"
    spool_dir: str = ""
    started: list[str] = attrs.Factory(list)
    stopped: list[str] = attrs.Factory(list)
    ended: dict[str, Deferred[None]] = attrs.Factory(dict)

    def spool(self) -> str:
        return self.spool_dir

    async def start(self, instance_id: str, filename: str, upload: str) -> InstanceRecord:
        self.started.append(instance_id)
        self.ended[instance_id] = Deferred()
        return InstanceRecord(instance_id, self.name, filename, "tok", "127.0.0.1", 1)

    def when_ended(self, record: InstanceRecord) -> Deferred[None]:
        return self.ended[record.id]

    def adopt(self, record: InstanceRecord) -> None:
        self.ended[record.id] = Deferred()

    async def stop(self, record: InstanceRecord) -> None:
        self.stopped.append(record.id)
        self.ended[record.id].callback(None)

    def endpoint(self, record: InstanceRecord) -> IStreamClientEndpoint:
        return TCP4ClientEndpoint(Clock(), "127.0.0.1", 1)  # type: ignore[arg-type]

    async def close(self) -> None:
        pass


class PureRuleTests(unittest.TestCase):
    def test_timestamps(self) -> None:
        self.assertEqual(parse_timestamp("1700000000"), 1_700_000_000)
        self.assertEqual(parse_timestamp("1700000000123"), 1_700_000_000.123)
        for bad in (None, "", "soon", "nan", "-1", "inf"):
            self.assertRaises(ApiError, parse_timestamp, bad)

    def test_signature_is_case_insensitive_hex_and_constant_shape(self) -> None:
        check_signature(KEY, "1", "a.csv", sign("1", "a.csv").upper())
        with self.assertRaises(ApiError) as e:
            check_signature(KEY, "1", "a.csv", "zz\u00e9")
        self.assertEqual(e.exception.code, "BAD_SIGNATURE")
        with self.assertRaises(ApiError):
            check_signature(KEY, "1", "a.csv", sign("1", "a.csv"), "md5")

    def test_filenames(self) -> None:
        for good in ("data.csv", "Ünïcode data.xlsx", "a..csv".replace("..", "."), "x"):
            self.assertEqual(sanitize_filename(good), good)
        for bad in (
            "",
            None,
            "../a",
            "a/b",
            "a\\b",
            ".env",
            "..",
            "a..b",
            "tab\there",
            "nul\x00",
            "rtl\u202egpj.exe",
            " lead",
            "x" * 256,
        ):
            with self.assertRaises(ApiError, msg=repr(bad)) as e:
                sanitize_filename(bad)
            self.assertEqual(e.exception.code, "BAD_FILENAME")

    def test_redirects_stay_on_the_site(self) -> None:
        self.assertEqual(redirect_target("lab/tree/a.csv", ""), "/lab/tree/a.csv")
        self.assertEqual(redirect_target("lab", "reset"), "/lab?reset")
        for trick in ("//evil", "%2F%2Fevil", "/\\evil", "%5C/evil", "\t//evil", "%0A//evil"):
            target = redirect_target(trick, "")
            self.assertTrue(target.startswith("/"), trick)
            self.assertNotIn(target[1], "/\\", trick)
        self.assertEqual(redirect_target("lab", "", "//evil"), "/lab")
        self.assertEqual(redirect_target("lab", "", "/data/"), "/data/lab")

    def test_file_paths(self) -> None:
        self.assertEqual(file_path(["dir", "a b.csv"]), "dir/a%20b.csv")
        for bad in (["..", "x"], ["a/..", "x"], [""], [], ["a\\b"], ["."], ["a\x00"]):
            self.assertRaises(ApiError, file_path, bad)


class CoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.launcher = StandInLauncher(spool_dir=self.mktemp())
        os.makedirs(self.launcher.spool_dir)
        state = DatalabState.over(MemoryStore(self.clock))
        self.instances = Instances(
            self.clock, self.launcher, state, idle_timeout=100, max_instances=2
        )
        self.datalab = Datalab(
            self.clock, DatalabConfig(KEY, freshness=300, nonce_ttl=600), state, self.instances
        )

    def run_now(self, coroutine: Any) -> Any:
        """Drive COROUTINE to its end: the store answers on later (zero-delay) turns."""
        d = Deferred.fromCoroutine(coroutine)
        for _ in range(100):
            if d.called:
                break
            self.clock.advance(0)
        results: list[Any] = []
        d.addBoth(results.append)
        self.assertTrue(results, "did not finish")
        if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]

    def upload(self) -> str:
        path = os.path.join(self.launcher.spool_dir, os.urandom(4).hex())
        with open(path, "wb") as f:
            f.write(b"a,b\n")
        return path

    def start(self, ts: str | None = None, name: str = "a.csv") -> str:
        ts = ts or str(NOW)
        nonce: str = self.run_now(self.datalab.start(ts, name, sign(ts, name), None, self.upload()))
        return nonce

    def refused(self, coroutine: Any) -> ApiError:
        with self.assertRaises(ApiError) as e:
            self.run_now(coroutine)
        return e.exception

    def test_nonce_expires(self) -> None:
        self.instances.idle_timeout = 10_000
        nonce = self.start()
        self.clock.advance(599)
        self.run_now(self.datalab.view(nonce))
        self.run_now(self.datalab.view(nonce))
        self.clock.advance(2)
        self.assertEqual(self.refused(self.datalab.view(nonce)).status, 404)
        self.assertEqual(self.refused(self.datalab.static(nonce)).status, 404)

    def test_refused_upload_is_removed(self) -> None:
        path = self.upload()
        self.refused(self.datalab.start(str(NOW), "a.csv", "bad", None, path))
        self.assertFalse(os.path.exists(path))

    def test_replay_window(self) -> None:
        self.start()
        error = self.refused(
            self.datalab.start(str(NOW), "a.csv", sign(str(NOW), "a.csv"), None, self.upload())
        )
        self.assertEqual((error.status, error.code), (409, "REPLAY"))

    def test_full(self) -> None:
        self.start(name="a.csv")
        self.start(name="b.csv")
        error = self.refused(
            self.datalab.start(str(NOW), "c.csv", sign(str(NOW), "c.csv"), None, self.upload())
        )
        self.assertEqual((error.status, error.code), (503, "FULL"))

    def test_idle_stop_and_activity(self) -> None:
        nonce = self.start()
        session = self.run_now(self.datalab.view(nonce))
        self.clock.advance(90)
        self.run_now(self.datalab.session(session))  # a request: idle time starts again
        self.clock.advance(90)
        self.assertEqual(self.launcher.stopped, [])
        closed = self.instances.socket_opened(self.launcher.started[0])
        self.clock.advance(1000)  # an open socket keeps it
        self.assertEqual(self.launcher.stopped, [])
        closed()
        self.clock.advance(99)
        self.assertEqual(self.launcher.stopped, [])
        self.clock.advance(2)
        for _ in range(10):
            self.clock.advance(0)
        self.assertEqual(self.launcher.stopped, self.launcher.started)
        self.assertEqual(self.refused(self.datalab.session(session)).status, 403)

    def test_sessions(self) -> None:
        self.assertEqual(self.refused(self.datalab.session(None)).status, 401)
        self.assertEqual(self.refused(self.datalab.session("forged")).status, 403)
        a = self.run_now(self.datalab.view(self.start(name="a.csv")))
        b = self.run_now(self.datalab.view(self.start(name="b.csv")))
        self.assertNotEqual(
            self.run_now(self.datalab.session(a)).id, self.run_now(self.datalab.session(b)).id
        )
