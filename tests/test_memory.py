"""tune_malloc: applies glibc's settings where it can, and is a harmless no-op elsewhere."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from nbbridge import _memory
from nbbridge._memory import tune_malloc


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
