"""What `nbbridge pair` reads and writes on each machine.

GPU host: the agent's settings come from its config file (`/etc/nbbridge/agent.toml` or
`--config`), overridden by flags; a paired client's key is appended to the agent's
authorized_keys with a label (`nbb1... laptop paired 2026-12-02`).

Laptop: `client.toml` in the config directory (`~/.config/nbbridge` or `--dir`), beside
`client.key` (made if absent) and `client.token` (when the agent handed one over), both mode
0600. Paths in the config are relative to its directory, as the client reads them.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from nbbridge.crypto import PrivateKey, PublicKey, load_private_key, write_private_key
from nbbridge.pairing import AgentOffer

DEFAULT_AGENT_CONFIG = "/etc/nbbridge/agent.toml"
DEFAULT_CLIENT_DIR = "~/.config/nbbridge"
CLIENT_CONFIG = "client.toml"
CLIENT_KEY = "client.key"
CLIENT_TOKEN = "client.token"
#: Local ports for the services an agent usually exposes; others get 8081, 8082, ...
WELL_KNOWN_PORTS = {"jupyter": 8080, "ssh": 2222}
_AGENT_KEYS = {"relay", "name", "token_file", "key", "authorized_keys", "ca", "insecure", "expose"}
#: Keys an agent.toml may hold that pairing does not need.
_AGENT_OTHER_KEYS = {"max_channels", "max_pending_opens"}
_PATH_KEYS = {"token_file", "key", "authorized_keys", "ca"}


class PairSetupError(Exception):
    """A file or setting `nbbridge pair` needs is missing or wrong; one line for the user."""


@attrs.frozen
class AgentSetup:
    """The agent's settings pairing needs (from agent.toml and flags)."""

    relay: str
    name: str
    token_file: str | None
    key: str
    authorized_keys: str
    ca: str | None = None
    insecure: bool = False
    services: tuple[str, ...] = ()


def read_agent_config(path: str | None) -> dict[str, Any]:
    """The agent config's keys (paths made absolute); {} when no file is given or found."""
    if path is None:
        if not os.path.exists(DEFAULT_AGENT_CONFIG):
            return {}
        path = DEFAULT_AGENT_CONFIG
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise PairSetupError(f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise PairSetupError(f"{path}: not TOML: {e}") from None
    base = os.path.dirname(os.path.abspath(path))
    for key, value in data.items():
        if key not in _AGENT_KEYS | _AGENT_OTHER_KEYS:
            raise PairSetupError(f"{path}: unknown key {key!r}")
        if key in _PATH_KEYS:
            if not isinstance(value, str):
                raise PairSetupError(f"{path}: {key} must be a path")
            data[key] = os.path.join(base, os.path.expanduser(value))
    return data


def agent_setup(config: dict[str, Any], flags: dict[str, Any]) -> AgentSetup:
    """CONFIG overridden by the FLAGS given (None: not given); says which one is missing."""
    merged = {**config, **{k: v for k, v in flags.items() if v not in (None, [], False)}}
    for key in ("relay", "name", "key", "authorized_keys"):
        if not isinstance(merged.get(key), str) or not merged[key]:
            flag = key.replace("_", "-")
            raise PairSetupError(
                f"pairing needs the agent's {key}: give --{flag} or --config agent.toml"
            )
    expose = merged.get("expose", [])
    if not isinstance(expose, list) or not all(isinstance(e, str) for e in expose):
        raise PairSetupError("expose must be a list of SERVICE=ENDPOINT strings")
    return AgentSetup(
        relay=merged["relay"],
        name=merged["name"],
        token_file=merged.get("token_file"),
        key=merged["key"],
        authorized_keys=merged["authorized_keys"],
        ca=merged.get("ca"),
        insecure=bool(merged.get("insecure", False)),
        services=tuple(e.partition("=")[0] for e in expose),
    )


def check_appendable(path: str) -> None:
    """Refuse now, before a code is used, if PATH (authorized_keys) cannot be written."""
    target = path if os.path.exists(path) else (os.path.dirname(path) or ".")
    if not os.access(target, os.W_OK):
        raise PairSetupError(f"cannot write {path}: run nbbridge pair as the agent's user")


def authorize(path: str, key: PublicKey, label: str, today: datetime.date) -> str | None:
    """Append KEY with LABEL to authorized_keys at PATH; the line, or None if already there."""
    text = key.to_text()
    try:
        with open(path, encoding="utf-8") as f:
            existing = f.read()
    except FileNotFoundError:
        existing = ""
    if any(line.split()[:1] == [text] for line in existing.splitlines()):
        return None
    line = f"{text} {label} paired {today.isoformat()}"
    separator = "" if not existing or existing.endswith("\n") else "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(f"{separator}{line}\n")
    return line


def client_paths(directory: str) -> tuple[Path, Path, Path]:
    """The config, key and token files pairing writes in DIRECTORY."""
    root = Path(os.path.expanduser(directory))
    return root / CLIENT_CONFIG, root / CLIENT_KEY, root / CLIENT_TOKEN


def client_key(directory: str) -> PrivateKey:
    """The laptop's key in DIRECTORY, made (mode 0600) if there is none yet."""
    _, key_path, _ = client_paths(directory)
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if key_path.exists():
        return load_private_key(key_path)
    key = PrivateKey.generate()
    write_private_key(key_path, key)
    return key


def forwards(services: Sequence[str]) -> list[str]:
    """`SERVICE=PORT` forwards for the services an agent exposes (jupyter=8080 if none)."""
    if not services:
        return ["jupyter=8080"]
    spare = iter(range(8081, 8181))
    return [f"{s}={WELL_KNOWN_PORTS.get(s) or next(spare)}" for s in services]


def write_client_files(
    directory: str,
    offer: AgentOffer,
    relay: str,
    *,
    token_file: str | None = None,
    ca: str | None = None,
    insecure: bool = False,
    today: datetime.date,
) -> Path:
    """Write client.toml (and client.token if OFFER holds one) in DIRECTORY; the config path."""
    config_path, _, token_path = client_paths(directory)
    if offer.token is not None:
        _write_private(token_path, offer.token + "\n")
        token_file = CLIENT_TOKEN
    lines = [
        f"# written by `nbbridge pair` on {today.isoformat()}: agent {offer.agent}",
        f"relay = {_toml(relay)}",
        f"agent = {_toml(offer.agent)}",
        f"agent_key = {_toml(offer.agent_key.to_text())}",
        f"key = {_toml(CLIENT_KEY)}",
    ]
    if token_file is not None:
        lines.append(f"token_file = {_toml(token_file)}")
    if ca is not None:
        lines.append(f"ca = {_toml(os.path.abspath(ca))}")
    if insecure:
        lines.append("insecure = true")
    lines.append(f"forward = [{', '.join(_toml(f) for f in forwards(offer.services))}]")
    _write_private(config_path, "\n".join(lines) + "\n")
    return config_path


def _toml(value: str) -> str:
    # A JSON string is a TOML basic string (the same escapes).
    return json.dumps(value)


def _write_private(path: Path, text: str) -> None:
    """TEXT into PATH, mode 0600, replacing it in one step."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
