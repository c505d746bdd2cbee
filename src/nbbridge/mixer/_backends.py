"""The servers the mixer mixes: the local Jupyter and the remotes, each an `Upstream`.

A backend is what the proxy needs (an `Upstream`), the remote Jupyter's own token (the
mixer's token never leaves the mixer), the ``Host`` to send (None: the client's), and
whether it is up as last seen, with the reason it is down, so that a remote going down or
coming back is logged once, not at every request.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from nbbridge.tunnel import LinkState
from nbbridge.web import Upstream

_log = Logger()


@attrs.define(eq=False)
class Backend:
    """One Jupyter server of the mix.

    :ivar name: None for the local server, else the remote's name (the spec prefix).
    :ivar upstream: where the proxy and the mixer's own calls go.
    :ivar token: that server's own token, sent as ``Authorization: token T``.
    :ivar host: the ``Host`` header to send (a remote URL's host); None keeps the client's.
    """

    name: str | None
    upstream: Upstream
    token: str | None
    host: bytes | None = None
    #: the `AgentLink` of an ``agent:`` remote: while it backs off, calls fail at once
    link: Any = None
    down: str | None = None

    def link_down(self) -> str | None:
        """Why the remote's link is down now (it is waiting to retry), or None."""
        if self.link is not None and self.link.state is LinkState.BACKING_OFF:
            return f"link to agent {self.link.agent} down: {self.link.last_error}"
        return None

    @property
    def label(self) -> str:
        return "local" if self.name is None else self.name

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def headers(self, client_host: bytes | None) -> Headers:
        """Headers for the mixer's own calls to this backend."""
        headers = Headers({b"Accept": [b"application/json"]})
        headers.setRawHeaders(b"Host", [self.host or client_host or b"127.0.0.1"])
        for key, value in self.auth().items():
            headers.setRawHeaders(key.encode(), [value.encode()])
        return headers

    def went_down(self, reason: str) -> None:
        if self.down is None:
            what = "local Jupyter" if self.name is None else f"remote {self.name}"
            suffix = "" if self.name is None else ": its kernelspecs are hidden"
            _log.warn(
                "mixer: {what} unreachable ({reason}){suffix}",
                what=what,
                reason=reason,
                suffix=suffix,
            )
        self.down = reason

    def came_up(self) -> None:
        if self.down is not None:
            what = "local Jupyter" if self.name is None else f"remote {self.name}"
            _log.info("mixer: {what} reachable again", what=what)
        self.down = None
