"""twistd entry point: `twistd -n nbbridge-relay --listen ENDPOINT [--config relay.toml]`.

Only reads options and assembles; the relay itself lives in the other modules.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from nbbridge._memory import care_for_memory
from nbbridge._secrets import SecretError, read_secret, token_digest
from nbbridge.hub import HubConfig, mount_hub, parse_hub_config
from nbbridge.transport import endpoint_string

from ._auth import Authority
from ._config import ConfigError, Limits, RelayConfig, SectionParser, load_config
from ._core import Relay
from ._listen import DEFAULT_LISTEN, loopback_problem, uses_tls
from ._service import RelayService
from ._web import Mount

ADMIN_TOKEN_ENV = "NBBRIDGE_ADMIN_TOKEN"
_log = Logger(namespace="nbbridge.relay.tap")


class Options(usage.Options):
    """Command-line options of nbbridge-relay. Secrets come from files or the environment."""

    synopsis = "[--listen ENDPOINT] [--config relay.toml] [--admin-token-file FILE]"
    longdesc = (
        "Public relay: agents keep a control connection, clients open links, and the relay "
        "splices each link to a data connection its agent dials. The same port serves the "
        "topic hub (/hub/...), GET /stats and GET /metrics (relay.toml [hub]). Without --config "
        "it serves only on loopback and accepts any token."
    )
    optParameters = [
        [
            "listen",
            "l",
            DEFAULT_LISTEN,
            "Endpoint to serve on (tcp:, ssl:, unix:, ...); a bare port means "
            "tcp:PORT:interface=127.0.0.1.",
        ],
        ["config", "c", None, "relay.toml: agents, clients and their token hashes, limits."],
        [
            "admin-token-file",
            None,
            None,
            f"File holding the admin token that adds per-agent details to /status "
            f"(or set {ADMIN_TOKEN_ENV}).",
        ],
        ["store", None, "memory", "Where the registry lives: only 'memory' is supported yet."],
        [
            "advertise-url",
            None,
            None,
            "URL agents use to reach this relay when several relays share a store (not used yet).",
        ],
    ]

    def postOptions(self) -> None:
        if not self["listen"]:
            raise usage.UsageError("--listen must not be empty")


#: The relay daemon serves the hub on its port: relay.toml's extra tables, by name.
SECTIONS: dict[str, SectionParser] = {"hub": parse_hub_config}


def mounts(config: RelayConfig | None) -> dict[str, Mount]:
    """What the relay daemon serves beside the tunnel: the hub, configured by ``[hub]``."""
    hub = config.sections.get("hub") if config is not None else None
    hub_config: HubConfig = hub if hub is not None else HubConfig()
    return {"hub": lambda root, relay, reactor: mount_hub(root, relay, reactor, hub_config)}


def _fail(message: str) -> SystemExit:
    return SystemExit(f"nbbridge-relay: {message}")


def _admin_sha256(options: Options) -> bytes | None:
    """The admin token's hash, from --admin-token-file or $NBBRIDGE_ADMIN_TOKEN; None if neither."""
    if not options["admin-token-file"] and not os.environ.get(ADMIN_TOKEN_ENV, "").strip():
        return None
    try:
        return token_digest(
            read_secret(options["admin-token-file"], ADMIN_TOKEN_ENV, "admin token")
        )
    except SecretError as e:
        raise _fail(str(e)) from None


def makeService(options: Options, reactor: Any = None) -> RelayService:
    """Assemble the relay from OPTIONS; a bad option exits with one clear line."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    if options["store"] != "memory":
        # Never echo the value: a store URL may hold a password.
        raise _fail("--store: only the in-memory store is supported yet (--store memory)")
    if options["advertise-url"]:
        _log.info("--advertise-url is used only with a shared store; ignoring it for now")

    description = endpoint_string(options["listen"].strip())
    config: RelayConfig | None = None
    if options["config"]:
        try:
            config = load_config(options["config"], SECTIONS)
        except ConfigError as e:
            raise _fail(str(e)) from None
        authority, limits = Authority(config), config.limits
    else:
        problem = loopback_problem(description)
        if problem is not None:
            raise _fail(
                f"--listen {description}: {problem}. Without --config the relay accepts any "
                "token, so it serves only on loopback; give --config relay.toml to serve beyond."
            )
        authority, limits = Authority(None), Limits()

    admin = _admin_sha256(options)
    try:
        endpoint = serverFromString(reactor, description)  # type: ignore[no-untyped-call]
    except Exception as e:  # bad syntax, unknown kind, unreadable TLS key: all one line
        raise _fail(f"--listen {description}: {e}") from None

    def listen_failed(_failure: Any) -> None:
        # Nothing to serve: stop, so a supervisor notices and restarts us.
        if reactor.running:
            reactor.stop()

    relay = Relay(authority, limits, reactor)
    service = RelayService(
        relay,
        endpoint,
        reactor=reactor,
        secure=uses_tls(description),
        admin_sha256=admin,
        on_listen_failure=listen_failed,
        mounts=mounts(config),
    )
    care_for_memory(service, reactor)
    return service
