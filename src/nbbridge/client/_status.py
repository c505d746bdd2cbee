# twisted.web's resource API is untyped.
# mypy: disable-error-code="no-untyped-call"
"""The client's status page and JSON, on loopback: is the link up, and what does it carry.

* `GET /`            the page (HTML, `app.js`, `app.css`, and the shared `chart.js`)
* `GET /status.json` the document: the link (state, relay, agent, round trip, reconnects), the
  session (live or suspended and since when, resumes, the last suspension's length) and
  each forward (what to open, connections, bytes and rates both ways)

`nbbridge status` prints the same document. Every `interval` seconds the sampler works out the
rates and pings the relay over the link's WebSocket to measure the round trip. The listener
accepts loopback endpoints only (checked in the options): the page names the agent and the
services, which nobody else on the network needs to learn.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import nbbridge
from nbbridge.contract import STATUS_ENDPOINT, STATUS_JSON_PATH
from nbbridge.transport import endpoint_string
from nbbridge.tunnel import AgentLink
from nbbridge.webpage import StaticFile, shared_file

from ._forward import ForwardService, describe, open_url

#: The default status endpoint (the port's choice is explained in `nbbridge.contract`).
DEFAULT_STATUS = STATUS_ENDPOINT
#: Seconds between samples (rates, round trip); the page refreshes as often.
INTERVAL = 2.0

_JS = b"text/javascript; charset=utf-8"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_status_endpoint(text: str) -> str | None:
    """The endpoint string for ``--status`` (None for ``off``); refuses one off loopback.

    A bare port means 127.0.0.1; a TCP endpoint must name a loopback interface; a UNIX
    socket is local by nature.
    """
    if text.strip().lower() in ("off", "none", "no", ""):
        return None
    endpoint = endpoint_string(text)
    kind = endpoint.split(":", 1)[0]
    if kind == "unix":
        return endpoint
    match = re.search(r"(?:^|:)interface=((?:\\.|[^:\\])*)", endpoint)
    interface = match.group(1).replace("\\", "") if match else None
    if kind not in ("tcp", "tcp6") or interface is None:
        raise ValueError(
            f"--status {text}: give a port, tcp:PORT:interface=127.0.0.1 or off "
            "(the status page listens on loopback only)"
        )
    if not _is_loopback(interface):
        raise ValueError(f"--status {text}: interface {interface} is not loopback")
    return endpoint


class StatusSampler:
    """Keeps the status document: rates over the last interval, the link's figures."""

    def __init__(self, link: AgentLink, forwards: Sequence[ForwardService], clock: Any) -> None:
        self._link = link
        self._forwards = forwards
        self._clock = clock
        self._last: dict[str, tuple[float, int, int]] = {}
        self._rates: dict[str, tuple[float, float]] = {}

    def sample(self) -> None:
        """Work out each forward's rates since the last sample; measure the round trip."""
        now = self._clock.seconds()
        for forward in self._forwards:
            counters = forward.counters
            then = self._last.get(forward.service_name)
            if then is not None and now > then[0]:
                elapsed = now - then[0]
                self._rates[forward.service_name] = (
                    (counters.bytes_up - then[1]) / elapsed,
                    (counters.bytes_down - then[2]) / elapsed,
                )
            self._last[forward.service_name] = (now, counters.bytes_up, counters.bytes_down)
        self._link.ping()

    def document(self) -> dict[str, Any]:
        """What the page and `nbbridge status` show."""
        link = self._link
        now = self._clock.seconds()
        return {
            "version": nbbridge.__version__,
            "time": time.time(),
            "interval": INTERVAL,
            "link": {
                "state": link.state.value,
                "relay": str(link.relay),
                "agent": link.agent,
                "agent_key": link.agent_key.to_text(),
                "up_for": None if link.up_since is None else now - link.up_since,
                "rtt_ms": None if link.rtt is None else round(link.rtt * 1000, 1),
                "reconnects": link.reconnects,
                "last_error": None if link.up_since is not None else link.last_error,
            },
            "session": self._session(now),
            "forwards": [self._forward(f) for f in self._forwards],
        }

    def _session(self, now: float) -> dict[str, Any]:
        """Is the session resumable, suspended (since when), how often resumed (docs/resume.md)."""
        session = self._link.current_session
        if session is None:
            return {"state": "none", "resumable": False}
        suspended = session.suspended_since
        return {
            "state": "suspended" if suspended is not None else "live",
            "resumable": session.resumable,
            "suspended_for": None if suspended is None else round(now - suspended, 1),
            "channels": len(session.channels),
            "suspensions": session.suspensions,
            "resumes": session.resumes,
            "last_suspended_for": (
                None if session.last_suspended_for is None else round(session.last_suspended_for, 2)
            ),
        }

    def _forward(self, forward: ForwardService) -> dict[str, Any]:
        counters = forward.counters
        address = forward.port.getHost() if forward.port is not None else None
        up, down = self._rates.get(forward.service_name, (0.0, 0.0))
        return {
            "service": forward.service_name,
            "line": describe(forward.service_name, address) if address else None,
            "url": open_url(forward.service_name, address) if address else None,
            "open": counters.open,
            "connections": counters.connections,
            "bytes_up": counters.bytes_up,
            "bytes_down": counters.bytes_down,
            "rate_up": round(up, 1),
            "rate_down": round(down, 1),
        }


