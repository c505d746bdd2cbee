"""twistd nbbridge-gateway: browser WebSockets spliced to TCP services (a drop-in for the
Nexus websocketserver: same option names, same defaults, same behaviour).

The options are the original's (underscores and all) plus nbbridge's own (``--interface``,
``--target``, ``--allowed_origins``, ``--users``, ``--admin-token-file`` and the tunnel
client's flags for ``--target agent:NAME/SERVICE``). ``--local_session APP COUNT`` takes two
values, as in the original; twisted's option parser takes one, so the pair is joined before
parsing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from nbbridge._memory import care_for_memory
from nbbridge._secrets import SecretError, read_secret
from nbbridge.store import (
    STORE_CREDENTIAL_OPTIONS,
    StoreURLError,
    open_store,
    parse_store_url,
    read_password,
)
from nbbridge.tunnel import AgentLink, TunnelOptions
from nbbridge.websocket import ConnectionLimits, ConnectionTracker, answer_at_accept

from ._http import http_root
from ._logging import start_logging
from ._origin import OriginPolicy
from ._scripts import ConfigError, load_config, local_session_spec
from ._sessions import Sessions
from ._splice import GatewayFactory, Opener
from ._target import AgentTarget, FixedTarget, NoTarget, parse_target
from ._users import Access, UsersFileError, load_users

_log = Logger()


def _escape(value: str) -> str:
    """VALUE quoted for an endpoint string (colons and equals signs escaped)."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def listen_endpoint(port: int, interface: str, cert: str | None, key: str | None) -> str:
    """The server endpoint string: TCP, or TLS with --cert/--key."""
    where = f"{port}:interface={_escape(interface)}"
    if cert:
        return f"ssl:{where}:privateKey={_escape(key or cert)}:certKey={_escape(cert)}"
    return f"tcp:{where}:backlog=1024"


