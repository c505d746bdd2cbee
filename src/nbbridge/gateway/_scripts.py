"""Service scripts: what a reservation starts (``--remote_session_config``, ``--local_session``).

The config is the original's JSON, ``{"Name": {"script": "file.py", "count": N, "options":
{...}}}``. A script file defines a subclass of `RemoteServiceScript`; one object is built per
instance, with the service's options (kept as ``_common_options``); ``start(index)`` returns
(a Deferred of) the ``(host, port)`` of a listening socket and ``stop()`` ends the instance.
``index`` runs 0..count-1 and is distinct among live instances, so instances can derive
non-conflicting ports and displays from it.

Built-ins: `CommandService` runs ``options["command"]`` with ``{port}``/``{index}``/
``{display}`` filled in and waits until the port accepts connections (a simple service needs
no Python: give ``"command"`` and no ``"script"``); `DesktopService` (``--local_session
desktop N``) runs an Xvfb display and x11vnc serving it; `AppService` (``--local_session
app:COMMAND N``) does the same and runs COMMAND on that display.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Seconds an instance may take to report its socket.
DEFAULT_READY_TIMEOUT = 30.0
#: The first X display number of the built-in desktops: ``{display}`` is this plus the index.
BASE_DISPLAY = 100
#: The first port of `CommandService` instances: ``{port}`` is this plus the index.
BASE_PORT = 5900

Address = tuple[str, int]


class ServiceError(Exception):
    """An instance could not be started; the message says why (sent to the WebSocket)."""


class RemoteServiceScript:
    """Base class of service scripts (see the module docstring).

    Subclasses override `start` and `stop`. ``self._common_options`` holds the service's
    ``options`` from the config; ``self.reactor`` is the reactor to use.
    """

    def __init__(self, options: Mapping[str, Any], reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._common_options = dict(options)
        self.reactor = reactor

    def start(self, index: int) -> Address | Deferred[Address]:
        """Start instance INDEX; return (a Deferred of) the (host, port) it listens on."""
        raise NotImplementedError

    def stop(self) -> Deferred[None] | None:
        """End this instance."""


class _Process(ProcessProtocol):
    """A child process: its output lines go to the log and to an optional watcher."""

    _log = Logger()

    def __init__(self, name: str, watch: Any = None) -> None:
        self.name = name
        self.ended: Deferred[None] = Deferred()
        self.running = True
        self._watch = watch
        self._partial = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip()
            self._log.debug("{name}: {line}", name=self.name, line=text)
            if self._watch is not None:
                self._watch(childFD, text)

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if not reason.check(ProcessDone):
            self._log.info("{name} ended: {why}", name=self.name, why=reason.getErrorMessage())
        self.ended.callback(None)

    def terminate(self, clock: Any, grace: float = 5.0) -> Deferred[None]:
        """SIGTERM, then SIGKILL after GRACE seconds; fires once the process is gone."""
        if self.running:
            with contextlib.suppress(ProcessExitedAlready, OSError):
                self.transport.signalProcess("TERM")  # type: ignore[union-attr]
            kill = clock.callLater(grace, self._kill)
            self.ended.addBoth(lambda r: kill.cancel() if kill.active() else None)
        d: Deferred[None] = Deferred()
        self.ended.addBoth(lambda _: d.callback(None))
        return d

    def _kill(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessExitedAlready, OSError):
                self.transport.signalProcess("KILL")  # type: ignore[union-attr]


def spawn(
    reactor: Any,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    watch: Any = None,
    extra_fds: Mapping[int, str] | None = None,
) -> _Process:
    """Run ARGV (looked up on PATH) as NAME, its output logged."""
    import shutil

    exe = shutil.which(argv[0]) or argv[0]
    process = _Process(name, watch)
    fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
    fds.update(extra_fds or {})
    try:
        reactor.spawnProcess(process, exe, list(argv), env=dict(env), childFDs=fds)
    except OSError as e:
        raise ServiceError(f"cannot run {argv[0]}: {e}") from None
    return process


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "USER", "TMPDIR")}


def wait_for_port(reactor: Any, host: str, port: int, timeout: float, alive: Any) -> Deferred[None]:
    """Fires once HOST:PORT accepts a TCP connection (tried every 0.1 s), or fails with
    `ServiceError` after TIMEOUT s or when ALIVE() turns false (the process died)."""
    from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    result: Deferred[None] = Deferred()
    deadline = reactor.seconds() + timeout

    def attempt() -> None:
        d = connectProtocol(HostnameEndpoint(reactor, host, port), Protocol())
        d.addCallbacks(connected, failed)

    def connected(protocol: Protocol) -> None:
        protocol.transport.loseConnection()  # type: ignore[union-attr]
        result.callback(None)

    def failed(_: Failure) -> None:
        if not alive():
            result.errback(ServiceError("the service's process ended before it listened"))
        elif reactor.seconds() > deadline:
            result.errback(
                ServiceError(f"the service did not listen on port {port} in {timeout} s")
            )
        else:
            reactor.callLater(0.1, attempt)

    attempt()
    return result


class CommandService(RemoteServiceScript):
    """Runs ``options["command"]`` (a string or a list) with ``{port}``, ``{index}`` and
    ``{display}`` filled in (``port = options.get("port", 5900) + index``, ``display =
    options.get("display", 100) + index``) and reports ``host:port`` once it accepts."""

    def start(self, index: int) -> Deferred[Address]:
        options = self._common_options
        command = options.get("command")
        if not command:
            raise ServiceError("the service has no command")
        port = int(options.get("port", BASE_PORT)) + index
        display = int(options.get("display", BASE_DISPLAY)) + index
        host = str(options.get("host", "127.0.0.1"))
        values = {"port": port, "index": index, "display": display}
        words = shlex.split(command) if isinstance(command, str) else list(command)
        argv = [str(w).format(**values) for w in words]
        env = _base_env()
        env["DISPLAY"] = f":{display}"
        self._process = spawn(self.reactor, argv[0], argv, env)
        timeout = float(options.get("ready_timeout", DEFAULT_READY_TIMEOUT))
        d = wait_for_port(self.reactor, host, port, timeout, lambda: self._process.running)
        return d.addCallback(lambda _: (host, port))

    def stop(self) -> Deferred[None]:
        process = getattr(self, "_process", None)
        if process is None:
            return succeed(None)
        return process.terminate(self.reactor)


class DesktopService(RemoteServiceScript):
    """An Xvfb display served by x11vnc on loopback (``--local_session desktop N``).

    Options: ``geometry`` (Xvfb's screen, default 1024x768x24), ``xvfb_args`` (more Xvfb
    arguments, e.g. ``["-wr"]`` for a white root window), ``ready_timeout``.
    Xvfb picks a free display itself (``-displayfd``) and x11vnc a free port
    (``-autoport``, printed as ``PORT=N``), so instances never collide whatever the index.
    """

    #: The X program to run on the display (AppService), if any.
    app: Sequence[str] = ()

    def start(self, index: int) -> Deferred[Address]:
        options = self._common_options
        timeout = float(options.get("ready_timeout", DEFAULT_READY_TIMEOUT))
        geometry = str(options.get("geometry", "1024x768x24"))
        extra = [str(a) for a in options.get("xvfb_args", [])]
        self._processes: list[_Process] = []
        ready: Deferred[Address] = Deferred()
        display: Deferred[str] = Deferred()

        def xvfb_said(fd: int, text: str) -> None:
            if fd == 3 and text.strip().isdigit() and not display.called:
                display.callback(text.strip())

        xvfb = spawn(
            self.reactor,
            "Xvfb",
            ["Xvfb", "-displayfd", "3", "-screen", "0", geometry, "-nolisten", "tcp", *extra],
            _base_env(),
            xvfb_said,
            {3: "r"},
        )
        self._processes.append(xvfb)
        xvfb.ended.addCallback(
            lambda _: None if display.called else display.errback(ServiceError("Xvfb ended"))
        )

        def vnc(number: str) -> None:
            self.display = f":{number}"
            env = _base_env()
            env["DISPLAY"] = self.display

            def vnc_said(fd: int, text: str) -> None:
                if text.startswith("PORT=") and not ready.called:
                    ready.callback(("127.0.0.1", int(text[5:])))

            argv = [
                "x11vnc",
                "-display",
                self.display,
                "-autoport",
                str(BASE_PORT + 100),
                "-localhost",
                "-nopw",
                "-forever",
                "-shared",
                "-noipv6",
            ]
            x11vnc = spawn(self.reactor, "x11vnc", argv, env, vnc_said)
            self._processes.append(x11vnc)
            x11vnc.ended.addCallback(
                lambda _: None if ready.called else ready.errback(ServiceError("x11vnc ended"))
            )
            if self.app:
                self._processes.append(spawn(self.reactor, self.app[0], self.app, env))

        display.addCallbacks(vnc, ready.errback)
        ready.addTimeout(timeout, self.reactor)
        return ready

    def stop(self) -> Deferred[None]:
        from twisted.internet.defer import DeferredList

        processes = getattr(self, "_processes", [])
        return DeferredList([p.terminate(self.reactor) for p in reversed(processes)]).addCallback(
            lambda _: None
        )


class AppService(DesktopService):
    """A desktop running one X program (``--local_session app:COMMAND N``)."""

    def __init__(self, options: Mapping[str, Any], reactor: Any = None) -> None:
        super().__init__(options, reactor)
        command = options.get("command", "")
        self.app = shlex.split(command) if isinstance(command, str) else list(command)


@attrs.frozen
class ServiceSpec:
    """One service of the config: how to build an instance's script object, and its limits."""

    name: str
    script: type[RemoteServiceScript]
    count: int
    options: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def group(self) -> str | None:
        group = self.options.get("group")
        return str(group) if group else None

    @property
    def file_ext(self) -> list[str]:
        ext = self.options.get("file_ext", [])
        return [ext] if isinstance(ext, str) else [str(e) for e in ext]

    def build(self, reactor: Any) -> RemoteServiceScript:
        return self.script(self.options, reactor)