class StatusJson(Resource):
    isLeaf = True

    def __init__(self, sampler: StatusSampler) -> None:
        super().__init__()
        self._sampler = sampler

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._sampler.document()).encode() + b"\n"


def _static(name: str) -> bytes:
    return resources.files("nbbridge.client").joinpath("static", name).read_bytes()


def status_resource(sampler: StatusSampler) -> Resource:
    """The page at `/`, its files beside it, and `/status.json`."""
    root = StaticFile(_static("index.html"), b"text/html; charset=utf-8")
    root.isLeaf = False
    root.putChild(b"", root)
    root.putChild(b"app.js", StaticFile(_static("app.js"), _JS))
    root.putChild(b"app.css", StaticFile(_static("app.css"), b"text/css; charset=utf-8"))
    root.putChild(b"chart.js", StaticFile(shared_file("chart.js"), _JS))
    root.putChild(STATUS_JSON_PATH.lstrip("/").encode(), StatusJson(sampler))
    return root


class StatusService(Service):
    """Serves the status page on ENDPOINT and samples every `INTERVAL` seconds.

    A status port that cannot be had (a second client on this machine) is logged in one line
    and the client carries on without it: the tunnel matters more than its page.
    """

    _log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        link: AgentLink,
        forwards: Sequence[ForwardService],
        reactor: Any,
    ) -> None:
        self._endpoint = endpoint
        self.sampler = StatusSampler(link, forwards, reactor)
        #: takes a sample every INTERVAL seconds while the service runs
        self.sampling = LoopingCall(self.sampler.sample)
        self.sampling.clock = reactor
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort | None] = Deferred()

    def startService(self) -> None:
        super().startService()
        self.sampling.start(INTERVAL, now=True)
        site = Site(status_resource(self.sampler))
        site.noisy = False
        d = self._endpoint.listen(site)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        self._log.info(
            "status page on http://{host}:{port}/ (`nbbridge status` prints it)",
            host=address.host,  # type: ignore[attr-defined]
            port=address.port,  # type: ignore[attr-defined]
        )
        self.listening.callback(port)

    def _failed(self, failure: Any) -> None:
        self._log.error(
            "no status page: {why} (is another nbbridge-client running? give --status "
            "tcp:PORT:interface=127.0.0.1, or --status off)",
            why=failure.getErrorMessage(),
        )
        self.listening.callback(None)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.sampling.running:
            self.sampling.stop()
        if self.port is None:
            return succeed(None)
        port, self.port = self.port, None
        return port.stopListening()  # type: ignore[return-value]
