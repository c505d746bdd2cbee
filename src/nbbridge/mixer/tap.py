"""twistd nbbridge-mixer: local and remote Jupyter kernels behind one Jupyter-shaped port.

``--remote NAME=agent:AGENT/SERVICE`` reaches a Jupyter behind an agent through the relay,
as the client does (the same ``--relay --token-file --key --ca`` flags, from
`nbbridge.tunnel.TunnelOptions`, plus ``--agent-key AGENT=PUBKEY`` per agent);
``--remote NAME=https://host/base`` a Jupyter at a URL.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    wrapClientTLS,
)
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from nbbridge._secrets import SecretError, read_secret
from nbbridge.crypto import KeyFormatError, parse_public_key
from nbbridge.store import open_store, read_password
from nbbridge.tunnel import AgentLink, TunnelOptions
from nbbridge.web import ProxyResource, Upstream, UpstreamPool

from ._backends import Backend
from ._guard import cookie_value  # noqa: F401  (re-exported for tests)
from ._mixer import Mixer
from ._names import check_remote_name
from ._resource import MixerRoot
from ._table import OwnerTable

_log = Logger()


class Options(TunnelOptions):
    synopsis = (
        "--port P --jupyter-port P --jupyter-token-file F "
        "[--remote NAME=agent:AGENT/SERVICE | --remote NAME=https://host/base]... "
        "[--remote-token-file NAME=F]... "
        "[--relay URL --token-file F --key F --agent-key AGENT=PUBKEY ...]"
    )
    longdesc = (
        "Serves on 127.0.0.1:PORT a Jupyter-shaped API that mixes the kernelspecs, kernels "
        "and sessions of the local Jupyter (127.0.0.1:JUPYTER-PORT) with those of each "
        "remote, and proxies everything else to the local Jupyter. Every request needs the "
        "local Jupyter's token (Authorization: token T, or ?token=T): --jupyter-token-file, "
        "--jupyter-token or $JUPYTER_TOKEN. Use it as `jupyter lab "
        "--GatewayClient.url=http://127.0.0.1:PORT/`, or open it in the browser."
    )
    command = "nbbridge-mixer"
    mapping_flag = "remote"
    path_flags = ("token-file", "key", "ca", "jupyter-token-file", "store-password-file")

    optFlags = [
        ["allow-remote-access", None, "listen on --interface even if it is not loopback"],
    ]
    optParameters = [
        ["port", None, 8889, "port to serve on", int],
        ["interface", None, "127.0.0.1", "address to serve on (loopback unless told)"],
        ["jupyter-port", None, 8888, "port of the local Jupyter on 127.0.0.1", int],
        ["jupyter-token-file", None, None, "file holding the local Jupyter's token"],
        ["jupyter-token", None, None, "the local Jupyter's token (prefer the file)"],
        ["store", None, "memory", "where the kernel table lives: memory or redis://HOST:PORT/DB"],
        ["store-password-file", None, None, "the Redis password (else $NBBRIDGE_REDIS_PASSWORD)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["agent-keys"] = {}
        self["remote-token-files"] = {}

    def opt_remote(self, value: str) -> None:
        """NAME=agent:AGENT/SERVICE or NAME=https://host/base: a remote Jupyter (repeatable)"""
        self.add_mapping(value)

    def opt_agent_key(self, value: str) -> None:
        """AGENT=PUBKEY: pin the public key of an agent named by a --remote (repeatable)"""
        agent, sep, key = value.partition("=")
        if not sep or not agent or not key:
            raise usage.UsageError(f"--agent-key {value}: expected AGENT=PUBKEY")
        self["agent-keys"][agent] = key

    def opt_remote_token_file(self, value: str) -> None:
        """NAME=FILE: the file holding remote NAME's own Jupyter token (repeatable)"""
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise usage.UsageError(f"--remote-token-file {value}: expected NAME=FILE")
        self["remote-token-files"][name] = path

    def _agent_remotes(self) -> bool:
        return any(target.startswith("agent:") for _, target in self["remote"])

    def config_schema(self) -> Any:
        """The long flags, plus the repeatable ``agent_key`` and ``remote_token_file`` lists."""
        schema = super().config_schema()
        return attrs.evolve(
            schema,
            lists=frozenset({*schema.lists, "agent_key", "remote_token_file"}),
            strings=frozenset(schema.strings) - {"agent_key", "remote_token_file"},
        )

    def postOptions(self) -> None:
        self.apply_config()
        for flag, add in (
            ("agent-key", self.opt_agent_key),
            ("remote-token-file", self.opt_remote_token_file),
        ):
            items = self.opts.pop(flag, None)
            for item in items if isinstance(items, list) else ():
                name = item.partition("=")[0]
                known = self["agent-keys"] if flag == "agent-key" else self["remote-token-files"]
                if name not in known:  # the command line wins
                    add(item)
        if self._agent_remotes():
            super().postOptions()  # the relay, the key, the token: as the client
        else:
            self.parse()
            self.load()

    def parse(self) -> None:
        remotes: list[tuple[str, str, Any, Any, Any]] = []
        for name, target in self["remote"]:
            try:
                check_remote_name(name)
            except ValueError as e:
                raise usage.UsageError(f"--remote {name}=...: {e}") from None
            if target.startswith("agent:"):
                agent, slash, service = target[len("agent:") :].partition("/")
                if not agent or not slash or not service:
                    raise usage.UsageError(
                        f"--remote {name}={target}: expected agent:AGENT/SERVICE"
                    )
                if agent not in self["agent-keys"]:
                    raise usage.UsageError(f"--remote {name}: give --agent-key {agent}=PUBKEY")
                try:
                    key = parse_public_key(self["agent-keys"][agent])
                except (ValueError, KeyFormatError) as e:
                    raise usage.UsageError(f"--agent-key {agent}: {e}") from None
                remotes.append(("agent", name, agent, service, key))
            else:
                url = urlsplit(target)
                if url.scheme not in ("http", "https") or not url.hostname:
                    raise usage.UsageError(
                        f"--remote {name}={target}: expected agent:AGENT/SERVICE or https://host/base"
                    )
                remotes.append(("url", name, url, None, None))
        unknown = set(self["remote-token-files"]) - {r[1] for r in remotes}
        if unknown:
            raise usage.UsageError(f"--remote-token-file for unknown remote(s): {sorted(unknown)}")
        self["remotes"] = remotes
        try:
            address = ipaddress.ip_address(self["interface"])
        except ValueError:
            raise usage.UsageError(f"--interface {self['interface']}: not an IP address") from None
        if not address.is_loopback and not self["allow-remote-access"]:
            raise usage.UsageError(
                f"--interface {address} is not loopback: the mixer hands out kernels; "
                "add --allow-remote-access if that is really meant"
            )

    def load(self) -> None:
        try:
            if self["jupyter-token"]:
                token = self["jupyter-token"]
            else:
                token = read_secret(self["jupyter-token-file"], "JUPYTER_TOKEN", "Jupyter token")
            self["jupyter_token"] = token
            self["remote_tokens"] = {
                name: read_secret(path, "-", "remote Jupyter token")
                for name, path in self["remote-token-files"].items()
            }
            self["store_password"] = read_password(self["store-password-file"])
        except (SecretError, OSError, ValueError) as e:
            raise self.refuse(str(e)) from None


