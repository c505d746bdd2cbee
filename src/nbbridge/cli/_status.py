"""`nbbridge status`: what the client's status page shows, in a terminal.

It asks the running nbbridge-client for its JSON document on loopback (``--status``, else
the ``status`` key of the client's config file, else the default endpoint) and prints the
link, then one line per forward; the Jupyter forward's line is the URL to open.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tomllib
import urllib.error
import urllib.request
from typing import Any

from nbbridge.contract import STATUS_ENDPOINT, STATUS_JSON_PATH

from ._errors import UserError

CLIENT_CONFIG = "~/.config/nbbridge/client.toml"
_TIMEOUT = 5.0


def status_url(endpoint: str) -> str:
    """The JSON document's URL for the client's ``--status`` ENDPOINT."""
    if endpoint.isdigit():
        return f"http://127.0.0.1:{endpoint}{STATUS_JSON_PATH}"
    match = re.fullmatch(r"(tcp6?):(\d+)(?::.*)?", endpoint)
    if match is None:
        raise UserError(f"status endpoint {endpoint}: give PORT or tcp:PORT:interface=HOST")
    interface = re.search(r"(?:^|:)interface=((?:\\.|[^:\\])*)", endpoint)
    host = interface.group(1).replace("\\", "") if interface else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{match.group(2)}{STATUS_JSON_PATH}"


def configured_endpoint(config: str | None) -> str:
    """``status`` from the client's config file, if it has one; else the default."""
    path = os.path.expanduser(config or CLIENT_CONFIG)
    try:
        with open(path, "rb") as f:
            value = tomllib.load(f).get("status")
    except FileNotFoundError:
        if config is not None:
            raise UserError(f"no config at {path}") from None
        return STATUS_ENDPOINT
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    if value is None:
        return STATUS_ENDPOINT
    if value == "off":
        raise UserError(f'{path} says status = "off": this client serves no status page')
    return str(value)


def fetch(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as response:
            document: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as e:
        raise UserError(f"{url}: the client answered {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise UserError(f"no nbbridge-client answers at {url} ({why}); is it running?") from None
    except ValueError:
        raise UserError(f"{url}: not a status document") from None
    return document


def render(document: dict[str, Any]) -> str:
    """The document as lines for a terminal."""
    link = document["link"]
    facts = [link["state"]]
    if link.get("up_for") is not None:
        facts[0] += f" for {_duration(link['up_for'])}"
    if link.get("rtt_ms") is not None:
        facts.append(f"round trip to the relay {link['rtt_ms']:g} ms")
    facts.append(f"{link['reconnects']} reconnect{'' if link['reconnects'] == 1 else 's'}")
    lines = [
        f"link     {' · '.join(facts)}",
        f"relay    {link['relay']}",
        f"agent    {link['agent']} ({link['agent_key']})",
    ]
    if link.get("last_error"):
        lines.append(f"error    {link['last_error']}")
    for forward in document["forwards"]:
        where = forward["line"] or f"{forward['service']} (not listening)"
        lines.append(
            f"{where}   {forward['open']} open, {forward['connections']} in all · "
            f"sent {_bytes(forward['bytes_up'])} ({_bytes(forward['rate_up'])}/s) · "
            f"received {_bytes(forward['bytes_down'])} ({_bytes(forward['rate_down'])}/s)"
        )
    return "\n".join(lines)


def _bytes(n: float) -> str:
    for limit, unit in ((1e9, "GB"), (1e6, "MB"), (1e4, "kB")):
        if abs(n) >= limit:
            return f"{n / (limit if unit != 'kB' else 1e3):.1f} {unit}"
    return f"{n:.0f} B"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _status(args: argparse.Namespace) -> None:
    url = status_url(args.status or configured_endpoint(args.config))
    document = fetch(url)
    print(json.dumps(document, indent=2) if args.json else render(document))


def add_status_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `status` on the `nbbridge` command."""
    parser = commands.add_parser(
        "status",
        help="show the running client's link and forwards (its status page, in text)",
        description="Show the running nbbridge-client's link and forwards, as its status page "
        f"does (http://127.0.0.1:{STATUS_ENDPOINT.split(':')[1]}/ by default).",
    )
    parser.add_argument("--status", help="the client's --status endpoint (default: its config's)")
    parser.add_argument("--config", help=f"the client's config file (default {CLIENT_CONFIG})")
    parser.add_argument("--json", action="store_true", help="print the JSON document")
    parser.set_defaults(run=_status)
