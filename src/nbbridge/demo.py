"""`make demo`: the whole product on one machine, on loopback, in a temporary directory.

Starts a relay, a real JupyterLab, an agent exposing it and a client forwarding a local port
to it (relay, agent and client each a real ``twistd`` process) with freshly made keys and
tokens; checks that the Jupyter API and the JupyterLab page answer through the tunnel; prints
the URL to open; runs until Ctrl-C (or SIGTERM), then stops everything. ``--check`` stops right
after the check (used by the tests).

JupyterLab's configuration, runtime files, settings and workspaces live in the temporary
directory: a user's own Jupyter configuration (a password, a base URL) cannot break the demo,
and the demo leaves nothing in ``~/.jupyter``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from nbbridge._secrets import hash_token
from nbbridge.crypto import PrivateKey, write_private_key

BIN = Path(sys.executable).parent
#: The JupyterLab server script (package ``jupyterlab``, in the ``demo`` extra).
JUPYTER_LAB = BIN / "jupyter-lab"
#: What the demo prints before the URL to open; the tests wait for this line.
OPEN_PROMPT = "open in a browser:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


class Process:
    """A child process whose output is copied, line by line, to a log file we can wait on.

    A thread reads the child's output from a pipe for as long as the child writes (so the pipe
    never fills up), appends each line to the log and wakes whoever waits for a line.
    """

    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115
        self._lines: list[str] = []
        self._ended = False  # the child closed its output (it exited)
        self._changed = threading.Condition()
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,  # not the demo's terminal or pipe, which it may outlive
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._copy, name=f"{name} log", daemon=True)
        self._reader.start()

    def _copy(self) -> None:
        assert self.popen.stdout is not None
        try:
            for raw in self.popen.stdout:
                with self._changed:
                    if not self._log.closed:
                        self._log.write(raw)
                        self._log.flush()
                    self._lines.append(raw.decode(errors="replace"))
                    self._changed.notify_all()
        finally:
            self.popen.stdout.close()
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """Wait until ``text`` appears in the log; return the line that has it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if text in line:
                        return line.rstrip("\r\n")
                seen = len(self._lines)
                if self._ended:
                    tail = "".join(self._lines)[-3000:]
                    raise SystemExit(f"{self.name} exited:\n{tail}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(
                        f"{self.name}: no {text!r} after {timeout:g} s; see {self.log_path}"
                    )
                self._changed.wait(left)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        # The rest of its output; a grandchild still holding the pipe must not keep us here.
        self._reader.join(5)
        with self._changed:
            self._log.close()


def write_tunnel_files(work: Path, agent: str, client: str) -> PrivateKey:
    """Fresh keys, tokens and a relay.toml for one agent and one client, in WORK.

    Writes agent.key, client.key, authorized_keys, agent.token, client.token (0600) and
    relay.toml letting CLIENT reach AGENT; returns the agent's key (the client pins it).
    """
    agent_key, client_key = PrivateKey.generate(), PrivateKey.generate()
    write_private_key(work / "agent.key", agent_key)
    write_private_key(work / "client.key", client_key)
    (work / "authorized_keys").write_text(f"{client_key.public_key.to_text()} {client}\n")
    agent_token, client_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    write_secret(work / "agent.token", agent_token)
    write_secret(work / "client.token", client_token)
    (work / "relay.toml").write_text(
        f'[agents.{agent}]\ntoken_sha256 = "{hash_token(agent_token)}"\n\n'
        f'[clients.{client}]\ntoken_sha256 = "{hash_token(client_token)}"\n'
        f'agents = ["{agent}"]\n'
    )
    return agent_key


