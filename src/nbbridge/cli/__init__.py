"""nbbridge.cli: the `nbbridge` admin command (keygen, pubkey, token)."""

from ._main import main

__all__ = ["main"]
