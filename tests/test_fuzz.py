"""The fuzz targets in fuzz/: each one's seeds in process, then a bounded atheris run of each.

The bounded run gives every target `NBBRIDGE_FUZZ_RUNS` inputs (100 000 by default), two
targets at a time, each in its own process from a fresh corpus of its seeds. A target that
finds a failing input fails the test with the target's report; the input is kept under
`_trial_temp/fuzz-artifacts/` to replay with `python -m fuzz.TARGET FILE`.
"""

from __future__ import annotations

import gc
import importlib
import os
from pathlib import Path
from typing import Any
from weakref import WeakSet

from autobahn.websocket.protocol import WebSocketProtocol
from fuzz.run import TARGETS, failure_summary, run_all
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests._tools import skip_unavailable

#: Inputs per target in `make test`; the long runs are bench/fuzz_long.py's.
RUNS = int(os.environ.get("NBBRIDGE_FUZZ_RUNS", "100000"))


class SeedTests(TestCase):
    """Every seed passes its target in this process: the harnesses work, without atheris too."""

    def test_seeds_pass(self) -> None:
        for target in TARGETS:
            module = importlib.import_module(f"fuzz.{target}")
            seeds = module.seeds()
            self.assertTrue(seeds, f"{target} has no seeds")
            for seed in seeds:
                module.TestOneInput(seed)

    def test_relay_http_leaves_nothing_behind(self) -> None:
        """relay_http's inputs share one relay: none may keep a WebSocket or a reactor timer.

        A long run stopped at 2 GB after 5.5 million inputs: each upgraded connection's loss
        went to the HTTP channel it had left, so its WebSocket was never closed, and Autobahn's
        timers went on the global reactor, which never runs under the fuzzer.
        """
        from fuzz import relay_http

        scheduled: list[object] = []
        call_later = reactor.callLater

        def recording(delay: float, f: Any, *args: Any, **kw: Any) -> Any:
            scheduled.append(f)
            return call_later(delay, f, *args, **kw)

        self.patch(reactor, "callLater", recording)
        gc.collect()
        existing = WeakSet(o for o in gc.get_objects() if isinstance(o, WebSocketProtocol))
        for seed in relay_http.seeds():
            relay_http.TestOneInput(seed)
        gc.collect()
        kept = [
            type(o).__name__
            for o in gc.get_objects()
            if isinstance(o, WebSocketProtocol) and o not in existing
        ]
        self.assertEqual([], kept)
        self.assertEqual([], scheduled)

    def test_a_broken_invariant_fails(self) -> None:
        """A target's checks can fail: bytes that decode as one frame but were cut differently."""
        from fuzz import mux_codec

        original = mux_codec.encode
        self.patch(mux_codec, "encode", lambda frame: original(frame) + b"\x00")
        with self.assertRaises(AssertionError):
            mux_codec.TestOneInput(mux_codec.seeds()[3])


class BoundedFuzzTests(TestCase):
    """Each target for RUNS inputs under atheris, coverage-guided."""

    def test_targets(self) -> None:
        try:
            import atheris  # noqa: F401
        except ImportError:
            skip_unavailable("atheris is not installed (pip install '.[test]')")
        artifacts = Path(self.mktemp()).resolve() / "fuzz-artifacts"
        results = run_all(TARGETS, RUNS, artifacts=artifacts, jobs=2)
        failed = [r for r in results if not r.ok]
        self.assertEqual(
            [],
            [r.target for r in failed],
            "\n\n".join(f"{r.target}:\n{failure_summary(r)}" for r in failed),
        )
        self.assertEqual([RUNS] * len(TARGETS), [r.runs for r in results])