def jupyter_env(env: dict[str, str], work: Path, token: str) -> dict[str, str]:
    """ENV for JupyterLab: its token, and every file it writes kept under WORK."""
    jupyter = work / "jupyter"
    return dict(
        env,
        JUPYTER_TOKEN=token,
        JUPYTER_CONFIG_DIR=str(jupyter / "config"),
        JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(jupyter / "lab" / "user-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(jupyter / "lab" / "workspaces"),
    )


def check_through_tunnel(base: str, token: str) -> dict[str, object]:
    """Jupyter's API status and its JupyterLab page, fetched through the tunnel.

    The page is what the printed URL opens: without JupyterLab installed, Jupyter Server
    answers the API but 404 for ``/lab``, and the demo must say so instead of printing a URL
    that does not work.
    """
    auth = {"Authorization": f"token {token}"}
    request = urllib.request.Request(f"{base}/api/status", headers=auth)
    with urllib.request.urlopen(request, timeout=60) as response:
        status: dict[str, object] = json.load(response)
    request = urllib.request.Request(f"{base}/lab", headers=auth)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            page = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        raise SystemExit(f"JupyterLab did not answer through the tunnel: /lab gave {e}") from e
    if "jupyter-config-data" not in page:
        raise SystemExit(f"{base}/lab answered, but not with the JupyterLab page")
    return status


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the demo like Ctrl-C: through ``main``'s clean-up, which stops every child
    (they run in their own sessions, so nothing else would)."""
    raise KeyboardInterrupt


def start_tunnel_ends(
    processes: list[Process],
    twistd: list[str],
    relay_url: str,
    *,
    agent_key_text: str,
    jupyter_port: int,
    forward_port: int,
    work: Path,
    env: dict[str, str],
    client_args: Sequence[str] = (),
) -> None:
    """Start the agent exposing Jupyter, then the client forwarding FORWARD_PORT to it.

    Both go into PROCESSES as soon as they start, so the caller's clean-up stops them even if
    the other fails; returns once the client's forward is up. The cluster demo uses it too,
    with the load balancer's URL as RELAY_URL.
    """
    processes.append(
        Process(
            "agent",
            [
                *twistd,
                "nbbridge-agent",
                "--relay",
                relay_url,
                "--name",
                "gpu",
                "--token-file",
                "agent.token",
                "--key",
                "agent.key",
                "--authorized-keys",
                "authorized_keys",
                "--expose",
                f"jupyter=tcp:127.0.0.1:{jupyter_port}",
            ],
            work,
            env,
        )
    )
    processes[-1].wait_for("online at")
    processes.append(
        Process(
            "client",
            [
                *twistd,
                "nbbridge-client",
                "--relay",
                relay_url,
                "--agent",
                "gpu",
                "--agent-key",
                agent_key_text,
                "--token-file",
                "client.token",
                "--key",
                "client.key",
                "--forward",
                f"jupyter={forward_port}",
                *client_args,
            ],
            work,
            env,
        )
    )
    processes[-1].wait_for("jupyter →")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run nbbridge end to end on loopback.")
    parser.add_argument("--check", action="store_true", help="stop once the check passed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if not JUPYTER_LAB.exists():
        raise SystemExit(
            f"JupyterLab is not installed next to {sys.executable}: "
            "pip install '.[demo]' (make demo does)"
        )
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    work = Path(tempfile.mkdtemp(prefix="nbbridge-demo-"))
    (work / "notebooks").mkdir()
    env = dict(os.environ)
    env.pop("NBBRIDGE_TOKEN", None)
    agent_key = write_tunnel_files(work, agent="gpu", client="laptop")
    jupyter_token = secrets.token_hex(24)
    relay_port, jupyter_port, forward_port = free_port(), free_port(), free_port()
    relay_url = f"ws://127.0.0.1:{relay_port}"
    twistd = [str(BIN / "twistd"), "--nodaemon", "--pidfile="]

    processes: list[Process] = []
    try:
        processes.append(
            Process(
                "jupyter",
                [
                    str(JUPYTER_LAB),
                    "--ServerApp.ip=127.0.0.1",
                    f"--ServerApp.port={jupyter_port}",
                    "--ServerApp.port_retries=0",
                    "--ServerApp.open_browser=False",
                    f"--ServerApp.root_dir={work / 'notebooks'}",
                    *(["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []),
                ],
                work,
                jupyter_env(env, work, jupyter_token),
            )
        )
        processes.append(
            Process(
                "relay",
                [
                    *twistd,
                    "nbbridge-relay",
                    "--listen",
                    f"tcp:{relay_port}:interface=127.0.0.1",
                    "--config",
                    str(work / "relay.toml"),
                ],
                work,
                env,
            )
        )
        processes[-1].wait_for("listening on")
        start_tunnel_ends(
            processes,
            twistd,
            relay_url,
            agent_key_text=agent_key.public_key.to_text(),
            jupyter_port=jupyter_port,
            forward_port=forward_port,
            work=work,
            env=env,
        )
        processes[0].wait_for("Jupyter Server", timeout=90)
        processes[0].wait_for("http://127.0.0.1", timeout=90)

        base = f"http://127.0.0.1:{forward_port}"
        status = check_through_tunnel(base, jupyter_token)
        print(f"nbbridge demo: Jupyter answered through the tunnel (API and JupyterLab): {status}")
        print(f"  work directory: {work} (logs: relay.log agent.log client.log jupyter.log)")
        print(f"  {OPEN_PROMPT} {base}/lab?token={jupyter_token}", flush=True)
        if args.check:
            return 0
        print("Ctrl-C stops everything.", flush=True)
        signal.pause()
        return 0
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM, whenever it comes (even while a line above is printed).
        print("\nstopping…")
        return 0
    finally:
        for p in reversed(processes):
            p.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
