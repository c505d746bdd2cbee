"""Real tools the tests drive (nginx, Chromium, websocat, Jupyter, systemd-analyze).

On a developer's machine a missing tool skips its tests with the reason. CI sets
NBBRIDGE_REQUIRE_TOOLS=1 (.ci/run installs every tool), and there a missing tool is an
error: a failed install must not turn the real-component tests into silent skips.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SkipTest


class ToolMissing(Exception):
    """A tool the tests need is not installed, where it must be (CI)."""


def unavailable(reason: str | None) -> str | None:
    """The skip reason for a missing tool (None if present); an error where tools are required."""
    if reason is not None and os.environ.get("NBBRIDGE_REQUIRE_TOOLS"):
        raise ToolMissing(reason)
    return reason


def skip_unavailable(reason: str) -> None:
    """Skip the running test for a missing tool (an error where tools are required)."""
    raise SkipTest(unavailable(reason))