class ConfigError(Exception):
    """The services config cannot be used; the message names the file and the problem."""


def load_script_class(path: str) -> type[RemoteServiceScript]:
    """The `RemoteServiceScript` subclass defined in the Python file PATH."""
    name = "nbbridge_gateway_script_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a script's own error, reported at start-up
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, RemoteServiceScript)
        and value.__module__ == module.__name__
    ]
    if not found:
        raise ConfigError(f"{path}: defines no subclass of nbbridge.gateway.RemoteServiceScript")
    return found[-1]


def load_config(path: str) -> list[ServiceSpec]:
    """The services of the JSON config at PATH (scripts relative to its directory)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object of services")
    base = os.path.dirname(os.path.abspath(path))
    specs = []
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: service {name!r} is not an object")
        options = entry.get("options", {})
        count = entry.get("count", 1)
        if not isinstance(options, dict) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{path}: service {name!r}: options must be an object, count >= 1")
        script = entry.get("script")
        if script:
            cls = load_script_class(os.path.join(base, script))
        elif options.get("command"):
            cls = CommandService
        else:
            raise ConfigError(f"{path}: service {name!r} has neither script nor options.command")
        specs.append(ServiceSpec(name, cls, count, options))
    return specs


def local_session_spec(app: str, count: int) -> ServiceSpec:
    """``--local_session APP COUNT``: ``desktop``, or ``app:COMMAND`` (service ``app``)."""
    if app == "desktop":
        return ServiceSpec("desktop", DesktopService, count, {})
    if app.startswith("app:") and app[4:].strip():
        command = app[4:].strip()
        name = os.path.basename(shlex.split(command)[0])
        return ServiceSpec(name, AppService, count, {"command": command})
    raise ConfigError(f"--local_session {app}: expected desktop or app:COMMAND")
