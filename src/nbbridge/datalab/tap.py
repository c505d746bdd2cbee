"""twistd entry point: ``twistd -n nbbridge-datalab --listen ENDPOINT --sign-key-file F ...``.

Only reads options and assembles; see docs/datalab.md for the API it serves.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from nbbridge._secrets import SecretError, read_secret
from nbbridge.instances import JupyterProcesses
from nbbridge.store import MemoryStore
from nbbridge.web import UpstreamPool

from ._api import DEFAULT_FRESHNESS
from ._core import DEFAULT_NONCE_TTL, DatalabConfig
from ._instances import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_INSTANCES
from ._launcher import SubprocessLauncher
from ._service import DatalabService
from ._upload import DEFAULT_MAX_UPLOAD

SIGN_KEY_ENV = "NBBRIDGE_DATALAB_SIGN_KEY"
DEFAULT_LISTEN = "tcp:8890:interface=127.0.0.1"
LAUNCHERS = ("subprocess", "agent")


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise usage.UsageError(f"{text!r} is not a number") from None
        if value <= 0:
            raise usage.UsageError(f"{text!r} must be positive")
        return value

    return parse


class Options(usage.Options):
    """Options of nbbridge-datalab; the sign key comes from a file or the environment."""

    synopsis = (
        "--listen ENDPOINT --sign-key-file FILE [--store URL] [--launcher subprocess|agent] "
        "[--nonce-ttl S] [--max-instances N] [--idle-timeout S]"
    )
    longdesc = (
        "Datalab: a front-end uploads a data file with a signed request (POST /datalab/start) "
        "and gets a nonce; /datalab/view/NONCE/DEST opens a Jupyter instance holding the file "
        "in the user's browser, every other path being proxied to that instance. The sign key "
        f"comes from --sign-key-file or ${SIGN_KEY_ENV}."
    )
    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "endpoint to serve on (a bare port: loopback)"],
        ["sign-key-file", None, None, f"file holding the sign key (else ${SIGN_KEY_ENV})"],
        ["store", None, "memory", "where nonces and sessions live: memory"],
        ["launcher", None, "subprocess", "who runs instances: subprocess (here) or agent"],
        ["nonce-ttl", None, DEFAULT_NONCE_TTL, "seconds a nonce stays valid", _positive(float)],
        [
            "max-instances",
            None,
            DEFAULT_MAX_INSTANCES,
            "instances running at once (503 FULL past it)",
            _positive(int),
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "seconds without a request or open socket before an instance stops",
            _positive(float),
        ],
        [
            "freshness",
            None,
            DEFAULT_FRESHNESS,
            "seconds a signed request's ts may be off from now, either way",
            _positive(float),
        ],
        [
            "max-upload",
            None,
            DEFAULT_MAX_UPLOAD,
            "largest upload in bytes (413 TOO_LARGE past it)",
            _positive(int),
        ],
        ["work-dir", None, None, "where instances' directories go (default: a new temp dir)"],
    ]

    def postOptions(self) -> None:
        listen = self["listen"]
        if not listen:
            raise usage.UsageError("--listen must not be empty")
        if listen.isdigit():
            self["listen"] = f"tcp:{listen}:interface=127.0.0.1"
        if self["launcher"] not in LAUNCHERS:
            raise usage.UsageError(f"--launcher must be one of {', '.join(LAUNCHERS)}")
        if self["launcher"] == "agent":
            raise usage.UsageError("--launcher agent is not available yet")
        if self["store"] != "memory":
            # Never echo the URL: it may hold a password.
            raise usage.UsageError("--store: only 'memory' is supported yet")
        try:
            key = read_secret(self["sign-key-file"], SIGN_KEY_ENV, "sign key")
        except SecretError as e:
            raise SystemExit(f"nbbridge-datalab: {e}") from None
        self["sign_key"] = key.encode("utf-8")


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    config = DatalabConfig(
        sign_key=options["sign_key"],
        freshness=options["freshness"],
        nonce_ttl=options["nonce-ttl"],
    )
    work = options["work-dir"]
    if work is not None:
        os.makedirs(work, mode=0o700, exist_ok=True)
    launcher = SubprocessLauncher(reactor, JupyterProcesses(reactor, work))
    return DatalabService(
        reactor,
        serverFromString(reactor, options["listen"]),
        config,
        MemoryStore(reactor),
        launcher,
        UpstreamPool(reactor),
        idle_timeout=options["idle-timeout"],
        max_instances=options["max-instances"],
        max_upload=options["max-upload"],
    )
