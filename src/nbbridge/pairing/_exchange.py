"""The pairing exchange, sans-IO: SPAKE2, key confirmation, then sealed offers.

Both ends run one `Exchange` each; messages are opaque bytes the relay carries between them.
In order, each end sends:

1. `PAKE`: its SPAKE2 message (the password is the whole code). The relay sees it; SPAKE2
   lets it learn nothing of the code but one online guess, which burns the code.
2. `CONFIRM`: HKDF of the shared key, for its role. The other end checks it before sending
   anything else, so a wrong code ends both ends here ("wrong code"), and nothing sealed
   is ever sent under a key the other end does not share.
3. `OFFER`: its offer (public key and the rest, JSON) sealed with ChaCha20-Poly1305 under a
   key of its direction.
4. `DONE`: sealed too, once its files are written, so each end knows the other finished.

Any message out of order, unreadable or failing authentication raises `PairingFailed`.
"""

from __future__ import annotations

import enum
import hmac

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A, SPAKE2_B

from ._code import Code

PAKE = 0x01
CONFIRM = 0x02
OFFER = 0x03
DONE = 0x04

_ID_AGENT = b"nbbridge-pair-agent"
_ID_CLIENT = b"nbbridge-pair-client"
_INFO = b"nbbridge pair v1 "
_AAD = b"nbbridge pair v1"
_DONE_BODY = b"done"


class Role(enum.Enum):
    """Which end of a pairing: the agent (opened the code) or the client (typed it)."""

    AGENT = "agent"
    CLIENT = "client"

    @property
    def other(self) -> Role:
        return Role.CLIENT if self is Role.AGENT else Role.AGENT


class PairingFailed(Exception):
    """The exchange cannot go on; the message is one line for the user."""


class _State(enum.Enum):
    WAIT_PAKE = enum.auto()
    WAIT_CONFIRM = enum.auto()
    WAIT_OFFER = enum.auto()
    WAIT_DONE = enum.auto()
    FINISHED = enum.auto()


@attrs.frozen
class Send:
    """Send DATA to the other end."""

    data: bytes


@attrs.frozen
class PeerOffer:
    """The other end's offer arrived, authenticated: act on it, then call `done()`."""

    offer: bytes


@attrs.frozen
class PeerDone:
    """The other end wrote its files: the pairing is complete."""


Event = Send | PeerOffer | PeerDone


def _derive(key: bytes, purpose: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, _INFO + purpose.encode()).derive(key)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "little")


class Exchange:
    """One end of a pairing: feed it the other end's messages, send what it returns."""

    def __init__(self, role: Role, code: Code, offer: bytes) -> None:
        self.role = role
        self._offer = offer
        spake = SPAKE2_A if role is Role.AGENT else SPAKE2_B
        self._spake = spake(code.password, idA=_ID_AGENT, idB=_ID_CLIENT)
        self._state = _State.WAIT_PAKE
        self._started = False
        self._seal: ChaCha20Poly1305 | None = None
        self._open: ChaCha20Poly1305 | None = None
        self._expected_confirm = b""
        self._sent = 0
        self._received = 0

    @property
    def finished(self) -> bool:
        """Whether both ends are done: the other's DONE came and ours went."""
        return self._state is _State.FINISHED and self._done_sent()

    def start(self) -> bytes:
        """The first message: this end's SPAKE2 message."""
        self._started = True
        message: bytes = self._spake.start()
        return bytes([PAKE]) + message

    def receive(self, message: bytes) -> list[Event]:
        """What to do about MESSAGE from the other end; `PairingFailed` ends the exchange."""
        if not message:
            raise PairingFailed("the other side sent an empty message")
        kind, body = message[0], message[1:]
        if self._state is _State.WAIT_PAKE and kind == PAKE and self._started:
            return self._got_pake(body)
        if self._state is _State.WAIT_CONFIRM and kind == CONFIRM:
            if not hmac.compare_digest(body, self._expected_confirm):
                raise PairingFailed(
                    "wrong code: the two sides did not type the same code (it is now used up; "
                    "start again with a new one)"
                )
            self._state = _State.WAIT_OFFER
            return [Send(self._sealed(OFFER, self._offer))]
        if self._state is _State.WAIT_OFFER and kind == OFFER:
            self._state = _State.WAIT_DONE
            return [PeerOffer(self._unsealed(body))]
        if self._state is _State.WAIT_DONE and kind == DONE:
            if self._unsealed(body) != _DONE_BODY:
                raise PairingFailed("the other side's last message is not a 'done'")
            self._state = _State.FINISHED
            return [PeerDone()]
        raise PairingFailed(f"unexpected message {kind} from the other side ({self._state.name})")

    def done(self) -> bytes:
        """The message saying this end acted on the offer (wrote its files)."""
        if self._state not in (_State.WAIT_DONE, _State.FINISHED) or self._done_sent():
            raise PairingFailed("done() before the other side's offer, or twice")
        return self._sealed(DONE, _DONE_BODY)

    def _done_sent(self) -> bool:
        return self._sent == 2

    def _got_pake(self, body: bytes) -> list[Event]:
        try:
            key = self._spake.finish(body)
        except Exception as e:  # spake2 raises several kinds for a malformed message
            raise PairingFailed(f"the other side's SPAKE2 message is unusable: {e}") from None
        mine, theirs = self.role.value, self.role.other.value
        self._seal = ChaCha20Poly1305(_derive(key, f"seal {mine}"))
        self._open = ChaCha20Poly1305(_derive(key, f"seal {theirs}"))
        self._expected_confirm = _derive(key, f"confirm {theirs}")
        self._state = _State.WAIT_CONFIRM
        return [Send(bytes([CONFIRM]) + _derive(key, f"confirm {mine}"))]

    def _sealed(self, kind: int, plaintext: bytes) -> bytes:
        assert self._seal is not None
        header = bytes([kind])
        sealed = self._seal.encrypt(_nonce(self._sent), plaintext, _AAD + header)
        self._sent += 1
        return header + sealed

    def _unsealed(self, body: bytes) -> bytes:
        assert self._open is not None
        header = bytes([OFFER if self._received == 0 else DONE])
        try:
            plaintext = self._open.decrypt(_nonce(self._received), body, _AAD + header)
        except InvalidTag:
            raise PairingFailed("a sealed message failed authentication") from None
        self._received += 1
        return plaintext
