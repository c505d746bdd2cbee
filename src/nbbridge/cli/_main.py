"""The `nbbridge` admin command: make keys and relay tokens.

Every failure a user can cause ends in one line on stderr, prefixed
`nbbridge: `, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable, Sequence

from nbbridge._secrets import hash_token
from nbbridge.crypto import (
    KeyFileError,
    KeyFormatError,
    PrivateKey,
    load_private_key,
    write_private_key,
)

from ._errors import UserError
from ._service import add_service_commands
from ._status import add_status_command

EXIT_USAGE = 2
_TOKEN_BYTES = 32


class _Fail(Exception):
    """A user-facing error: its message is printed after `nbbridge: `."""


def _keygen(args: argparse.Namespace) -> None:
    key = PrivateKey.generate()
    try:
        write_private_key(args.file, key, force=args.force)
    except KeyFileError as e:
        if isinstance(e.__cause__, FileExistsError):
            raise _Fail(f"{e} (use --force to replace it)") from None
        raise _Fail(str(e)) from None
    print(key.public_key.to_text())
    _hint(
        f"wrote a new private key to {args.file} (mode 0600); keep it secret.\n"
        "The line above is its public key: clients pin an agent's key with --agent-key,\n"
        "agents list the keys of the clients they accept in their authorized keys file.\n"
        f"`nbbridge pubkey {args.file}` prints it again."
    )


def _pubkey(args: argparse.Namespace) -> None:
    print(load_private_key(args.file).public_key.to_text())


def _token(args: argparse.Namespace) -> None:
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    print(token)
    print(f'token_sha256 = "{hash_token(token)}"')
    _hint(
        "first line: the token, for the agent's or client's --token-file (keep it secret);\n"
        "second line: paste it into relay.toml (the relay stores only the hash)."
    )


def _hint(text: str) -> None:
    for line in text.splitlines():
        print(f"nbbridge: {line}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbbridge",
        description="nbbridge admin tool: create static keys and relay tokens.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    keygen = commands.add_parser(
        "keygen",
        help="write a new private key (mode 0600) and print its public key",
        description="Write a new private key to FILE (mode 0600) and print its public key.",
    )
    keygen.add_argument("file", metavar="FILE", help="where to write the private key")
    keygen.add_argument("--force", action="store_true", help="replace FILE if it exists")
    keygen.set_defaults(run=_keygen)

    pubkey = commands.add_parser(
        "pubkey",
        help="print the public key of a private key file",
        description="Print the public key (nbb1...) of the private key in FILE.",
    )
    pubkey.add_argument("file", metavar="FILE", help="a private key written by keygen")
    pubkey.set_defaults(run=_pubkey)

    token = commands.add_parser(
        "token",
        help="print a new random relay token and its relay.toml line",
        description="Print a new random token, then the relay.toml line holding its SHA-256.",
    )
    token.set_defaults(run=_token)
    add_service_commands(commands)
    add_status_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `nbbridge` command; returns the exit status."""
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except (_Fail, UserError, KeyFileError, KeyFormatError) as e:
        print(f"nbbridge: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"nbbridge: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    return 0
