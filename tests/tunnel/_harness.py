"""Relay, agent and client in this process, on real loopback sockets, built as twistd would.

Each piece is made by its tap's ``Options().parseOptions([...])`` and
``makeService(options, reactor)``, so the real option parsing, file reading and assembly are
exercised. Keys, tokens (files of mode 0600) and relay.toml are written into a fresh
``mktemp()`` directory per test. Pieces start and stop independently, for fault tests; the
clean-up stops whatever is still running in the order a user would (user connections,
clients, agents, relays, then the services behind the agent) and waits until every
connection has closed. What is on disk is described in ``_files``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import treq
from treq.client import HTTPClient
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.python.filepath import FilePath
from twisted.trial import unittest
from twisted.web.client import Agent as WebAgent
from twisted.web.client import HTTPConnectionPool

from nbbridge.agent import tap as agent_tap
from nbbridge.agent._agent import Agent
from nbbridge.client import tap as client_tap
from nbbridge.client._forward import ForwardService
from nbbridge.relay import tap as relay_tap
from nbbridge.relay._service import RelayService
from nbbridge.tunnel import AgentLink
from tests._cleanup import add_async_cleanup

from . import _tcp
from ._autobahn import cancel_stale_close_timeouts
from ._files import Files
from ._logs import AGENT, CLIENT, MUX, RELAY, LogCapture
from ._process import ChildProcess, child_env, spawn, twistd_command


@attrs.define
class Client:
    """A running nbbridge-client: its service tree, its link, and each forward's port."""

    service: IService
    link: AgentLink
    ports: dict[str, int]

    def port(self, service: str = "echo") -> int:
        return self.ports[service]


