"""Reading secrets (tokens) from files or the environment, never from the command line."""

from __future__ import annotations

import hashlib
import os
import shlex
import stat


def token_digest(token: str) -> bytes:
    """The raw SHA-256 of TOKEN: tokens are stored and compared only as this hash."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def hash_token(token: str) -> str:
    """The hex SHA-256 of TOKEN: what relay.toml's ``token_sha256`` holds."""
    return token_digest(token).hex()


def in_credentials_directory(path: str) -> bool:
    """True for a file systemd handed us with LoadCredential= (``$CREDENTIALS_DIRECTORY``).

    systemd makes those files readable by the service alone, by means (ACLs, a private
    mount) that mode bits do not show, so the usual permission check would refuse them.
    """
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return False
    real = os.path.realpath(path)
    return os.path.commonpath([real, os.path.realpath(directory)]) == os.path.realpath(directory)


class SecretError(Exception):
    """A secret could not be read; the message is one line for the user."""


def too_open(path: str, mode: int, what: str) -> str | None:
    """Why a secret file with permission bits MODE must be refused, or None if it is private.

    Any access for group or others is too much (ssh's rule for keys): a token your group can
    read is shared with everyone in it. Files handed over by systemd are exempt.
    """
    mode = stat.S_IMODE(mode)
    if not mode & 0o077 or in_credentials_directory(path):
        return None
    who = "everyone" if mode & 0o007 else "its group"
    return (
        f"{what} file {path} is too open: {who} may access it (mode {mode:04o}); "
        f"run: chmod 600 {shlex.quote(path)}"
    )


def read_secret(path: str | None, env: str, what: str = "token") -> str:
    """The secret in ``path`` (first line), else in environment variable ``env``.

    A file that its group or others may read or write is refused, as ssh does for keys: a token
    that others on the machine can read is no secret.
    """
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                # The open file itself is checked, so the path cannot be swapped in between.
                refusal = too_open(path, os.fstat(f.fileno()).st_mode, what)
                if refusal is not None:
                    raise SecretError(refusal)
                text = f.readline().strip()
        except OSError as e:
            raise SecretError(f"cannot read {what} file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise SecretError(f"{what} file {path} is not UTF-8 text") from None
        if not text:
            raise SecretError(f"{what} file {path}: the file is empty")
        return text
    value = os.environ.get(env, "").strip()
    if not value:
        raise SecretError(f"no {what}: pass --{what.replace(' ', '-')}-file FILE or set {env}")
    return value
