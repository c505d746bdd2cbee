"""Run the real nginx (Debian's nginx-light) with the shipped deploy/nginx/nbbridge-relay.conf.

The shipped file is used as is, except for four things a test must change, each replaced by
a regex that must match exactly once (so a reshaped config fails here, loudly): the listen
address, the relay's upstream address and the two certificate paths. It is wrapped in a
minimal nginx.conf whose pid file, logs and temp directories live in the test's temp
directory, with ``daemon off; master_process off;`` so that nginx is one process the test
owns: started with spawnProcess, stopped with SIGTERM in clean-up, waited for until it exits.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests._ports import free_port
from tests._tools import skip_unavailable
from tests.transport._certs import write_server_files

NGINX = "/usr/sbin/nginx"
REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONF = REPO / "deploy" / "nginx" / "nbbridge-relay.conf"
#: The main-context part (worker_shutdown_timeout), included at the top as Debian would.
SHIPPED_MAIN_CONF = REPO / "deploy" / "nginx" / "nbbridge-main.conf"

_MAIN_CONF = """\
include {main};
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log stderr notice;
events {{
    worker_connections 128;
}}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/conf.d/*.conf;
}}
"""

# nginx logs its version once the listening sockets are bound; connections made after that
# wait in the listen backlog until its event loop accepts them.
_READY = re.compile(rb"\[notice\] [^\n]*: nginx/\d")


def adapt_config(
    text: str, *, listen_port: int, relay_port: int, cert: str, key: str, shipped_port: int = 8765
) -> str:
    """The shipped config with test ports and certificate paths."""
    replacements = [
        (r"listen\s+443\s+ssl;", f"listen 127.0.0.1:{listen_port} ssl;"),
        (rf"http://127\.0\.0\.1:{shipped_port};", f"http://127.0.0.1:{relay_port};"),
        (r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};"),
        (r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};"),
    ]
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text)
        if count != 1:
            raise AssertionError(f"{SHIPPED_CONF}: expected one match of {pattern!r}, got {count}")
    return text


class _NginxProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.started = False
        self.exited = False
        self.reason: Failure | None = None

    def errReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and _READY.search(self.output):
            self.started = True
            self.ready.callback(None)

    outReceived = errReceived

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self.reason = reason
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"nginx exited at start:\n{self.text()}"))
        self.ended.callback(None)

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


def _as_deferred(stop: Callable[[], Coroutine[Any, Any, None]]) -> Deferred[None]:
    return Deferred.fromCoroutine(stop())


async def start_nginx(
    testcase: TestCase,
    relay_port: int,
    config: Callable[[int, str, str], tuple[int, str]] | None = None,
    *,
    conf: Path = SHIPPED_CONF,
    shipped_port: int = 8765,
) -> tuple[int, str]:
    """Start nginx with the shipped config in front of ``127.0.0.1:relay_port``.

    CONF is the shipped site config to adapt (its upstream port SHIPPED_PORT becomes
    RELAY_PORT). CONFIG, if given, makes another site config instead (tests/cluster: several
    relays): called with a free port and the certificate and key paths, it answers the port
    the config listens on and the config's text.

    Returns ``(https_port, ca_pem_path)``: nginx serves TLS on 127.0.0.1:https_port with a
    certificate for ``localhost`` and ``127.0.0.1`` signed by the CA in ``ca_pem_path``.
    Clean-up stops nginx and waits until the process has exited. Skips the test if
    /usr/sbin/nginx is missing (``.ci/run`` installs it: apt-get install nginx-light).
    """
    if not os.access(NGINX, os.X_OK):
        skip_unavailable(f"{NGINX} not found: apt-get install nginx-light (.ci/run does)")
    tmp = os.path.abspath(testcase.mktemp())
    os.makedirs(os.path.join(tmp, "conf.d"))
    files = write_server_files(os.path.join(tmp, "tls"), ("localhost", "127.0.0.1"))
    main_conf = os.path.join(tmp, "nginx.conf")
    with open(main_conf, "w") as f:
        f.write(_MAIN_CONF.format(tmp=tmp, main=SHIPPED_MAIN_CONF))
    shipped = conf.read_text()

    # The port is picked free, then bound by nginx: another process may take it in between,
    # so a start that fails with "Address already in use" is retried with a new port.
    for _attempt in range(3):
        port = free_port()
        if config is not None:
            port, text = config(port, files.cert, files.key)
        else:
            text = adapt_config(
                shipped,
                listen_port=port,
                relay_port=relay_port,
                cert=files.cert,
                key=files.key,
                shipped_port=shipped_port,
            )
        with open(os.path.join(tmp, "conf.d", conf.name), "w") as f:
            f.write(text)
        process = _NginxProcess()
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            process, NGINX, [NGINX, "-p", tmp + "/", "-c", main_conf], env={}
        )

        async def stop(process: _NginxProcess = process, transport: object = transport) -> None:
            if not process.exited:
                transport.signalProcess("TERM")  # type: ignore[attr-defined]
            await process.ended
            # SIGTERM is nginx's fast shutdown and ends in exit status 0; anything else
            # (a crash during the test) is a failure worth seeing.
            if process.started and not (process.reason and process.reason.check(ProcessDone)):
                raise AssertionError(f"nginx ended badly ({process.reason}):\n{process.text()}")

        testcase.addCleanup(_as_deferred, stop)

        try:
            await process.ready
        except RuntimeError as e:
            if "Address already in use" in str(e):
                continue
            raise
        return port, files.ca
    raise RuntimeError(f"nginx could not bind a free port:\n{process.text()}")