class TunnelTestCase(unittest.TestCase):
    """Starts pieces of the tunnel on loopback; stops all of them, and waits, at the end."""

    timeout = 90

    def setUp(self) -> None:
        self.logs = LogCapture.install(self)
        self.files = Files.create(FilePath(self.mktemp()))
        self.relay: RelayService | None = None
        self.relay_process: ChildProcess | None = None
        self.relay_port = 0
        self._relay_listening: IListeningPort | None = None
        self.agents: list[Agent] = []
        self.clients: list[Client] = []
        self.peers: list[_tcp.Peer] = []
        self._servers: list[Callable[[], Deferred[None]]] = []
        self._pool = HTTPConnectionPool(reactor)
        self.http = HTTPClient(WebAgent(reactor, pool=self._pool))
        add_async_cleanup(self, self._stop_everything)

    async def _stop_everything(self) -> None:
        for peer in self.peers:
            if not peer.lost.called and peer.transport is not None:
                peer.transport.abortConnection()
        for client in list(self.clients):
            await self.stop_client(client)
        for agent in list(self.agents):
            await self.stop_agent(agent)
        await self._pool.closeCachedConnections()
        if self.relay is not None:
            # Everyone has left: let the relay see the last connections go before it stops, so
            # it does not start close handshakes with peers that are already gone.
            idle = self.relay.connections.when_idle()
            idle.addTimeout(30, reactor)
            await idle
            await self.stop_relay()
        for peer in self.peers:
            await peer.lost
        for stop in reversed(self._servers):
            await stop()
        cancel_stale_close_timeouts()

    # -- the services behind the agent, and the user's connections -----------------------------

    async def serve(self, protocol: Callable[[], Protocol]) -> tuple[int, _tcp.TrackingFactory]:
        """A TCP service on 127.0.0.1:0, stopped (after everything else) at the end."""
        port, factory, stop = await _tcp.serve(protocol)
        self._servers.append(stop)
        return port, factory

    async def connect(self, port: int, peer: _tcp.Peer | None = None) -> _tcp.Peer:
        """Connect a user's PEER to PORT (a client forward); closed at the end if still open."""
        peer = peer or _tcp.Peer()
        self.peers.append(peer)
        return await _tcp.connect(port, peer)

    # -- relay -------------------------------------------------------------------------------------

    @property
    def relay_url(self) -> str:
        return f"ws://127.0.0.1:{self.relay_port}"

    def relay_args(self, port: int = 0) -> list[str]:
        return [
            "--listen",
            str(port),
            "--config",
            self.files.relay_toml,
            "--admin-token-file",
            self.files.admin_token_file,
        ]

    async def start_relay(self, port: int = 0) -> RelayService:
        """nbbridge-relay on 127.0.0.1:PORT (0: any); ``relay_port`` says where."""
        options = relay_tap.Options()
        options.parseOptions(self.relay_args(port))
        service = relay_tap.makeService(options, reactor)
        service.startService()
        self.relay = service
        self._relay_listening = await service.when_listening()
        self.relay_port = self._relay_listening.getHost().port
        return service

    async def stop_relay(self) -> None:
        """Stop the relay as an operator would: close every connection, wait until all are gone."""
        service, self.relay = self.relay, None
        if service is not None:
            await service.stopService()

    async def kill_relay(self) -> None:
        """The relay dies: its port stops listening and every connection is dropped (reset)."""
        service, self.relay = self.relay, None
        assert service is not None and self._relay_listening is not None
        await self._relay_listening.stopListening()
        service.connections.abort_all()
        await service.connections.when_idle()
        await service.stopService()

    async def start_relay_process(self, port: int = 0) -> ChildProcess:
        """``twistd -n --pidfile= nbbridge-relay ...`` as a child process (for SIGKILL)."""
        argv = twistd_command("nbbridge-relay", self.relay_args(port))
        process = spawn(self, "nbbridge-relay", argv, child_env(), cwd=self.files.root.path)
        found = await process.wait_for(r"nbbridge relay listening on ws://127\.0\.0\.1:(\d+)/")
        self.relay_port = int(found.group(1))
        self.relay_process = process
        return process

    async def start_client_process(
        self, forward: Mapping[str, int]
    ) -> tuple[ChildProcess, dict[str, int]]:
        """``twistd -n --pidfile= nbbridge-client ...`` as a child; returns once it listens.

        FORWARD maps each service to the port to listen on (0: any); the ports taken are
        returned, so that a client started again after a kill can listen where it did.
        """
        args = self.client_args([])
        for service, port in forward.items():
            args += ["--forward", f"{service}={port}"]
        argv = twistd_command("nbbridge-client", args)
        process = spawn(self, "nbbridge-client", argv, child_env(), cwd=self.files.root.path)
        ports = {}
        for service in forward:
            found = await process.wait_for(rf"{re.escape(service)} → 127\.0\.0\.1:(\d+)")
            ports[service] = int(found.group(1))
        return process, ports

    async def start_agent_process(
        self, expose: Mapping[str, str], name: str = "gpu"
    ) -> ChildProcess:
        """``twistd -n --pidfile= nbbridge-agent ...`` as a child; returns once it is online."""
        argv = twistd_command("nbbridge-agent", self.agent_args(expose, name))
        mark = self.relay_mark()
        process = spawn(self, "nbbridge-agent", argv, child_env(), cwd=self.files.root.path)
        # Its own line first: that wait fails at once, with its output, if the agent exits.
        await process.wait_for(f"agent {name} online at")
        await self.relay_says(f"agent {name} online", since=mark)
        return process

    def relay_mark(self) -> int:
        """A position in what the current relay logged (in-process or child process)."""
        if self.relay is None and self.relay_process is not None:
            return len(self.relay_process.lines)
        return self.logs.mark()

    async def relay_says(self, text: str, since: int) -> None:
        """Wait until the current relay logs a line containing TEXT, after mark SINCE."""
        if self.relay is None and self.relay_process is not None:
            await self.relay_process.wait_for(re.escape(text), since=since)
        else:
            await self.logs.wait_for(text, RELAY, since=since)

    async def status(self, admin: bool = True) -> dict[str, Any]:
        """GET the relay's /status (with the admin token: also the agents by name)."""
        headers = {"Authorization": f"Bearer {self.files.admin_token}"} if admin else {}
        response = await self.http.get(
            f"http://127.0.0.1:{self.relay_port}/status", headers=headers
        )
        self.assertEqual(response.code, 200)
        result: dict[str, Any] = json.loads(await treq.content(response))
        return result

    # -- agent -------------------------------------------------------------------------------------

    def agent_args(
        self,
        expose: Mapping[str, str],
        name: str = "gpu",
        token: str = "gpu",
        key: str = "agent",
        relay_url: str | None = None,
    ) -> list[str]:
        args = [
            "--relay",
            relay_url or self.relay_url,
            "--name",
            name,
            "--token-file",
            self.files.token_files[token],
            "--key",
            self.files.key_files[key],
            "--authorized-keys",
            self.files.authorized_keys,
        ]
        for service, endpoint in expose.items():
            args += ["--expose", f"{service}={endpoint}"]
        return args

    async def start_agent(
        self,
        expose: Mapping[str, str],
        name: str = "gpu",
        token: str = "gpu",
        key: str = "agent",
        wait_online: bool = True,
        relay_url: str | None = None,
        extra: Sequence[str] = (),
    ) -> Agent:
        """nbbridge-agent exposing EXPOSE; by default returns once the relay registered it."""
        options = agent_tap.Options()
        options.parseOptions([*self.agent_args(expose, name, token, key, relay_url), *extra])
        mark = self.relay_mark()
        agent = agent_tap.makeService(options, reactor)
        assert isinstance(agent, Agent)
        agent.startService()
        self.agents.append(agent)
        if wait_online:
            await self.relay_says(f"agent {name} online", since=mark)
        return agent

    async def stop_agent(self, agent: Agent) -> None:
        self.agents.remove(agent)
        await agent.stopService()

    # -- client ------------------------------------------------------------------------------------

    def client_args(
        self,
        forward: Iterable[str],
        agent: str = "gpu",
        token: str = "laptop",
        key: str = "client",
        agent_key: str = "agent",
        relay_url: str | None = None,
    ) -> list[str]:
        args = [
            "--relay",
            relay_url or self.relay_url,
            "--agent",
            agent,
            "--agent-key",
            self.files.public(agent_key),
            "--token-file",
            self.files.token_files[token],
            "--key",
            self.files.key_files[key],
            # Not the fixed default port: tests run side by side.
            "--status",
            "tcp:0:interface=127.0.0.1",
        ]
        for service in forward:
            args += ["--forward", f"{service}=0"]
        return args

    async def start_client(
        self,
        forward: Iterable[str] = ("echo",),
        agent: str = "gpu",
        token: str = "laptop",
        key: str = "client",
        agent_key: str = "agent",
        relay_url: str | None = None,
        extra: Sequence[str] = (),
    ) -> Client:
        """nbbridge-client forwarding each service from a port of its own (bare port 0)."""
        options = client_tap.Options()
        args = self.client_args(forward, agent, token, key, agent_key, relay_url)
        options.parseOptions([*args, *extra])
        service = client_tap.makeService(options, reactor)
        service.startService()
        forwards = [s for s in service if isinstance(s, ForwardService)]  # type: ignore[attr-defined]
        links = [s for s in service if isinstance(s, AgentLink)]
        ports = {}
        for forward_service in forwards:
            port = await forward_service.listening
            ports[forward_service.service_name] = port.getHost().port
        client = Client(service, links[0], ports)
        self.clients.append(client)
        return client

    async def stop_client(self, client: Client) -> None:
        self.clients.remove(client)
        await client.service.stopService()

    async def wait_link_up(self, since: int, agent: str = "gpu", timeout: float = 30) -> None:
        """Wait until a client logs that its link to AGENT is up (after log mark SINCE)."""
        await self.logs.wait_for(f"link to agent {agent} via", CLIENT, since, timeout)

    async def wait_agent_online(self, since: int, name: str = "gpu") -> None:
        """Wait until the in-process relay registered agent NAME (after log mark SINCE)."""
        await self.logs.wait_for(f"agent {name} online", RELAY, since=since)

    async def within(self, seconds: float, what: str, work: Any) -> Any:
        """Await WORK (a Deferred or coroutine); fail clearly if it takes over SECONDS."""
        d = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
        d.addTimeout(seconds, reactor)
        try:
            return await d
        except TimeoutError:
            self.fail(f"{what}: no result within {seconds:g} s")

    async def echo_once(self, port: int, size: int = 64 * 1024, seed: int = 1) -> _tcp.Peer:
        """One connection through a forward to an echo service: SIZE bytes, all back intact."""
        peer = await self.connect(port, _tcp.Peer(size, seed=seed, half_close=True))
        reason = await peer.lost
        self.assertTrue(_tcp.clean(reason), f"echo connection ended with {reason!r}")
        self.assertEqual((peer.sent, peer.received), (size, size))
        self.assertEqual(peer.received_hash.hexdigest(), peer.sent_hash.hexdigest())
        return peer


__all__ = ["AGENT", "CLIENT", "MUX", "RELAY", "Client", "Files", "TunnelTestCase"]
