"""``add_async_cleanup``: ``TestCase.addCleanup`` for an ``async def`` clean-up.

Trial awaits a coroutine returned by a clean-up only from Twisted 25.5 on. Older ones, which
setup.cfg still allows (Twisted 23.10 is tested by `make test-lowest`), drop it unawaited: the
clean-up never runs and the test ends with a dirty reactor. A Deferred works on every version.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase


def add_async_cleanup(
    test: TestCase, cleanup: Callable[..., Coroutine[Any, Any, object]], *args: Any
) -> None:
    """Run ``cleanup(*args)`` at the end of TEST and wait for it, as ``addCleanup`` does."""
    test.addCleanup(lambda: Deferred.fromCoroutine(cleanup(*args)))
