"""Who may call the REST API (sans-IO).

As in the original, a caller on loopback needs no token: the web application that embeds
the reservation token runs on the same host. From anywhere else a bearer token is needed:
the admin token (``--admin-token-file``: every call, ``/v1/stop`` included) or a user's token
(``--users FILE``: ``/v1/reserve`` and ``/v1/status``). The users file holds only SHA-256
hashes of tokens, and each user's groups::

    {"users": {"alice": {"token_sha256": "<hex>", "groups": ["vis"]}}}
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json

import attrs


class UsersFileError(Exception):
    """The users file cannot be used; the message says why."""


@attrs.frozen
class User:
    name: str
    token_sha256: str
    groups: frozenset[str]


@attrs.frozen
class Caller:
    """Who called: NAME, GROUPS (None: every group) and whether they may stop the gateway."""

    name: str
    groups: frozenset[str] | None
    admin: bool


def token_hash(token: str) -> str:
    """The hex SHA-256 of TOKEN, as the users file holds it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_users(path: str) -> list[User]:
    """The users of the JSON file at PATH."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UsersFileError(f"{path}: {e}") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise UsersFileError(f'{path}: expected {{"users": {{NAME: {{...}}}}}}')
    out = []
    for name, entry in users.items():
        digest = entry.get("token_sha256") if isinstance(entry, dict) else None
        groups = entry.get("groups", []) if isinstance(entry, dict) else None
        if not isinstance(digest, str) or len(digest) != 64 or not isinstance(groups, list):
            raise UsersFileError(f"{path}: user {name!r} needs token_sha256 (hex) and groups")
        out.append(User(name, digest.lower(), frozenset(str(g) for g in groups)))
    return out


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@attrs.frozen
class Access:
    """The admin token and the users; `caller` says who a request is."""

    admin_token: str | None = None
    users: tuple[User, ...] = ()

    def caller(self, peer_host: str, bearer: str | None) -> Caller | None:
        """The caller of a request from PEER_HOST with BEARER (None: refused, 401)."""
        if bearer:
            if self.admin_token is not None and hmac.compare_digest(
                bearer.encode("utf-8"), self.admin_token.encode("utf-8")
            ):
                return Caller("admin", None, admin=True)
            digest = token_hash(bearer)
            for user in self.users:
                if hmac.compare_digest(digest, user.token_sha256):
                    return Caller(user.name, user.groups, admin=False)
            return None
        if is_loopback(peer_host):
            return Caller("loopback", None, admin=True)
        return None


def bearer_of(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer T`` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
