"""Noise_IK_25519_ChaChaPoly_BLAKE2s, following the Noise specification revision 34.

Sans-IO: these objects only turn bytes into bytes. The names follow the spec
(CipherState, SymmetricState, HandshakeState, section 5) so each step can be
checked against it; only the IK pattern is implemented, because that is the
only one nbbridge uses and fewer code paths means fewer places to get wrong.

    IK:
      <- s
      ...
      -> e, es, s, ss
      <- e, ee, se
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PROTOCOL_NAME: Final = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
DHLEN: Final = 32
HASHLEN: Final = 32
TAGLEN: Final = 16
MAX_MESSAGE_LEN: Final = 65535
# Nonce 2**64-1 is reserved by the spec (section 5.1) for rekey.
MAX_NONCE: Final = 2**64 - 1

_nonce_struct = struct.Struct("<4xQ")
_ZEROS32: Final = bytes(32)


class NoiseError(Exception):
    """Something in the Noise layer went wrong; the session cannot continue."""


class DecryptError(NoiseError):
    """A ciphertext failed authentication: tampered, replayed, reordered or wrong key."""


class NonceExhaustedError(NoiseError):
    """A CipherState used its last nonce; the spec forbids going further."""


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    # hmac with blake2s uses its 64-byte block size, as HMAC-BLAKE2s in the spec requires.
    return hmac.new(key, data, hashlib.blake2s).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """HKDF from section 4.3, with HMAC-BLAKE2s; returns 2 or 3 outputs of HASHLEN bytes."""
    if outputs not in (2, 3):
        raise ValueError("HKDF yields 2 or 3 outputs")
    temp_key = _hmac(chaining_key, ikm)
    out1 = _hmac(temp_key, b"\x01")
    out2 = _hmac(temp_key, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp_key, out2 + b"\x03")


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of the public half of an X25519 key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; an all-zero result (a low-order peer key) is refused by `cryptography`."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as e:
        raise NoiseError("invalid public key in handshake") from e


class CipherState:
    """A key and a nonce counter (section 5.1).

    The nonce only ever goes up and the state refuses to work once it reaches
    the reserved value 2**64-1, so a (key, nonce) pair is never used twice.
    """

    __slots__ = ("_aead", "_k", "_n")

    def __init__(self, key: bytes | None = None) -> None:
        self._k: bytes | None = None
        self._aead: ChaCha20Poly1305 | None = None
        self._n = 0
        if key is not None:
            self.initialize_key(key)

    def initialize_key(self, key: bytes) -> None:
        """Set a new key and restart the nonce at zero (only at handshake time)."""
        if len(key) != 32:
            raise ValueError("ChaChaPoly keys are 32 bytes")
        self._k = bytes(key)
        self._aead = ChaCha20Poly1305(self._k)
        self._n = 0

    def has_key(self) -> bool:
        """True once a key is set."""
        return self._k is not None

    @property
    def nonce(self) -> int:
        """The nonce the next encrypt or decrypt will use."""
        return self._n

    def set_nonce(self, nonce: int) -> None:
        """SetNonce() from the spec: only for out-of-band nonces and tests."""
        if not 0 <= nonce <= MAX_NONCE:
            raise ValueError("nonce out of range")
        self._n = nonce

    def _next_nonce(self) -> bytes:
        if self._n >= MAX_NONCE:
            raise NonceExhaustedError("nonce space exhausted; the session must end")
        return _nonce_struct.pack(self._n)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Encrypt and authenticate; without a key, return the plaintext (handshake rule)."""
        if self._aead is None:
            return bytes(plaintext)
        ciphertext = self._aead.encrypt(self._next_nonce(), plaintext, ad)
        self._n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes | bytearray | memoryview) -> bytes:
        """Check and decrypt; the nonce moves on only when authentication succeeds."""
        if self._aead is None:
            return bytes(ciphertext)
        try:
            plaintext = self._aead.decrypt(self._next_nonce(), ciphertext, ad)
        except InvalidTag:
            raise DecryptError("authentication failed") from None
        self._n += 1
        return plaintext

    def rekey(self) -> None:
        """Rekey() from section 4.2: k = first 32 bytes of ENCRYPT(k, maxnonce, empty, zeros).

        The nonce counter is left alone, as the spec says.
        """
        if self._aead is None:
            raise NoiseError("cannot rekey a CipherState without a key")
        new_key = self._aead.encrypt(_nonce_struct.pack(MAX_NONCE), _ZEROS32, b"")[:32]
        self._k = new_key
        self._aead = ChaCha20Poly1305(new_key)


