"""Command-line options shared by the agent and the client: the relay, the token, the key.

Both daemons reach the relay the same way, so they take the same flags, check them the
same way, and report a bad file or URL with the same one-line message.
"""

from __future__ import annotations

from typing import ClassVar

from twisted.python import usage

from nbbridge._secrets import SecretError, read_secret
from nbbridge.crypto import KeyFileError, KeyFormatError, load_private_key
from nbbridge.mux import ChannelLimits
from nbbridge.transport import parse_mapping, parse_relay_url


class TunnelOptions(usage.Options):
    """--relay, --token-file, --key, --ca and --insecure, plus a repeatable mapping flag.

    Subclasses name their required flags, their mapping flag (``--expose``/``--forward``)
    and how its endpoint part is completed, and load what else they need in ``load()``.
    """

    required: ClassVar[tuple[str, ...]] = ()
    mapping_flag: ClassVar[str] = ""

    optFlags = [["insecure", None, "allow ws:// to a relay that is not on loopback"]]
    optParameters = [
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
    ]

    def __init__(self) -> None:
        super().__init__()
        self[self.mapping_flag] = []

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

    def postOptions(self) -> None:
        for flag in ("relay", "key", *self.required):
            if not self[flag]:
                raise usage.UsageError(f"--{flag} is required")
        if not self[self.mapping_flag]:
            raise usage.UsageError(f"give at least one --{self.mapping_flag} SERVICE=ENDPOINT")
        try:
            self["relay_url"] = parse_relay_url(self["relay"], self["insecure"])
            self["private_key"] = load_private_key(self["key"])
            self["token"] = read_secret(self["token-file"], "NBBRIDGE_TOKEN")
            self["channel_limits"] = ChannelLimits(
                _positive(self, "max-channels"), _positive(self, "max-pending-opens")
            )
            self.load()
        except (ValueError, KeyFileError, KeyFormatError, SecretError) as e:
            raise usage.UsageError(str(e)) from None

    def load(self) -> None:
        """Read the subclass's own files; raise ValueError or a key error to refuse."""


def _positive(options: usage.Options, flag: str) -> int:
    value = options[flag]
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"--{flag} must be a positive number")
    return int(value)
