"""Static keys: the objects, their text forms and the files that hold them.

A public key travels as a short token people paste into command lines and
config files (`nbb1` + base32 of the key and a 4-byte checksum), so a typo is
caught before it becomes a confusing handshake failure. A private key lives in
a file only its owner can read; we refuse files others could read, like ssh.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import shlex
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Final

import attrs
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nbbridge._secrets import in_credentials_directory

from ._errors import KeyFileError, KeyFormatError
from ._noise import public_bytes

KEY_LEN: Final = 32
PUBLIC_KEY_PREFIX: Final = "nbb1"
PRIVATE_KEY_HEADER: Final = "nbbridge-private-key-v1"

_CHECKSUM_CONTEXT: Final = b"nbbridge-pubkey"
_CHECKSUM_LEN: Final = 4
_B32_ALPHABET: Final = frozenset("abcdefghijklmnopqrstuvwxyz234567")
# 36 bytes (key + checksum) are 58 base32 characters once the padding is dropped.
_B32_LEN: Final = 58
PUBLIC_KEY_TEXT_LEN: Final = len(PUBLIC_KEY_PREFIX) + _B32_LEN
_MAX_KEY_FILE: Final = 4096
_MAX_AUTHORIZED_FILE: Final = 1 << 20


def _check_key_bytes(_instance: object, _attribute: object, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != KEY_LEN:
        raise ValueError(f"an X25519 key is {KEY_LEN} bytes")


def _checksum(raw: bytes) -> bytes:
    return hashlib.blake2s(_CHECKSUM_CONTEXT + raw).digest()[:_CHECKSUM_LEN]


@attrs.frozen
class PublicKey:
    """A peer's static X25519 public key; `str()` gives its `nbb1...` token."""

    raw: bytes = attrs.field(validator=_check_key_bytes)

    def to_text(self) -> str:
        """The `nbb1...` token: prefix, then lowercase unpadded base32 of key + checksum."""
        encoded = base64.b32encode(self.raw + _checksum(self.raw)).decode("ascii")
        return PUBLIC_KEY_PREFIX + encoded.rstrip("=").lower()

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"PublicKey({self.to_text()})"


@attrs.frozen(eq=False, repr=False)
class PrivateKey:
    """This side's static X25519 private key; its repr never shows the secret."""

    _raw: bytes = attrs.field(validator=_check_key_bytes, alias="raw")
    _x25519: X25519PrivateKey = attrs.field(init=False)
    public_key: PublicKey = attrs.field(init=False)

    @_x25519.default
    def _make_x25519(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self._raw)

    @public_key.default
    def _make_public_key(self) -> PublicKey:
        return PublicKey(public_bytes(self._x25519))

    @classmethod
    def generate(cls) -> PrivateKey:
        """A fresh key from the operating system's random source."""
        return cls(os.urandom(KEY_LEN))

    def private_bytes(self) -> bytes:
        """The 32 secret bytes; named so that reaching for them is never an accident."""
        return self._raw

    def to_x25519(self) -> X25519PrivateKey:
        """The `cryptography` key object, for the Noise layer."""
        return self._x25519

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivateKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __repr__(self) -> str:
        return f"PrivateKey(<secret>, public_key={self.public_key.to_text()})"