class SymmetricState:
    """The chaining key, handshake hash and a CipherState (section 5.2)."""

    __slots__ = ("_ck", "_cs", "_h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self._h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self._h = _hash(protocol_name)
        self._ck = self._h
        self._cs = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        """Fold DH output into the chaining key and start a fresh handshake key."""
        self._ck, temp_k = hkdf(self._ck, ikm, 2)
        self._cs.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        """h = HASH(h || data)."""
        self._h = _hash(self._h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        """For PSK patterns (unused by IK, kept so the object is the spec's)."""
        self._ck, temp_h, temp_k = hkdf(self._ck, ikm, 3)
        self.mix_hash(temp_h)
        self._cs.initialize_key(temp_k)

    def get_handshake_hash(self) -> bytes:
        """The transcript hash h, identical on both sides after a good handshake."""
        return self._h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """Encrypt with h as associated data, then mix the ciphertext into h."""
        ciphertext = self._cs.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Decrypt with h as associated data, then mix the ciphertext into h."""
        plaintext = self._cs.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def export(self, label: bytes) -> bytes:
        """A secret for use outside Noise, derived from the chaining key under LABEL.

        HKDF with LABEL as input key material: independent of the transport keys, which
        ``split`` derives with empty input. Unlike the handshake hash (computable from the
        messages on the wire), only the two parties can compute it.
        """
        return hkdf(self._ck, label, 2)[0]

    def split(self) -> tuple[CipherState, CipherState]:
        """Two transport CipherStates: (initiator -> responder, responder -> initiator)."""
        temp_k1, temp_k2 = hkdf(self._ck, b"", 2)
        return CipherState(temp_k1), CipherState(temp_k2)


class HandshakeState:
    """The IK handshake for one side (section 5.3).

    :param initiator: which side this is.
    :param static: this side's static key.
    :param remote_static: the responder's public key; the initiator must know it (the K in IK).
    :param prologue: bytes both sides must agree on; mixed into the transcript.
    :param ephemeral: a fixed ephemeral private key, for test vectors only.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        static: X25519PrivateKey,
        remote_static: bytes | None = None,
        prologue: bytes = b"",
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        if initiator and remote_static is None:
            raise ValueError("the IK initiator must know the responder's static key")
        if remote_static is not None and len(remote_static) != DHLEN:
            raise ValueError("X25519 public keys are 32 bytes")
        self._initiator = initiator
        self._s = static
        self._s_pub = public_bytes(static)
        self._e = ephemeral
        self._rs = remote_static if initiator else None
        self._re: bytes | None = None
        self._ss = SymmetricState(PROTOCOL_NAME)
        self._ss.mix_hash(prologue)
        # Pre-message "<- s": both sides hash the responder's static key.
        self._ss.mix_hash(remote_static if initiator and remote_static else self._s_pub)
        self._step = 0
        self._result: tuple[CipherState, CipherState] | None = None

    @property
    def initiator(self) -> bool:
        """True for the side that sends the first message."""
        return self._initiator

    @property
    def complete(self) -> bool:
        """True once both handshake messages are through."""
        return self._result is not None

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key (the responder learns it from message 1)."""
        return self._rs

    def get_handshake_hash(self) -> bytes:
        """The transcript hash; usable as a channel binding once the handshake completes."""
        return self._ss.get_handshake_hash()

    def export_secret(self, label: bytes) -> bytes:
        """A 32-byte secret known only to the two parties, once complete (see ``export``)."""
        if self._result is None:
            raise NoiseError("handshake not complete")
        return self._ss.export(label)

    def cipher_states(self) -> tuple[CipherState, CipherState]:
        """(send, receive) transport states for this side, once complete."""
        if self._result is None:
            raise NoiseError("handshake not complete")
        c1, c2 = self._result
        return (c1, c2) if self._initiator else (c2, c1)

    def _my_turn(self) -> bool:
        return (self._step == 0) == self._initiator

    def _new_ephemeral(self) -> X25519PrivateKey:
        if self._e is None:
            self._e = X25519PrivateKey.generate()
        return self._e

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce the next handshake message carrying `payload`."""
        if self._result is not None or self._step > 1 or not self._my_turn():
            raise NoiseError("not this side's turn to write a handshake message")
        ss = self._ss
        e = self._new_ephemeral()
        e_pub = public_bytes(e)
        out = [e_pub]
        ss.mix_hash(e_pub)
        if self._step == 0:
            assert self._rs is not None
            ss.mix_key(dh(e, self._rs))  # es
            out.append(ss.encrypt_and_hash(self._s_pub))  # s
            ss.mix_key(dh(self._s, self._rs))  # ss
        else:
            assert self._re is not None and self._rs is not None
            ss.mix_key(dh(e, self._re))  # ee
            ss.mix_key(dh(e, self._rs))  # se (responder side)
        out.append(ss.encrypt_and_hash(payload))
        message = b"".join(out)
        if len(message) > MAX_MESSAGE_LEN:
            raise NoiseError("handshake message longer than 65535 bytes")
        self._advance()
        return message

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its payload.

        Raises DecryptError when the message does not authenticate, which for
        the initiator's read of message 2 means the responder does not hold the
        private key the initiator pinned (or the message was altered).
        """
        if self._result is not None or self._step > 1 or self._my_turn():
            raise NoiseError("not this side's turn to read a handshake message")
        if len(message) > MAX_MESSAGE_LEN:
            raise NoiseError("handshake message longer than 65535 bytes")
        ss = self._ss
        minimum = DHLEN + (DHLEN + TAGLEN if self._step == 0 else 0) + TAGLEN
        if len(message) < minimum:
            raise NoiseError("handshake message too short")
        re = bytes(message[:DHLEN])
        self._re = re
        ss.mix_hash(re)
        rest = message[DHLEN:]
        if self._step == 0:
            ss.mix_key(dh(self._s, re))  # es (responder side)
            self._rs = ss.decrypt_and_hash(bytes(rest[: DHLEN + TAGLEN]))  # s
            rest = rest[DHLEN + TAGLEN :]
            ss.mix_key(dh(self._s, self._rs))  # ss
        else:
            assert self._e is not None
            ss.mix_key(dh(self._e, re))  # ee
            ss.mix_key(dh(self._s, re))  # se (initiator side)
        payload = ss.decrypt_and_hash(bytes(rest))
        self._advance()
        return payload

    def _advance(self) -> None:
        self._step += 1
        if self._step == 2:
            self._result = self._ss.split()
            # The ephemeral secret is no longer needed; drop our reference to it.
            self._e = None
