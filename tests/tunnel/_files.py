"""Keys, tokens, authorized keys and relay.toml, written as a user would keep them.

relay.toml: agents ``gpu`` and ``cpu``; client ``laptop`` may reach ``gpu``, client ``phone``
only ``cpu``. The authorized-keys file admits the key ``client`` only. Token files have mode
0600. ``stranger`` is a token and a key nobody knows; ``impostor`` a key no one pins.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import attrs
from twisted.python.filepath import FilePath

from nbbridge.crypto import PrivateKey, write_private_key
from nbbridge.demo import write_secret
from nbbridge.relay import hash_token


@attrs.define
class Files:
    """Everything on disk a deployment has: keys, tokens, authorized keys, relay.toml."""

    root: FilePath
    tokens: dict[str, str]
    token_files: dict[str, str]
    keys: dict[str, PrivateKey]
    key_files: dict[str, str]
    authorized_keys: str
    relay_toml: str
    admin_token: str
    admin_token_file: str

    @classmethod
    def create(cls, root: FilePath) -> Files:
        root.makedirs()
        tokens = {
            name: secrets.token_urlsafe(24)
            for name in ("gpu", "cpu", "laptop", "phone", "stranger", "admin")
        }
        token_files = {
            n: str(write_secret(Path(root.child(f"{n}.token").path), t)) for n, t in tokens.items()
        }
        keys = {n: PrivateKey.generate() for n in ("agent", "client", "stranger", "impostor")}
        key_files = {}
        for name, key in keys.items():
            key_files[name] = root.child(f"{name}.key").path
            write_private_key(key_files[name], key)
        authorized = root.child("authorized_keys")
        authorized.setContent(f"# test\n{keys['client'].public_key.to_text()} laptop\n".encode())
        toml = root.child("relay.toml")
        toml.setContent(
            (
                f'[agents.gpu]\ntoken_sha256 = "{hash_token(tokens["gpu"])}"\n'
                f'[agents.cpu]\ntoken_sha256 = "{hash_token(tokens["cpu"])}"\n'
                f'[clients.laptop]\ntoken_sha256 = "{hash_token(tokens["laptop"])}"\n'
                'agents = ["gpu"]\n'
                f'[clients.phone]\ntoken_sha256 = "{hash_token(tokens["phone"])}"\n'
                'agents = ["cpu"]\n'
            ).encode()
        )
        return cls(
            root,
            tokens,
            token_files,
            keys,
            key_files,
            authorized.path,
            toml.path,
            tokens["admin"],
            token_files["admin"],
        )

    def public(self, key: str) -> str:
        return self.keys[key].public_key.to_text()
