"""Reading secrets (tokens) from files or the environment, never from the command line."""

from __future__ import annotations

import hashlib
import os
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


def read_secret(path: str | None, env: str, what: str = "token") -> str:
    """The secret in ``path`` (first line), else in environment variable ``env``.

    A file readable by others than its owner and group is refused, as ssh does for keys:
    a token that anyone on the machine can read is no secret.
    """
    if path:
        try:
            mode = os.stat(path).st_mode
            with open(path, encoding="utf-8") as f:
                text = f.readline().strip()
        except OSError as e:
            raise SecretError(f"cannot read {what} file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise SecretError(f"{what} file {path} is not UTF-8 text") from None
        if mode & stat.S_IROTH and not in_credentials_directory(path):
            raise SecretError(
                f"{what} file {path} is readable by everyone (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        if not text:
            raise SecretError(f"{what} file {path}: the file is empty")
        return text
    value = os.environ.get(env, "").strip()
    if not value:
        raise SecretError(f"no {what}: pass --{what.replace(' ', '-')}-file FILE or set {env}")
    return value