class Options(TunnelOptions):
    synopsis = (
        "[--http_directory DIR] [--http_port 9090] [--cert FILE] [--key FILE] "
        "[--remote_session_config FILE] [--client_hostname HOST] [--client_port PORT] "
        "[--timeout 300] [--local_session APP COUNT]... [--verbose LEVEL] [--log_file FILE] "
        "ws_server_port"
    )
    longdesc = (
        "Serves every WebSocket on ws_server_port (any path) spliced to "
        "--client_hostname:--client_port, or to the service instance a reservation token "
        "(?token=) names, or to an agent's service (--target agent:NAME/SERVICE with the "
        "tunnel client's --relay/--tunnel-key/--token-file/--agent-key). With "
        "--http_directory, static files and the REST API (/v1/status, /v1/reserve, /v1/stop) "
        "are served on --http_port. --local_session APP COUNT (repeatable): COUNT instances of "
        "APP (desktop, or app:COMMAND) started per reservation. "
        "Listens on --interface (default 127.0.0.1)."
    )
    command = "nbbridge-gateway"
    mapping_flag = "agent-services"
    optParameters = [
        ["http_directory", None, None, "serve this directory's files (and the REST API)"],
        ["http_port", None, 9090, "port of the static files and the REST API", int],
        ["cert", None, None, "TLS certificate (PEM): the ports serve wss:// and https://"],
        ["key", None, None, "TLS private key (PEM) for --cert"],
        ["remote_session_config", None, None, "JSON file of services started per reservation"],
        ["client_hostname", None, "localhost", "host of the TCP service (basic mode)"],
        ["client_port", None, None, "port of the TCP service (basic mode)", int],
        ["timeout", None, 300, "seconds an unused reservation is kept", int],
        ["verbose", None, 0, "log level: 0 warnings, 1 info, 2 debug", int],
        ["log_file", None, None, "also log to this file"],
        ["interface", None, "127.0.0.1", "address to listen on (a wider bind is logged)"],
        ["target", None, None, "agent:NAME/SERVICE instead of --client_hostname/--client_port"],
        ["allowed_origins", None, None, "comma-separated origins allowed to connect, or *"],
        ["users", None, None, "JSON file of users: token hashes and groups"],
        ["admin-token-file", None, None, "file holding the admin token (for /v1/stop)"],
        ["agent-key", None, None, "with --target: the agent's public key (nbb1...), pinned"],
        ["tunnel-key", None, None, "with --target: this machine's private key file"],
        ["store", None, "memory", "where reservations are kept: memory or redis://HOST:PORT/DB"],
        *STORE_CREDENTIAL_OPTIONS,
    ]
    # --key is the original's TLS key, so the tunnel's private key is --tunnel-key.
    path_flags = ("token-file", "tunnel-key", "ca", "store-password-file", "store-ca-file")

    def __init__(self) -> None:
        super().__init__()
        self["local_session"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        if options is None:
            options = sys.argv[1:]
        rest, sessions = take_local_sessions(list(options))
        self["local_session"] = sessions
        super().parseOptions(rest)

    def parseArgs(self, ws_server_port: str) -> None:  # type: ignore[override]
        try:
            self["ws_server_port"] = int(ws_server_port)
        except ValueError:
            raise usage.UsageError(f"ws_server_port must be a number: {ws_server_port}") from None

    def postOptions(self) -> None:
        if self["cert"] and not os.path.exists(self["cert"]):
            raise self.refuse(f"--cert {self['cert']}: no such file")
        target = self["target"]
        if target is not None:
            try:
                self["target"] = parse_target(target)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
            self[self.mapping_flag] = [(self["target"].service, "")]
            self["agent"] = self["target"].agent
            if not self["tunnel-key"] or not self["agent-key"]:
                raise usage.UsageError(
                    "--target agent:... needs --relay, --tunnel-key, --agent-key"
                )
            self._tls_key, self["key"] = self["key"], self["tunnel-key"]
            try:
                super().postOptions()
            finally:
                self["key"] = self._tls_key
        try:
            self["origins"] = OriginPolicy.parse(
                self["allowed_origins"],
                (self["http_port"], self["ws_server_port"]),
                tls=bool(self["cert"]),
            )
        except ValueError as e:
            raise usage.UsageError(f"--allowed_origins: {e}") from None
        try:
            services = []
            if self["remote_session_config"]:
                services.extend(load_config(self["remote_session_config"]))
            for app, count in self["local_session"]:
                services.append(local_session_spec(app, count))
            self["services"] = services
            users = load_users(self["users"]) if self["users"] else []
            admin = None
            if self["admin-token-file"]:
                admin = read_secret(self["admin-token-file"], "NBBRIDGE_GATEWAY_ADMIN_TOKEN")
            self["access"] = Access(admin, tuple(users))
        except (ConfigError, UsersFileError, SecretError) as e:
            raise self.refuse(str(e)) from None
        self._store_options()
        names = [spec.name for spec in self["services"]]
        if len(set(names)) != len(names):
            raise usage.UsageError(f"a service name is given twice: {names}")

    def _store_options(self) -> None:
        """Check --store (its errors never repeat the URL) and read the Redis password now."""
        try:
            url = parse_store_url(self["store"])
        except StoreURLError as e:
            raise usage.UsageError(str(e)) from None
        if self["store-ca-file"] and not url.tls:
            raise usage.UsageError("--store-ca-file needs a rediss:// store URL (TLS to Redis)")
        try:
            self["store_password"] = read_password(self["store-password-file"])
        except (OSError, ValueError) as e:
            raise self.refuse(f"--store-password-file: {e}") from None

    def parse(self) -> None:
        from nbbridge.crypto import parse_public_key

        self["agent_public_key"] = parse_public_key(self["agent-key"])


def take_local_sessions(argv: list[str]) -> tuple[list[str], list[tuple[str, int]]]:
    """ARGV without its ``--local_session APP COUNT`` triples, and those (APP, COUNT) pairs.

    The original takes two values after the flag; twisted's parser takes one per flag.
    """
    rest: list[str] = []
    sessions: list[tuple[str, int]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg == "--local_session":
            if i + 2 >= len(argv) or not argv[i + 2].isdigit() or int(argv[i + 2]) < 1:
                raise usage.UsageError("--local_session takes APP COUNT (COUNT a positive number)")
            sessions.append((argv[i + 1], int(argv[i + 2])))
            i += 3
            continue
        rest.append(arg)
        i += 1
    return rest, sessions


class Listener(Service):
    """One listening port; ``port`` fires with it. On stop, ``closing()`` is waited for too."""

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: Any,
        closing: Callable[[], Deferred[Any]] | None = None,
        scheme: str = "ws",
    ) -> None:
        self._scheme = scheme
        self._endpoint = endpoint
        self._factory = factory
        self._closing = closing
        self.port: Deferred[IListeningPort] = Deferred()
        self._listening: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        d = self._endpoint.listen(self._factory)
        d.addCallback(self._listened)
        d.addErrback(self._failed)

    def _listened(self, port: IListeningPort) -> None:
        self._listening = port
        answer_at_accept(port)  # a tracked port's refusals cost no transport
        address = port.getHost()
        _log.info(
            "nbbridge gateway listening on {scheme}://{host}:{port}/",
            scheme=self._scheme,
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )
        self.port.callback(port)

    def _failed(self, failure: Any) -> None:
        _log.failure("cannot listen", failure)
        self.port.errback(failure)
        from twisted.internet import reactor

        reactor.stop()  # type: ignore[attr-defined]

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        waits = []
        if self._listening is not None:
            waits.append(maybeDeferred(self._listening.stopListening))
        if isinstance(self._factory, ConnectionTracker):
            self._factory.held_refusals.answer_all()
        if self._closing is not None:
            waits.append(self._closing())
        return DeferredList(waits)


def makeService(
    options: Options, reactor: Any = None, stop: Callable[[], object] | None = None
) -> IService:
    """The WebSocket port, and with --http_directory the HTTP port (files + REST API).

    :param stop: what ``/v1/stop`` calls (default ``reactor.stop``: twistd then stops every
        service, which closes the WebSockets with 1001 and stops the instances).
    """
    if reactor is None:
        from twisted.internet import reactor
    if stop is None:
        stop = reactor.stop
    top = MultiService()
    start_logging(options["verbose"], options["log_file"])
    interface = options["interface"]
    if interface not in ("127.0.0.1", "::1", "localhost"):
        _log.warn("nbbridge-gateway listens on {interface}, beyond loopback", interface=interface)
    opener: Opener
    target = options["target"]
    if isinstance(target, AgentTarget):
        link = AgentLink(
            reactor,
            options["relay_url"],
            target.agent,
            options["agent_public_key"],
            options["private_key"],
            options["token"],
            options["ca"],
            channel_limits=options["channel_limits"],
        )
        link.setServiceParent(top)
        opener = FixedTarget(link.endpoint(target.service), reactor, f"agent:{target.agent}")
    elif options["client_port"] is not None:
        host, port = options["client_hostname"], options["client_port"]
        opener = FixedTarget(HostnameEndpoint(reactor, host, port), reactor, f"{host}:{port}")
    else:
        opener = NoTarget()
    opener = _with_sessions(options, opener, reactor, top, stop)
    scheme = "wss" if options["cert"] else "ws"
    # (The URL only tells Autobahn the scheme; any host and path are served.)
    factory = GatewayFactory(f"{scheme}://localhost", opener, options["origins"])
    if isinstance(opener, Sessions):
        opener.open_websockets = lambda: len(factory.open_sockets)
    endpoint = serverFromString(
        reactor,
        listen_endpoint(options["ws_server_port"], interface, options["cert"], options["key"]),
    )
    # Per-address caps for browsers beyond loopback (ConnectionLimits' defaults); Autobahn's
    # opening-handshake timeout bounds a slow handshake.
    tracked = ConnectionTracker(factory, reactor, ConnectionLimits())
    ws = Listener(
        endpoint, tracked, lambda: factory.shutdown("the gateway is stopping"), scheme=scheme
    )
    ws.setName("ws")
    ws.setServiceParent(top)
    ws.port.addCallback(_learn_port, factory, options["ws_server_port"])
    try:
        http = top.getServiceNamed("http")
    except KeyError:
        pass
    else:
        http.port.addCallback(_learn_port, factory, options["http_port"])  # type: ignore[attr-defined]
    # Big screen updates come and go: give the heap's free memory back when the gateway idles.
    care_for_memory(top, reactor)
    return top


def _learn_port(port: IListeningPort, factory: GatewayFactory, configured: int) -> IListeningPort:
    """With port 0 (tests), the gateway's own origin is on the port the system chose."""
    if configured == 0:
        bound = port.getHost().port  # type: ignore[attr-defined]
        own = (*tuple(p for p in factory.origins.own_ports if p != 0), bound)
        factory.origins = attrs.evolve(factory.origins, own_ports=own)
    return port


def _with_sessions(
    options: Options, opener: Opener, reactor: Any, top: MultiService, stop: Callable[[], object]
) -> Opener:
    """Reservations (services from the config and --local_session) in front of OPENER, and the
    HTTP port (files and REST API) when there is a directory or a service to reserve."""
    specs = list(options["services"])
    try:
        backend = open_store(
            options["store"],
            password=options["store_password"],
            ca_file=options["store-ca-file"],
            reactor=reactor,
        )
    except StoreURLError as e:  # an unusable --store-ca-file
        raise options.refuse(str(e)) from None
    sessions = Sessions(specs, backend.store, reactor, options["timeout"], opener)
    holder = _SessionsService(sessions, backend)
    holder.setName("sessions")
    holder.setServiceParent(top)
    if options["http_directory"] or specs:
        root = http_root(options["http_directory"], options["access"], sessions, stop)
        endpoint = serverFromString(
            reactor,
            listen_endpoint(
                options["http_port"], options["interface"], options["cert"], options["key"]
            ),
        )
        http = Listener(endpoint, Site(root), scheme="https" if options["cert"] else "http")
        http.setName("http")
        http.setServiceParent(top)
    return sessions


class _SessionsService(Service):
    """Stops every instance, and closes the store, when the gateway stops."""

    def __init__(self, sessions: Sessions, backend: Any) -> None:
        self.sessions = sessions
        #: the store of the reservations (``when_connected`` for a Redis one)
        self.backend = backend

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        d = self.sessions.stop_all()
        d.addBoth(lambda _: self.backend.close())
        return d