def _remote_upstream(url: Any, name: str, reactor: Any) -> tuple[Upstream, bytes]:
    host = url.hostname
    port = url.port or (443 if url.scheme == "https" else 80)
    endpoint: Any = HostnameEndpoint(reactor, host, port)
    if url.scheme == "https":
        endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
    netloc = host if url.port is None else f"{host}:{url.port}"
    return Upstream(f"remote-{name}", endpoint, url.path.rstrip("/").encode()), netloc.encode()


class _Closer(Service):
    """Closes the pool and the store when the mixer stops."""

    def __init__(self, pool: UpstreamPool, store: Any) -> None:
        self.pool = pool
        self.store = store

    async def _stop(self) -> None:
        await self.pool.close()
        await self.store.close()

    def stopService(self) -> Any:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    pool = UpstreamPool(reactor, connect_timeout=10)
    store = open_store(options["store"], password=options["store_password"], reactor=reactor)
    links: dict[str, AgentLink] = {}
    local = Backend(
        None,
        Upstream(
            "local-jupyter", TCP4ClientEndpoint(reactor, "127.0.0.1", options["jupyter-port"])
        ),
        options["jupyter_token"],
    )
    remotes = []
    for kind, name, where, service, key in options["remotes"]:
        token = options["remote_tokens"].get(name)
        if kind == "agent":
            if where not in links:
                links[where] = AgentLink(
                    reactor,
                    options["relay_url"],
                    where,
                    key,
                    options["private_key"],
                    options["token"],
                    options["ca"],
                    wait=10.0,
                    channel_limits=options["channel_limits"],
                )
                links[where].setServiceParent(top)
            upstream = Upstream(f"{where}/{service}", links[where].endpoint(service))
            remotes.append(Backend(name, upstream, token, link=links[where]))
        else:
            upstream, host = _remote_upstream(where, name, reactor)
            remotes.append(Backend(name, upstream, token, host))
    cookie = f"nbbridge-mixer-{options['port']}"
    mixer = Mixer(local, remotes, pool, OwnerTable(store.store), cookie=cookie)
    proxy = ProxyResource(mixer.route, pool)
    root = MixerRoot(mixer, proxy, options["jupyter_token"], cookie)
    site = Site(root)
    site.displayTracebacks = False
    interface = options["interface"]
    if not ipaddress.ip_address(interface).is_loopback:
        _log.warn(
            "nbbridge-mixer: listening on {interface}, not loopback: anyone who can reach "
            "it and has the token runs code here",
            interface=interface,
        )
    server_class = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    endpoint = server_class(reactor, options["port"], interface=interface)
    listening = _Listening(endpoint, site, mixer, options, store)
    listening.setServiceParent(top)
    _Closer(pool, store).setServiceParent(top)
    top.mixer = mixer  # type: ignore[attr-defined]
    top.listening = listening  # type: ignore[attr-defined]
    return top


