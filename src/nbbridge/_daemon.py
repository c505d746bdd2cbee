"""What a daemon process started by twistd does beyond its service: process-wide tuning.

Only twistd's entry point (the plug-ins' ``makeService``) calls these, never a tap's
``makeService``, which tests and other programs also call: the settings change the whole
process.
"""

from __future__ import annotations

import gc
from typing import Any

from nbbridge._internals import lazy_debug_formatting, lean_dispatch, log_time_once_a_second
from nbbridge._memory import tune_malloc


def before_service(reactor: Any) -> None:
    """glibc's malloc thresholds (`tune_malloc`), epoll events dispatched without the
    legacy log context (`lean_dispatch`: about a fifth less CPU per event on each hop), and
    no pretty-printing for Autobahn's debug lines that are not emitted
    (`lazy_debug_formatting`: a seventh of the relay's CPU per link set up), and the log's
    timestamp formatted once a second (`log_time_once_a_second`)."""
    tune_malloc()
    lean_dispatch(reactor)
    lazy_debug_formatting()
    log_time_once_a_second()


def after_service() -> None:
    """Freeze what start-up built (modules, classes, the service tree) out of the collector.

    A full collection otherwise walks every object the imports of Twisted, Autobahn,
    cryptography and nbbridge left (some 65 000): tens of milliseconds at once on the
    reactor thread, whenever the collector's thresholds happen to trip, which lands in the
    latency tail of whatever request is in flight (issue 17). Frozen, those objects are
    never traversed again; only what the running daemon creates is. A collection first, so
    that no start-up garbage is frozen for good.
    """
    gc.collect()
    gc.freeze()
