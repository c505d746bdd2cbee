"""Who is this token, and may it do this? Decisions only: no I/O, no logging of tokens.

Tokens are hashed with SHA-256 on arrival and looked up by that digest in a table built once
from relay.toml, so a connection costs the same with 10 000 `[agents.*]` entries as with one
(comparing with every entry made registering 10 000 agents take 110 s). The one entry found is
then compared with `hmac.compare_digest`. Neither step tells an attacker anything about the
token: the table is keyed by its SHA-256, whose timing leaks at most a few bits of a digest,
from which no token (nor a closer guess) can be derived.
"""

from __future__ import annotations

import hmac
from typing import Literal

import attrs

from nbbridge._secrets import token_digest
from nbbridge.contract import CloseCode

from ._config import RelayConfig


@attrs.frozen
class Identity:
    """Whom a token belongs to."""

    kind: Literal["agent", "client"]
    name: str


@attrs.frozen
class Refusal:
    """Why a connection is refused: a close code and a reason for the peer (no secrets)."""

    code: int
    reason: str


#: Identity given to everyone when the relay runs without --config (loopback only).
ANYONE = Identity("client", "anyone")


@attrs.frozen
class Authority:
    """Decides who may register which agent and who may reach which agent.

    CONFIG None means open mode: any token (or none) is accepted, for a loopback-only relay.
    """

    config: RelayConfig | None
    #: token digest -> whom it proves (relay.toml refuses a token given twice)
    _by_digest: dict[bytes, tuple[bytes, Identity]] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        table: dict[bytes, tuple[bytes, Identity]] = {}
        if self.config is not None:
            for name, expected in self.config.agents.items():
                table[expected] = (expected, Identity("agent", name))
            for name, entry in self.config.clients.items():
                table[entry.token_sha256] = (entry.token_sha256, Identity("client", name))
        object.__setattr__(self, "_by_digest", table)

    @property
    def open(self) -> bool:
        """Whether every token is accepted (no relay.toml)."""
        return self.config is None

    def identify(self, token: str | None) -> Identity | None:
        """The identity TOKEN proves, or None."""
        if self.config is None or token is None:
            return None
        digest = token_digest(token)
        entry = self._by_digest.get(digest)
        if entry is None:
            return None
        expected, who = entry
        return who if hmac.compare_digest(digest, expected) else None

    def _bearer(self, token: str | None) -> Identity | Refusal:
        """The identity TOKEN proves, or why it proves none."""
        if token is None:
            return Refusal(CloseCode.BAD_TOKEN, "missing bearer token")
        who = self.identify(token)
        if who is None:
            return Refusal(CloseCode.BAD_TOKEN, "token not recognised")
        return who

    def check_agent(self, agent: str, token: str | None) -> Refusal | None:
        """May TOKEN act as agent AGENT (control or data connection)?"""
        if self.config is None:
            return None
        who = self._bearer(token)
        if isinstance(who, Refusal):
            return who
        if who.kind != "agent":
            return Refusal(CloseCode.NOT_PERMITTED, f"a client token cannot act as agent {agent!r}")
        if who.name != agent:
            return Refusal(
                CloseCode.NOT_PERMITTED, f"agent {who.name!r} may not register as {agent!r}"
            )
        return None

    def check_client(self, agent: str, token: str | None) -> Identity | Refusal:
        """May TOKEN open a link to agent AGENT? Returns the client's identity if so."""
        if self.config is None:
            return ANYONE
        who = self._bearer(token)
        if isinstance(who, Refusal):
            return who
        if who.kind != "client":
            return Refusal(CloseCode.NOT_PERMITTED, "an agent token cannot open a client link")
        allowed = self.config.clients[who.name].agents
        if allowed is not None and agent not in allowed:
            return Refusal(
                CloseCode.NOT_PERMITTED, f"client {who.name!r} may not reach agent {agent!r}"
            )
        if agent not in self.config.agents:
            return Refusal(CloseCode.OFFLINE, f"agent {agent!r} is unknown")
        return who


def check_admin(expected: bytes | None, token: str | None) -> bool:
    """Whether TOKEN is the admin token whose SHA-256 is EXPECTED."""
    if expected is None or token is None:
        return False
    return hmac.compare_digest(token_digest(token), expected)
