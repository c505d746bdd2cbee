"""Command-line options shared by the agent and the client: the relay, the token, the key.

Both daemons reach the relay the same way, so they take the same flags, check them the
same way, and report a bad file or URL with the same one-line message. Every flag can also
come from a TOML config file (``--config``, or the daemon's default file if it exists); a
flag given on the command line wins, and a list flag given there replaces the file's list.

A mistake in the command line itself is a ``UsageError`` (twistd prints the usage with it);
a file that cannot be used (config, key, token, ``--ca``, authorized keys) ends the start-up
with one line, ``nbbridge-client: ...``, which is what a service manager's log shows.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from twisted.python import reflect, usage

from nbbridge._secrets import SecretError, read_secret
from nbbridge.crypto import KeyFileError, KeyFormatError, load_private_key
from nbbridge.mux import DEFAULT_GRACE, ChannelLimits
from nbbridge.transport import load_trust_root, parse_mapping, parse_relay_url

from ._config import ConfigError, ConfigSchema, read_config


class TunnelOptions(usage.Options):
    """--relay, --token-file, --key, --ca and --insecure, plus a repeatable mapping flag.

    Subclasses name their required flags, their mapping flag (``--expose``/``--forward``)
    and how its endpoint part is completed, their default config file, and load what else
    they need in ``load()``.
    """

    #: the daemon's name, which starts its one-line refusals
    command: ClassVar[str] = "nbbridge"
    #: the config file read when --config is not given, if it exists ("~" is expanded)
    default_config: ClassVar[str | None] = None
    required: ClassVar[tuple[str, ...]] = ()
    mapping_flag: ClassVar[str] = ""
    #: flags naming files: in a config file, relative to the file's directory
    path_flags: ClassVar[tuple[str, ...]] = ("token-file", "key", "ca")

    optFlags = [["insecure", None, "allow ws:// to a relay that is not on loopback"]]
    optParameters = [
        ["config", None, None, "TOML file of these options (flags given here override it)"],
        ["relay", None, None, "relay URL, e.g. wss://relay.example.com"],
        ["token-file", None, None, "file holding the token (else $NBBRIDGE_TOKEN)"],
        ["key", None, None, "this machine's private key file (nbbridge keygen)"],
        ["ca", None, None, "PEM file of the CA(s) to trust for wss:// instead of the system's"],
        [
            "max-channels",
            None,
            ChannelLimits().max_channels,
            "channels one link may carry at once (open or being opened)",
            int,
        ],
        [
            "max-pending-opens",
            None,
            ChannelLimits().max_pending_accepts,
            "opens from the other end that may be connecting to a service at once",
            int,
        ],
        [
            "resume-grace",
            None,
            DEFAULT_GRACE,
            "seconds a session whose link was lost keeps its connections open, waiting to "
            "resume (0: never resume; the agent's value bounds the client's)",
            int,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self[self.mapping_flag] = []
        #: the options the command line set (the rest may come from the config file)
        self.given: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        # usage.Options stores each parsed flag with self.opts[name] = value (opts is self).
        given = getattr(self, "given", None)
        if given is not None:
            given.add(key)
        super().__setitem__(key, value)

    @staticmethod
    def complete_endpoint(text: str) -> str:
        """The endpoint string for the mapping's ENDPOINT part (e.g. from a bare port)."""
        return text

    def add_mapping(self, value: str) -> None:
        """SERVICE=ENDPOINT, split at the first '='."""
        try:
            service, endpoint = parse_mapping(value)
        except ValueError as e:
            raise usage.UsageError(f"--{self.mapping_flag} {value}: {e}") from None
        if any(s == service for s, _ in self[self.mapping_flag]):
            raise usage.UsageError(f"--{self.mapping_flag}: service {service!r} given twice")
        self[self.mapping_flag].append((service, self.complete_endpoint(endpoint)))

    def refuse(self, message: str) -> SystemExit:
        """The one-line exit for a file that cannot be used (raise it)."""
        return SystemExit(f"{self.command}: {message}")

    def postOptions(self) -> None:
        self.apply_config()
        where = f" (or in {self['config']})" if self["config"] else ""
        for flag in ("relay", "key", *self.required):
            if not self[flag]:
                raise usage.UsageError(f"--{flag} is required{where}")
        if not self[self.mapping_flag] and self.needs_mapping():
            raise usage.UsageError(
                f"give at least one --{self.mapping_flag} SERVICE=ENDPOINT{where}"
            )
        try:
            self["relay_url"] = parse_relay_url(self["relay"], self["insecure"])
            self["channel_limits"] = ChannelLimits(
                _positive(self, "max-channels"), _positive(self, "max-pending-opens")
            )
            if not isinstance(self["resume-grace"], int) or self["resume-grace"] < 0:
                raise ValueError("--resume-grace must be a number of seconds, 0 or more")
            self.parse()
        except (ValueError, KeyFormatError) as e:
            raise usage.UsageError(str(e)) from None
        try:
            self["private_key"] = load_private_key(self["key"])
            self["token"] = read_secret(self["token-file"], "NBBRIDGE_TOKEN")
            if self["ca"] is not None:
                # Checked now, though used at each connect: a unit must not look healthy
                # while every attempt fails on a file it cannot read.
                load_trust_root(self["ca"])
            self.load()
        except (ValueError, KeyFileError, KeyFormatError, SecretError) as e:
            raise self.refuse(str(e)) from None

    def needs_mapping(self) -> bool:
        """Whether at least one mapping flag is required (the agent's launcher serves alone)."""
        return True

    def parse(self) -> None:
        """Check the subclass's own flag values; raise ValueError to refuse (a usage error)."""

    def load(self) -> None:
        """Read the subclass's own files; raise ValueError or a key error to refuse."""

    # -- the config file ------------------------------------------------------------------------

    def config_schema(self) -> ConfigSchema:
        """Every long option of this command, as a config key (``--agent-key``: ``agent_key``)."""
        flags: list[list[Any]] = []
        parameters: list[list[Any]] = []
        reflect.accumulateClassList(type(self), "optFlags", flags)
        reflect.accumulateClassList(type(self), "optParameters", parameters)
        integers = {p[0] for p in parameters if len(p) > 4 and p[4] is int}
        strings = {p[0] for p in parameters} - integers - {"config"}
        return ConfigSchema(
            strings=_keys(strings),
            integers=_keys(integers),
            booleans=_keys(f[0] for f in flags),
            lists=_keys([self.mapping_flag]),
            paths=_keys(self.path_flags),
        )

    def apply_config(self) -> None:
        """Fill in what the command line left out from --config (or the default file)."""
        mapping_given = bool(self[self.mapping_flag])
        path = self["config"]
        if path is None and self.default_config is not None:
            default = os.path.expanduser(self.default_config)
            if os.path.exists(default):
                path = self["config"] = default
        if path is None:
            return
        try:
            settings = read_config(path, self.config_schema())
        except ConfigError as e:
            raise self.refuse(str(e)) from None
        for key, value in settings.items():
            flag = key.replace("_", "-")
            if flag in self.given:
                continue
            if flag == self.mapping_flag:
                if mapping_given:
                    continue
                for item in value:
                    try:
                        self.add_mapping(item)
                    except usage.UsageError as e:
                        raise self.refuse(f"config file {path}: {e}") from None
            elif isinstance(value, bool):
                self[flag] = int(value)
            else:
                self[flag] = value


def _keys(flags: Any) -> frozenset[str]:
    return frozenset(str(f).replace("-", "_") for f in flags)


def _positive(options: usage.Options, flag: str) -> int:
    value = options[flag]
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"--{flag} must be a positive number")
    return int(value)
