"""Config files for the agent and the client: the long flags, in TOML.

A file holds the same settings as the command line, under the long flag names with ``-``
turned into ``_`` (``agent_key``, ``token_file``, ``forward = ["jupyter=8080"]``), so that a
paired laptop runs ``twistd -n nbbridge-client`` with no flags. This module only reads and
checks a file; :class:`~nbbridge.tunnel.TunnelOptions` decides what the command line
overrides.
"""

from __future__ import annotations

import os
import shlex
import stat
import tomllib
from collections.abc import Collection, Mapping
from typing import Any

import attrs


class ConfigError(Exception):
    """The config file cannot be used; the message is one line naming the file."""


@attrs.frozen
class ConfigSchema:
    """What a config file may hold: each key with the kind of value it takes.

    :ivar strings: keys taking a string (flag parameters without a coercer)
    :ivar integers: keys taking an integer
    :ivar booleans: keys taking true or false (the command line's flags)
    :ivar lists: keys taking a list of strings (the repeatable ``--expose``/``--forward``)
    :ivar paths: the string keys that name files, resolved against the file's directory
    """

    strings: Collection[str]
    integers: Collection[str] = ()
    booleans: Collection[str] = ()
    lists: Collection[str] = ()
    paths: Collection[str] = ()

    def known(self) -> list[str]:
        return sorted({*self.strings, *self.integers, *self.booleans, *self.lists})


def read_config(path: str, schema: ConfigSchema) -> dict[str, Any]:
    """The settings in the TOML file PATH, checked against SCHEMA, paths made absolute.

    Relative paths are relative to the file's directory (``~`` is expanded), so a file and
    the keys beside it can move together. A file everyone may write is refused: it names the
    agent's authorized keys and the key the client pins.

    :raises ConfigError: unreadable, not TOML, writable by everyone, an unknown key or a
        value of the wrong kind.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    if mode & stat.S_IWOTH:
        raise ConfigError(
            f"config file {path} is writable by everyone (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod o-w {shlex.quote(path)}"
        )
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    return _check(path, table, schema)


def _check(path: str, table: Mapping[str, Any], schema: ConfigSchema) -> dict[str, Any]:
    base = os.path.dirname(os.path.abspath(path))
    settings: dict[str, Any] = {}
    for key, value in table.items():
        if key in schema.strings:
            ok = isinstance(value, str)
            kind = "a string"
        elif key in schema.integers:
            ok = isinstance(value, int) and not isinstance(value, bool)
            kind = "an integer"
        elif key in schema.booleans:
            ok = isinstance(value, bool)
            kind = "true or false"
        elif key in schema.lists:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            kind = 'a list of strings, e.g. ["jupyter=8080"]'
        else:
            known = ", ".join(schema.known())
            raise ConfigError(f"config file {path}: unknown key {key!r} (known keys: {known})")
        if not ok:
            raise ConfigError(f"config file {path}: {key} must be {kind}")
        if key in schema.paths:
            value = os.path.join(base, os.path.expanduser(value))
        settings[key] = value
    return settings
