"""Helpers for deploy tests: read the shipped unit files, and turn a shipped command line
into one the daemons' real option parsers can check.

The daemons' ``Options.postOptions`` read the files they are given (keys, tokens, config),
so a command line naming ``/etc/nbbridge/agent.key`` or ``%d/agent-token`` can only be parsed
once those files exist. :func:`materialize` writes a fresh, valid file for each such flag in a
temporary root and points the flag at it; every flag name and every other value is kept as
shipped.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from nbbridge.crypto import PrivateKey, write_private_key
from tests.transport._certs import CA, write_ca

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
PLACEHOLDER_AGENT_KEY = "AGENT_PUBLIC_KEY"


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Parse a systemd unit file: ``{section: {key: [values...]}}``.

    Handles comments and backslash continuations, which is all the shipped units use.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ValueError(f"{path}: cannot parse line {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def plugin_args(argv: Sequence[str], plugin: str) -> list[str]:
    """The arguments after the twistd plugin name (what the plugin's Options parse)."""
    argv = list(argv)
    if plugin not in argv:
        raise AssertionError(f"{plugin} not in {argv}")
    return argv[argv.index(plugin) + 1 :]


def exec_start(unit: dict[str, dict[str, list[str]]]) -> list[str]:
    (line,) = unit["Service"]["ExecStart"]
    return shlex.split(line)


def materialize(
    args: Sequence[str], root: str, specifiers: dict[str, str], config: str = "relay-config"
) -> list[str]:
    """``args`` with systemd specifiers resolved and every file flag pointing at a real file.

    :param specifiers: e.g. ``{"%d": ".../credentials", "%h": ".../home"}``.
    :param config: what ``--config`` names: ``relay-config``, ``agent-config`` or
        ``client-config`` (each written with the files it names beside it).
    """
    out: list[str] = []
    args = [_resolve(a, specifiers) for a in args]
    i = 0
    while i < len(args):
        flag = args[i]
        out.append(flag)
        i += 1
        if flag in _FILE_FLAGS and i < len(args):
            kind = config if flag == "--config" else _FILE_FLAGS[flag]
            out.append(_write(args[i], root, kind))
            i += 1
        elif flag == "--agent-key" and i < len(args):
            value = args[i]
            if value == PLACEHOLDER_AGENT_KEY:
                value = PrivateKey.generate().public_key.to_text()
            out.append(value)
            i += 1
    return out


def _resolve(arg: str, specifiers: dict[str, str]) -> str:
    for spec, value in specifiers.items():
        arg = arg.replace(spec, value)
    return arg


def _write(path: str, root: str, kind: str) -> str:
    target = os.path.join(root, path.lstrip("/")) if not path.startswith(root) else path
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
        return target
    if kind == "key":
        write_private_key(target, PrivateKey.generate())
    elif kind == "token":
        _write_text(target, "token-for-a-deploy-test\n", 0o600)
    elif kind == "authorized":
        _write_text(target, PrivateKey.generate().public_key.to_text() + " laptop\n", 0o644)
    elif kind == "ca":
        write_ca(CA.create(), target)
    elif kind == "relay-config":
        digest = hashlib.sha256(b"token-for-a-deploy-test").hexdigest()
        _write_text(
            target,
            f'[agents.gpu]\ntoken_sha256 = "{digest}"\n\n'
            f'[clients.laptop]\ntoken_sha256 = "{digest}"\nagents = ["gpu"]\n',
            0o644,
        )
    elif kind == "agent-config":
        _write(os.path.join(os.path.dirname(target), "authorized_keys"), root, "authorized")
        _write(os.path.join(os.path.dirname(target), "relay-ca.pem"), root, "ca")
        _write_text(target, AGENT_TOML, 0o644)
    elif kind == "client-config":
        _write(os.path.join(os.path.dirname(target), "client.key"), root, "key")
        _write(os.path.join(os.path.dirname(target), "client.token"), root, "token")
        agent_key = PrivateKey.generate().public_key.to_text()
        _write_text(target, CLIENT_TOML.format(agent_key=agent_key), 0o600)
    else:
        raise AssertionError(kind)
    return target


#: /etc/nbbridge/agent.toml as docs/deploy.md writes it (key and token come from the unit).
AGENT_TOML = """\
relay = "wss://relay.example.com"
name = "gpu"
authorized_keys = "authorized_keys"
ca = "relay-ca.pem"
expose = ["jupyter=8888", "ssh=22"]
"""
#: ~/.config/nbbridge/client.toml as docs/deploy.md (and `nbbridge pair`) writes it.
CLIENT_TOML = """\
relay = "wss://relay.example.com"
agent = "gpu"
agent_key = "{agent_key}"
key = "client.key"
token_file = "client.token"
forward = ["jupyter=8080", "ssh=2222"]
"""


def _write_text(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


_FILE_FLAGS = {
    "--key": "key",
    "--token-file": "token",
    "--admin-token-file": "token",
    "--authorized-keys": "authorized",
    "--ca": "ca",
    "--config": "relay-config",
}
