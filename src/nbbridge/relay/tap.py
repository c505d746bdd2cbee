"""twistd entry point: `twistd -n nbbridge-relay --listen ENDPOINT [--config relay.toml]`.

Only reads options and assembles; the relay itself lives in the other modules.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from nbbridge._memory import care_for_memory
from nbbridge._secrets import SecretError, read_secret, token_digest
from nbbridge.hub import HubConfig, mount_hub, parse_hub_config
from nbbridge.store import (
    STORE_CREDENTIAL_OPTIONS,
    AgentRegistry,
    Backend,
    Bus,
    StoreURLError,
    open_store,
    parse_store_url,
    read_password,
)
from nbbridge.transport import endpoint_string, listen_endpoint_string

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

    synopsis = (
        "[--listen ENDPOINT] [--config relay.toml] [--admin-token-file FILE] "
        "[--store redis://HOST:PORT/DB --advertise-url URL]"
    )
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
        [
            "store",
            None,
            "memory",
            "Where the registry lives: memory (one relay), or redis://HOST:PORT/DB shared by "
            "several relays (then --advertise-url too).",
        ],
        *STORE_CREDENTIAL_OPTIONS,
        [
            "advertise-url",
            None,
            None,
            "This relay's own URL on the load balancer's origin (wss://relay.example.com/r1): "
            "agents held by other relays dial back here for clients waiting here.",
        ],
    ]

    def postOptions(self) -> None:
        if not self["listen"]:
            raise usage.UsageError("--listen must not be empty")


#: The relay daemon serves the hub on its port: relay.toml's extra tables, by name.
SECTIONS: dict[str, SectionParser] = {"hub": parse_hub_config}


def mounts(config: RelayConfig | None, bus: Bus | None = None) -> dict[str, Mount]:
    """What the relay daemon serves beside the tunnel: the hub, configured by ``[hub]``.

    With BUS (relays sharing a store), the hub's topics span every relay sharing it.
    """
    hub = config.sections.get("hub") if config is not None else None
    hub_config: HubConfig = hub if hub is not None else HubConfig()
    return {
        "hub": lambda root, relay, reactor: mount_hub(root, relay, reactor, hub_config, bus=bus)
    }


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

    advertise = options["advertise-url"]
    if advertise:
        problem = advertise_problem(advertise)
        if problem is not None:
            raise _fail(f"--advertise-url: {problem}")
    backend = _open_backend(options, reactor)

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
        # A deep accept queue: a flood must not make the kernel drop honest agents' SYNs.
        listen = listen_endpoint_string(description)
        endpoint = serverFromString(reactor, listen)  # type: ignore[no-untyped-call]
    except Exception as e:  # bad syntax, unknown kind, unreadable TLS key: all one line
        raise _fail(f"--listen {description}: {e}") from None

    def listen_failed(_failure: Any) -> None:
        # Nothing to serve: stop, so a supervisor notices and restarts us.
        if reactor.running:
            reactor.stop()

    if backend is None:
        relay = Relay(authority, limits, reactor, advertise_url=advertise)
    else:
        relay = Relay(
            authority,
            limits,
            reactor,
            advertise_url=advertise,
            registry=AgentRegistry(backend.store),
            bus=backend.bus,
        )
        _log.info(
            "store {url}: relays sharing it reach each other's agents; this one is {where}",
            url=backend.url,
            where=relay.where,
        )
        cluster = relay.cluster
        assert cluster is not None
        if not backend.health.connected:
            # Until it is: links to agents on other relays are refused with this reason.
            cluster.store_problem = backend.health.reason or "not connected yet"
        backend.watch(lambda health: cluster.health_changed(health.connected, health.reason))
    service = RelayService(
        relay,
        endpoint,
        reactor=reactor,
        secure=uses_tls(description),
        admin_sha256=admin,
        on_listen_failure=listen_failed,
        mounts=mounts(config, backend.bus if backend is not None else None),
    )
    if backend is not None:
        BackendService(backend).setServiceParent(service)
    care_for_memory(service, reactor)
    return service


def advertise_problem(url: str) -> str | None:
    """What is wrong with URL as an advertise URL, or None (a ws:// or wss:// URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        return "expected ws://HOST[:PORT][/PATH] or wss://... (the load balancer's origin)"
    if parts.query or parts.fragment or parts.username or parts.password:
        return "takes no query, fragment, user or password"
    return None


def _open_backend(options: Options, reactor: Any) -> Backend | None:
    """The shared store and bus of --store redis://..., or None for --store memory."""
    url = options["store"]
    if url == "memory":
        if options["store-ca-file"]:
            raise _fail("--store-ca-file needs a rediss:// store URL (TLS to Redis)")
        return None
    try:
        parse_store_url(url)
    except StoreURLError as e:  # its message never repeats the URL (it may hold a secret)
        raise _fail(str(e)) from None
    if not options["advertise-url"]:
        raise _fail(
            "--store redis://... needs --advertise-url: the URL (on the load balancer's "
            "origin) where agents held by other relays dial back to this one"
        )
    try:
        password = read_password(options["store-password-file"])
    except (OSError, ValueError) as e:
        raise _fail(f"--store-password-file: {e}") from None
    try:
        return open_store(url, password=password, ca_file=options["store-ca-file"], reactor=reactor)
    except StoreURLError as e:
        raise _fail(str(e)) from None


class BackendService(Service):
    """Closes the store's connections when the relay stops (after its own connections)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        super().stopService()  # type: ignore[no-untyped-call]
        return self.backend.close()
