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
from nbbridge.crypto import parse_public_key
from nbbridge.instances import JupyterProcesses
from nbbridge.store import (
    PASSWORD_ENV,
    StoreURLError,
    open_store,
    parse_store_url,
    read_password,
)
from nbbridge.tunnel import AgentLink, TunnelOptions
from nbbridge.web import UpstreamPool

from ._agent_launcher import AgentLauncher
from ._api import DEFAULT_FRESHNESS
from ._core import DEFAULT_NONCE_TTL, DatalabConfig
from ._instances import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_INSTANCES
from ._launcher import Launcher, SubprocessLauncher
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


class Options(TunnelOptions):
    """Options of nbbridge-datalab; the sign key comes from a file or the environment.

    The tunnel client's flags are `TunnelOptions`' own: they are checked (and required) only
    with ``--launcher agent``, which makes the daemon a tunnel client of the agent.
    """

    command = "nbbridge-datalab"
    required = ("agent", "agent-key")

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
        [
            "store",
            None,
            "memory",
            "where nonces, sessions and instances live: memory or redis://HOST:PORT/DB",
        ],
        [
            "store-password-file",
            None,
            None,
            f"file holding the Redis password (else ${PASSWORD_ENV})",
        ],
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
        # --launcher agent: the agent that runs the instances, reached through a relay with
        # the tunnel client's flags (--relay, --key, --token-file, --ca, --config, ...).
        ["agent", None, None, "agent launcher: the agent's name"],
        ["agent-key", None, None, "agent launcher: the agent's public key (nbb1...), pinned"],
    ]

    def postOptions(self) -> None:
        if self["launcher"] not in LAUNCHERS:
            raise usage.UsageError(f"--launcher must be one of {', '.join(LAUNCHERS)}")
        if self["launcher"] == "agent":
            super().postOptions()  # the relay, the key, the token: as the client; then below
        else:
            self.parse()
            self.load()

    def needs_mapping(self) -> bool:
        return False  # it names its agent with --agent; instances are asked for at run time

    def parse(self) -> None:
        listen = self["listen"]
        if not listen:
            raise usage.UsageError("--listen must not be empty")
        if listen.isdigit():
            self["listen"] = f"tcp:{listen}:interface=127.0.0.1"
        if self["launcher"] == "agent":
            self["agent_public_key"] = parse_public_key(self["agent-key"])
        try:
            parse_store_url(self["store"])  # its errors never repeat the URL
        except StoreURLError as e:
            raise usage.UsageError(str(e)) from None

    def load(self) -> None:
        try:
            self["store_password"] = read_password(self["store-password-file"])
        except (OSError, ValueError) as e:
            raise self.refuse(str(e)) from None
        try:
            key = read_secret(self["sign-key-file"], SIGN_KEY_ENV, "sign key")
        except SecretError as e:
            raise self.refuse(str(e)) from None
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
    backend = open_store(options["store"], password=options["store_password"], reactor=reactor)
    launcher: Launcher
    link: AgentLink | None = None
    if options["launcher"] == "agent":
        link = AgentLink(
            reactor,
            options["relay_url"],
            options["agent"],
            options["agent_public_key"],
            options["private_key"],
            options["token"],
            options["ca"],
            channel_limits=options["channel_limits"],
            resume_grace=options["resume-grace"],
        )
        launcher = AgentLauncher(link, work)
    else:
        launcher = SubprocessLauncher(reactor, JupyterProcesses(reactor, work))
    service = DatalabService(
        reactor,
        serverFromString(reactor, options["listen"]),
        config,
        backend.store,
        launcher,
        UpstreamPool(reactor),
        idle_timeout=options["idle-timeout"],
        max_instances=options["max-instances"],
        max_upload=options["max-upload"],
        # Instances on an agent outlive a daemon that shares its store: the next one serves
        # their sessions. Local ones never outlive the daemon.
        keep_instances=launcher.name == "agent" and options["store"] != "memory",
        on_stopped=backend.close,
        store_ready=backend.when_connected,
    )
    if link is not None:
        link.setServiceParent(service)
    return service
