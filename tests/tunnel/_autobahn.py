"""Autobahn timers that outlive their connection, and how the tests tidy them up."""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import reactor


def _batched_target(call: Any) -> Any:
    """The function a txaio batched call will run (autobahn schedules its timeouts so)."""
    function = getattr(call, "_call", None)
    code = getattr(function, "__code__", None)
    if code is None or not function.__closure__:
        return None
    cells = dict(zip(code.co_freevars, function.__closure__, strict=True))
    return cells["func"].cell_contents if "func" in cells else None


def cancel_stale_close_timeouts() -> None:
    """Cancel Autobahn close-handshake timeouts whose connection is already closed.

    Autobahn starts one when it begins a close handshake and cancels it only when the peer's
    close reply arrives, not when the connection drops first (its timeout handler then just
    logs "WebSocket connection is already closed"). Such a timer of a closed connection is
    harmless but would fail trial's clean-reactor check; any other pending timer still does.
    """
    for delayed in reactor.getDelayedCalls():  # type: ignore[attr-defined]
        timer = getattr(delayed.func, "__self__", None)
        buckets = getattr(timer, "_buckets", None)
        if not delayed.active() or buckets is None or not delayed.args:
            continue
        bucket = buckets.get(delayed.args[0])
        for call in list(bucket[1]) if bucket else []:
            target = _batched_target(call)
            owner = getattr(target, "__self__", None)
            if (
                getattr(target, "__name__", "") == "onCloseHandshakeTimeout"
                and getattr(owner, "state", None) == WebSocketProtocol.STATE_CLOSED
            ):
                call.cancel()
