"""tune_malloc: applies glibc's settings where it can, and is a harmless no-op elsewhere."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nbbridge import _memory
from nbbridge._memory import IdleTrim, care_for_memory, tune_malloc


def _is_glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


class TuneMallocTests(SynchronousTestCase):
    def test_applies_on_glibc(self) -> None:
        """On glibc the thresholds are set; elsewhere nothing is done, and it says so."""
        applied = tune_malloc()
        self.assertIs(applied, sys.platform.startswith("linux") and _is_glibc())

    def test_refused_value(self) -> None:
        """A C library that refuses a setting: reported as not applied."""

        class Refusing:
            def gnu_get_libc_version(self) -> bytes:
                return b"2.36"

            @staticmethod
            def mallopt(param: int, value: int) -> int:
                return 0

        self.patch(_memory.ctypes, "CDLL", lambda *args: Refusing())
        self.patch(_memory.sys, "platform", "linux")
        self.assertFalse(tune_malloc())

    def test_no_c_library(self) -> None:
        """Without a loadable C library it returns False rather than raising."""

        def unloadable(*args: Any, **kwargs: Any) -> Any:
            raise OSError("no C library here")

        self.patch(_memory.ctypes, "CDLL", unloadable)
        self.assertFalse(tune_malloc())

    def test_other_platform(self) -> None:
        self.patch(_memory.sys, "platform", "darwin")
        self.assertFalse(tune_malloc())


class IdleTrimTests(SynchronousTestCase):
    """The heap is given back once per idle period: after work, not during it, not again."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.cpu = 0.0
        self.trims = 0

        def trim() -> None:
            self.trims += 1

        self.trimmer = IdleTrim(trim, interval=1.0, cpu_seconds=lambda: self.cpu, clock=self.clock)
        self.trimmer.startService()
        self.addCleanup(self.trimmer.stopService)

    def second(self, cpu_used: float) -> None:
        """One interval passes in which the process used CPU_USED seconds."""
        self.cpu += cpu_used
        self.clock.advance(1.0)

    def test_idle_from_the_start_never_trims(self) -> None:
        for _ in range(5):
            self.second(0.0)
        self.assertEqual(self.trims, 0)

    def test_trims_once_when_work_stops(self) -> None:
        for _ in range(3):
            self.second(0.5)  # a transfer
        self.assertEqual(self.trims, 0)
        self.second(0.001)
        self.assertEqual(self.trims, 1)
        for _ in range(10):
            self.second(0.001)  # pings, an idle tunnel
        self.assertEqual(self.trims, 1)
        self.second(0.3)
        self.second(0.0)
        self.assertEqual(self.trims, 2)

    def test_stops_with_its_service(self) -> None:
        self.trimmer.stopService()
        self.second(0.5)
        self.second(0.0)
        self.assertEqual(self.trims, 0)


class CareForMemoryTests(SynchronousTestCase):
    def test_a_daemon_gets_an_idle_trim_on_glibc(self) -> None:
        service = MultiService()
        care_for_memory(service, Clock())
        trims = [s for s in service if isinstance(s, IdleTrim)]
        self.assertEqual(len(trims), 1 if _is_glibc() else 0)

    def test_elsewhere_nothing_is_added(self) -> None:
        self.patch(_memory.sys, "platform", "darwin")
        service = MultiService()
        care_for_memory(service, Clock())
        self.assertEqual(list(service), [])


class EntryPointTests(SynchronousTestCase):
    """The process is tuned by twistd's entry point for the daemon, never by makeService itself."""

    def test_only_the_twistd_entry_point_tunes_the_process(self) -> None:
        from nbbridge import _daemon
        from nbbridge.relay import tap
        from twisted.plugins import nbbridge_plugins

        calls: list[str] = []
        self.patch(_daemon, "before_service", lambda reactor: calls.append("before"))
        self.patch(_daemon, "after_service", lambda: calls.append("after"))
        options = tap.Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
        tap.makeService(options)
        self.assertEqual(calls, [])
        nbbridge_plugins.nbbridgeRelay.makeService(options)
        self.assertEqual(calls, ["before", "after"])