def parse_public_key(text: str) -> PublicKey:
    """Parse an `nbb1...` token; whitespace around it is ignored.

    Raises KeyFormatError with a message a person can act on.
    """
    token = text.strip()
    if not token:
        raise KeyFormatError("empty public key")
    if token.startswith(PRIVATE_KEY_HEADER):
        raise KeyFormatError(
            "this is a private key, not a public key; `nbbridge pubkey FILE` prints the public key"
        )
    if not token.lower().startswith(PUBLIC_KEY_PREFIX):
        raise KeyFormatError(
            f"not an nbbridge public key (must start with {PUBLIC_KEY_PREFIX}): {_excerpt(token)}"
        )
    if len(token) != PUBLIC_KEY_TEXT_LEN:
        raise KeyFormatError(
            f"wrong length: an nbbridge public key has {PUBLIC_KEY_TEXT_LEN} characters, "
            f"this one has {len(token)} (cut short or pasted twice?)"
        )
    body = token[len(PUBLIC_KEY_PREFIX) :].lower()
    for position, char in enumerate(body, start=len(PUBLIC_KEY_PREFIX) + 1):
        if char not in _B32_ALPHABET:
            raise KeyFormatError(
                f"invalid character {char!r} at position {position}: "
                "keys use only the letters a-z and digits 2-7"
            )
    decoded = base64.b32decode(body.upper() + "======")
    raw, checksum = decoded[:KEY_LEN], decoded[KEY_LEN:]
    # The last character also carries padding bits; re-encoding catches typos there.
    if not hmac.compare_digest(checksum, _checksum(raw)) or PublicKey(raw).to_text() != (
        PUBLIC_KEY_PREFIX + body
    ):
        raise KeyFormatError("bad checksum: typo in key?")
    return PublicKey(raw)


def _excerpt(text: str, limit: int = 24) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


def private_key_text(key: PrivateKey) -> str:
    """The private key file's content."""
    encoded = base64.urlsafe_b64encode(key.private_bytes()).decode("ascii")
    return f"{PRIVATE_KEY_HEADER}\n{encoded}\n"


