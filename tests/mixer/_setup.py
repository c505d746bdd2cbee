"""The mixer's end-to-end set: a local Jupyter, a remote Jupyter behind a real agent and
relay (in this process, as in tests.tunnel), and the mixer between them, all on loopback.

The remote Jupyter has a marker variable in its environment (``NBBRIDGE_MIXER_MARK``) that
the local one does not, so a cell can tell where it ran.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import treq
from twisted.internet import reactor
from twisted.python.filepath import FilePath

from nbbridge.mixer import tap as mixer_tap
from tests._cleanup import add_async_cleanup
from tests.tunnel._harness import TunnelTestCase
from tests.tunnel._jupyter import missing_jupyter, start_jupyter

MARK = "NBBRIDGE_MIXER_MARK"


class MixerTestCase(TunnelTestCase):
    """Relay, agent exposing a remote Jupyter as ``jupyter``, a local Jupyter, the mixer."""

    timeout = 240
    skip = missing_jupyter()

    #: the local server: jupyter-server, or jupyter-lab for the browser's test
    local_script = "jupyter-server"

    async def start_all(self, extra: Sequence[str] = (), agent_process: bool = False) -> None:
        """Everything; with AGENT_PROCESS the agent is a ``twistd`` child (to SIGKILL)."""
        self.local = await start_jupyter(self, script=self.local_script)
        self.remote = await start_jupyter(self, {MARK: "remote-host"})
        await self.start_relay()
        expose = {"jupyter": f"tcp:127.0.0.1:{self.remote.port}"}
        if agent_process:
            self.agent_process = await self.start_agent_process(expose)
        else:
            self.agent = await self.start_agent(expose)
        remote_token = FilePath(self.mktemp())
        remote_token.setContent(self.remote.token.encode())
        remote_token.chmod(0o600)
        local_token = FilePath(self.mktemp())
        local_token.setContent(self.local.token.encode())
        local_token.chmod(0o600)
        self.token = self.local.token
        self.mixer_args = [
            "--port", "0",
            "--jupyter-port", str(self.local.port),
            "--jupyter-token-file", local_token.path,
            "--remote", "gpu=agent:gpu/jupyter",
            "--remote-token-file", f"gpu={remote_token.path}",
            *self.client_args([])[:8],  # --relay, --agent gpu, --agent-key, --token-file
            *extra,
        ]  # fmt: skip
        await self.start_mixer()

    async def start_mixer(self) -> None:
        args = list(self.mixer_args)
        # The client's flags name the agent with --agent; the mixer pins keys per agent.
        i = args.index("--agent")
        del args[i : i + 2]
        i = args.index("--agent-key")
        args[i + 1] = f"gpu={args[i + 1]}"
        args += ["--key", self.files.key_files["client"]]
        options = mixer_tap.Options()
        options.parseOptions(args)
        mark = self.logs.mark()
        self.mixer = mixer_tap.makeService(options, reactor)
        self.mixer.startService()
        add_async_cleanup(self, self.stop_mixer)
        port = await self.mixer.listening.when_listening  # type: ignore[attr-defined]
        self.mixer_port = port.getHost().port
        await self.logs.wait_for("kernel table ready", "nbbridge.mixer", since=mark)

    async def stop_mixer(self) -> None:
        if self.mixer is not None and self.mixer.running:
            await self.mixer.stopService()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.mixer_port}{path}"

    async def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        code: int | None = 200,
        port: int | None = None,
        token: str | None = None,
    ) -> Any:
        """METHOD PATH on the mixer (or PORT) with the token; the JSON answer."""
        url = f"http://127.0.0.1:{port or self.mixer_port}{path}"
        headers = {"Authorization": f"token {token or self.token}"}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        response = await self.http.request(method, url, headers=headers, data=data)
        content = await treq.content(response)
        if code is not None:
            self.assertEqual(response.code, code, content[:500])
        return json.loads(content) if content else None
