"""Exceptions of nbbridge.crypto; each carries a message meant for a person to read."""

from __future__ import annotations


class KeyFormatError(ValueError):
    """A key's text is not a valid nbbridge key (typo, truncation, wrong kind of key)."""


class KeyFileError(Exception):
    """A key file (private key or authorized keys) cannot be used; the message says why."""


class SecureChannelError(Exception):
    """The end-to-end session cannot continue; `reason` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandshakeError(SecureChannelError):
    """The Noise handshake failed or was refused, so no session was established."""