class _Listening(StreamServerEndpointService):
    """Listens, logs where, and rebuilds the kernel table from the backends' lists."""

    def __init__(
        self, endpoint: Any, site: Site, mixer: Mixer, options: Options, store: Any
    ) -> None:
        super().__init__(endpoint, site)
        self.store = store
        self.mixer = mixer
        self.options = options
        self.when_listening: Any = None

    async def _rebuild(self) -> None:
        """Once the store is up (Redis may still be connecting): the table from the lists."""
        await self.store.when_connected()
        await self.mixer.rebuild()
        kernels = await self.mixer.table.all("kernel")
        _log.info("mixer: kernel table ready ({n} kernels known)", n=len(kernels))

    def startService(self) -> None:
        super().startService()
        d = self._waitingForPort
        self.when_listening = d

        def listening(port: Any) -> Any:
            host = port.getHost()
            names = ", ".join(self.mixer.remotes) or "none"
            _log.info(
                "nbbridge mixer listening on http://{host}:{port}/ (local Jupyter on "
                "127.0.0.1:{jupyter}; remotes: {names})",
                host=host.host,
                port=host.port,
                jupyter=self.options["jupyter-port"],
                names=names,
            )
            rebuild = Deferred.fromCoroutine(self._rebuild())
            rebuild.addErrback(lambda f: _log.failure("mixer: rebuilding the kernel table", f))
            return port

        d.addCallback(listening)
