"""A jupyter-server extension every instance loads: its token stays out of the pages it serves.

JupyterLab writes the server's token into each page it serves (``page_config.token``), for
its own API calls. An instance is reached only through a proxy that adds the token upstream
and never lets the browser hold it, so the page must not carry it either: this extension,
loaded after JupyterLab's (extensions load in name order), blanks it, as JupyterHub does for
its single-user servers. JupyterLab then authenticates nothing itself; the proxy does.

Enabled per instance by the ``jupyter_server_config.json`` that `JupyterProcesses` writes
into the instance's private config directory; it is imported by jupyter-server, not by
nbbridge.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    page_config = serverapp.web_app.settings.setdefault("page_config_data", {})
    page_config["token"] = ""
    serverapp.log.info("nbbridge: the token is kept out of served pages")