def parse_private_key_text(text: str, source: str = "private key") -> PrivateKey:
    """Parse a private key file's content; errors name `source`."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or lines[0] != PRIVATE_KEY_HEADER:
        first = lines[0] if lines else ""
        if first.lower().startswith(PUBLIC_KEY_PREFIX):
            raise KeyFileError(f"{source} holds a public key, not a private key")
        raise KeyFileError(
            f"{source} is not an nbbridge private key (its first line must be {PRIVATE_KEY_HEADER})"
        )
    if len(lines) != 2:
        raise KeyFileError(
            f"{source} is malformed: expected 2 lines (header and key), found {len(lines)}"
        )
    encoded = lines[1]
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_LEN or base64.urlsafe_b64encode(raw).decode().rstrip("=") != encoded.rstrip(
        "="
    ):
        raise KeyFileError(f"{source} is malformed: line 2 must be 32 bytes in base64url")
    return PrivateKey(raw)


def write_private_key(path: str | os.PathLike[str], key: PrivateKey, force: bool = False) -> None:
    """Write `key` to a new file readable only by its owner (mode 0600).

    Without `force` an existing file is never touched (O_CREAT|O_EXCL). With
    `force` the new key goes to a temporary file beside it that then replaces
    the old one in one step, so a crash leaves either the old key or the new.
    """
    path = os.fspath(path)
    data = private_key_text(key).encode("ascii")
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError as e:
            raise KeyFileError(f"{path} already exists; refusing to overwrite it") from e
        except OSError as e:
            raise KeyFileError(f"cannot create {path}: {e.strerror}") from e
        try:
            _write_all(fd, data)
        except OSError as e:
            os.unlink(path)
            raise KeyFileError(f"cannot write {path}: {e.strerror}") from e
        finally:
            os.close(fd)
        return
    directory = os.path.dirname(path) or "."
    try:
        # mkstemp creates the file with O_EXCL and mode 0600.
        fd, temp = tempfile.mkstemp(prefix=".nbbridge-key-", dir=directory)
    except OSError as e:
        raise KeyFileError(f"cannot create a file in {directory}: {e.strerror}") from e
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as e:
        os.unlink(temp)
        raise KeyFileError(f"cannot write {path}: {e.strerror}") from e


def _write_all(fd: int, data: bytes) -> None:
    os.fchmod(fd, 0o600)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Read a private key file, refusing one that group or others can access."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KeyFileError(f"cannot read private key {path}: {e.strerror}") from e
    try:
        # Check the open file itself, so nothing can swap the path between check and read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"cannot read private key {path}: not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077 and not in_credentials_directory(path):
            raise KeyFileError(
                f"permissions {mode:04o} on {path} are too open; run chmod 600 {shlex.quote(path)}"
            )
        data = os.read(fd, _MAX_KEY_FILE + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read private key {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{path} is not an nbbridge private key (far too long)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not an nbbridge private key (not text)") from None
    return parse_private_key_text(text, source=path)


def _frozen_mapping(
    labels: Mapping[PublicKey, str | None],
) -> Mapping[PublicKey, str | None]:
    return MappingProxyType(dict(labels))


@attrs.frozen
class AuthorizedKeys:
    """The set of client keys an agent accepts, each with an optional label for logs."""

    _labels: Mapping[PublicKey, str | None] = attrs.field(
        converter=_frozen_mapping, hash=False, alias="labels"
    )

    @classmethod
    def from_keys(cls, keys: Iterable[PublicKey | tuple[PublicKey, str | None]]) -> AuthorizedKeys:
        """Build from keys, or (key, label) pairs; the first label for a key wins."""
        labels: dict[PublicKey, str | None] = {}
        for item in keys:
            key, label = item if isinstance(item, tuple) else (item, None)
            labels.setdefault(key, label)
        return cls(labels)

    def __contains__(self, key: object) -> bool:
        return key in self._labels

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def label_for(self, key: PublicKey) -> str | None:
        """The label written after the key, or None (also for unknown keys)."""
        return self._labels.get(key)


def parse_authorized_keys(text: str, source: str = "authorized keys") -> AuthorizedKeys:
    """Parse authorized keys text: `KEY [label...]` per line, `#` comments, blank lines."""
    pairs: list[tuple[PublicKey, str | None]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token, *rest = line.split(None, 1)
        label = rest[0].strip() if rest else ""
        try:
            key = parse_public_key(token)
        except KeyFormatError as e:
            raise KeyFileError(f"{source}, line {number}: {e}") from None
        pairs.append((key, label or None))
    return AuthorizedKeys.from_keys(pairs)


def load_authorized_keys(path: str | os.PathLike[str]) -> AuthorizedKeys:
    """Read an authorized keys file; errors name the file and the line.

    A file, or a directory holding it, that anyone may write is refused: whoever can change
    the list can let themselves in (ssh's StrictModes refuses the same).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            # The open file itself is checked, so the path cannot be swapped in between.
            _refuse_world_writable(path, os.fstat(f.fileno()).st_mode)
            data = f.read(_MAX_AUTHORIZED_FILE + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read authorized keys {path}: {e.strerror}") from e
    if len(data) > _MAX_AUTHORIZED_FILE:
        raise KeyFileError(f"{path}: too large for an authorized keys file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KeyFileError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_authorized_keys(text, source=path)


def _refuse_world_writable(path: str, mode: int) -> None:
    """Raise KeyFileError if anyone may change the authorized keys file or swap it.

    Both the directory of the path as given and that of the file it resolves to count:
    a symlink in a world-writable directory can be replaced as easily as a file.
    """
    if in_credentials_directory(path):
        return
    if mode & stat.S_IWOTH:
        raise KeyFileError(
            f"authorized keys {path} is writable by everyone (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod o-w {shlex.quote(path)}"
        )
    directories = dict.fromkeys(
        os.path.dirname(os.path.abspath(p)) for p in (path, os.path.realpath(path))
    )
    for directory in directories:
        dir_mode = os.stat(directory).st_mode
        if dir_mode & stat.S_IWOTH:
            # A shared sticky directory such as /tmp must stay writable: move the file instead.
            fix = (
                "move the file to a directory only its owner can write"
                if dir_mode & stat.S_ISVTX
                else f"run: chmod o-w {shlex.quote(directory)}"
            )
            raise KeyFileError(
                f"authorized keys {path} is in {directory}, which everyone may write "
                f"(mode {stat.S_IMODE(dir_mode):04o}), so anyone could replace the file; {fix}"
            )
