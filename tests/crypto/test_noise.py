"""The Noise objects against published test vectors and the spec's rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from twisted.trial.unittest import SynchronousTestCase

from nbbridge.crypto import (
    PROTOCOL_NAME,
    CipherState,
    DecryptError,
    HandshakeState,
    NoiseError,
    NonceExhaustedError,
    SymmetricState,
)
from nbbridge.crypto._noise import MAX_NONCE, hkdf

VECTORS_FILE = Path(__file__).parent.parent / "data" / "noise" / "vectors.json"


def load_vectors() -> list[dict[str, Any]]:
    with VECTORS_FILE.open() as f:
        data = json.load(f)
    vectors: list[dict[str, Any]] = data["vectors"]
    return vectors


def _key(hexkey: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hexkey))


def handshake_pair(vector: dict[str, Any]) -> tuple[HandshakeState, HandshakeState]:
    initiator = HandshakeState(
        initiator=True,
        static=_key(vector["init_static"]),
        remote_static=bytes.fromhex(vector["init_remote_static"]),
        prologue=bytes.fromhex(vector["init_prologue"]),
        ephemeral=_key(vector["init_ephemeral"]),
    )
    responder = HandshakeState(
        initiator=False,
        static=_key(vector["resp_static"]),
        prologue=bytes.fromhex(vector["resp_prologue"]),
        ephemeral=_key(vector["resp_ephemeral"]),
    )
    return initiator, responder


class VectorTests(SynchronousTestCase):
    """Byte-identical handshake and transport messages, and the handshake hash."""

    def test_vectors_file(self) -> None:
        with VECTORS_FILE.open() as f:
            data = json.load(f)
        self.assertTrue(data["source"])
        for source in data["source"]:
            self.assertTrue(source["repo"] and source["path"] and source["license"])
        self.assertEqual(len(data["vectors"]), 2)
        for vector in data["vectors"]:
            self.assertEqual(vector["name"], PROTOCOL_NAME.decode())

    def test_vectors(self) -> None:
        for vector in load_vectors():
            with self.subTest(source=vector["from"]):
                self._check(vector)

    def _check(self, vector: dict[str, Any]) -> None:
        initiator, responder = handshake_pair(vector)
        messages = vector["messages"]
        first, second = messages[0], messages[1]

        message = initiator.write_message(bytes.fromhex(first["payload"]))
        self.assertEqual(message.hex(), first["ciphertext"])
        self.assertEqual(responder.read_message(message).hex(), first["payload"])
        expected_static = _key(vector["init_static"]).public_key().public_bytes_raw()
        self.assertEqual(responder.remote_static, expected_static)

        message = responder.write_message(bytes.fromhex(second["payload"]))
        self.assertEqual(message.hex(), second["ciphertext"])
        self.assertEqual(initiator.read_message(message).hex(), second["payload"])

        self.assertTrue(initiator.complete and responder.complete)
        self.assertEqual(initiator.get_handshake_hash().hex(), vector["handshake_hash"])
        self.assertEqual(responder.get_handshake_hash().hex(), vector["handshake_hash"])

        i_send, i_recv = initiator.cipher_states()
        r_send, r_recv = responder.cipher_states()
        for index, transport in enumerate(messages[2:]):
            sender, receiver = (i_send, r_recv) if index % 2 == 0 else (r_send, i_recv)
            payload = bytes.fromhex(transport["payload"])
            ciphertext = sender.encrypt_with_ad(b"", payload)
            self.assertEqual(ciphertext.hex(), transport["ciphertext"])
            self.assertEqual(receiver.decrypt_with_ad(b"", ciphertext), payload)

    def test_wrong_prologue_fails(self) -> None:
        vector = dict(load_vectors()[0])
        vector["resp_prologue"] = ""
        initiator, responder = handshake_pair(vector)
        self.assertRaises(DecryptError, responder.read_message, initiator.write_message(b""))

    def test_wrong_responder_key_fails_for_initiator(self) -> None:
        """A responder without the pinned key cannot produce a reply the initiator accepts."""
        vector = load_vectors()[0]
        initiator, responder = handshake_pair(vector)
        message1 = initiator.write_message(b"")
        responder.read_message(message1)
        reply = bytearray(responder.write_message(b""))
        reply[-1] ^= 1
        self.assertRaises(DecryptError, initiator.read_message, bytes(reply))


class HandshakeRuleTests(SynchronousTestCase):
    """Turn order, lengths and key requirements."""

    def setUp(self) -> None:
        self.initiator, self.responder = handshake_pair(load_vectors()[0])

    def test_initiator_needs_remote_static(self) -> None:
        self.assertRaises(
            ValueError, HandshakeState, initiator=True, static=X25519PrivateKey.generate()
        )

    def test_turns(self) -> None:
        self.assertRaises(NoiseError, self.responder.write_message, b"")
        self.assertRaises(NoiseError, self.initiator.read_message, bytes(100))
        self.responder.read_message(self.initiator.write_message(b""))
        self.assertRaises(NoiseError, self.initiator.write_message, b"")
        self.initiator.read_message(self.responder.write_message(b""))
        self.assertRaises(NoiseError, self.initiator.write_message, b"")
        self.assertRaises(NoiseError, self.responder.read_message, bytes(100))

    def test_short_message(self) -> None:
        self.assertRaises(NoiseError, self.responder.read_message, bytes(95))

    def test_too_long(self) -> None:
        self.assertRaises(NoiseError, self.initiator.write_message, bytes(65535))
        self.assertRaises(NoiseError, self.responder.read_message, bytes(65536))

    def test_cipher_states_before_completion(self) -> None:
        self.assertRaises(NoiseError, self.initiator.cipher_states)

    def test_random_ephemerals_differ(self) -> None:
        static = X25519PrivateKey.generate()
        peer = X25519PrivateKey.generate().public_key().public_bytes_raw()
        one = HandshakeState(initiator=True, static=static, remote_static=peer)
        two = HandshakeState(initiator=True, static=static, remote_static=peer)
        self.assertNotEqual(one.write_message(b"")[:32], two.write_message(b"")[:32])

    def test_low_order_point_refused(self) -> None:
        message = bytearray(self.initiator.write_message(b""))
        message[:32] = bytes(32)  # the all-zero point gives an all-zero DH result
        self.assertRaises(NoiseError, self.responder.read_message, bytes(message))


class CipherStateTests(SynchronousTestCase):
    """Nonces, exhaustion, failures and rekey, per section 5.1 and 11.3."""

    key = bytes(range(32))

    def test_nonce_format(self) -> None:
        cs = CipherState(self.key)
        cs.set_nonce(0x0102030405060708)
        expected = ChaCha20Poly1305(self.key).encrypt(
            b"\x00" * 4 + bytes([8, 7, 6, 5, 4, 3, 2, 1]), b"hi", b"ad"
        )
        self.assertEqual(cs.encrypt_with_ad(b"ad", b"hi"), expected)
        self.assertEqual(cs.nonce, 0x0102030405060709)

    def test_no_key_passes_through(self) -> None:
        cs = CipherState()
        self.assertFalse(cs.has_key())
        self.assertEqual(cs.encrypt_with_ad(b"", b"clear"), b"clear")
        self.assertEqual(cs.decrypt_with_ad(b"", b"clear"), b"clear")

    def test_failed_decrypt_keeps_nonce(self) -> None:
        sender, receiver = CipherState(self.key), CipherState(self.key)
        good = sender.encrypt_with_ad(b"", b"one")
        bad = bytes([good[0] ^ 1]) + good[1:]
        self.assertRaises(DecryptError, receiver.decrypt_with_ad, b"", bad)
        self.assertEqual(receiver.nonce, 0)
        self.assertEqual(receiver.decrypt_with_ad(b"", good), b"one")

    def test_replay_fails(self) -> None:
        sender, receiver = CipherState(self.key), CipherState(self.key)
        message = sender.encrypt_with_ad(b"", b"once")
        receiver.decrypt_with_ad(b"", message)
        self.assertRaises(DecryptError, receiver.decrypt_with_ad, b"", message)

    def test_exhaustion(self) -> None:
        cs = CipherState(self.key)
        cs.set_nonce(MAX_NONCE - 1)
        cs.encrypt_with_ad(b"", b"last")
        self.assertRaises(NonceExhaustedError, cs.encrypt_with_ad, b"", b"one too many")
        self.assertRaises(NonceExhaustedError, cs.decrypt_with_ad, b"", bytes(16))
        self.assertRaises(ValueError, cs.set_nonce, MAX_NONCE + 1)

    def test_rekey(self) -> None:
        cs = CipherState(self.key)
        cs.set_nonce(5)
        cs.rekey()
        expected_key = ChaCha20Poly1305(self.key).encrypt(
            b"\x00" * 4 + b"\xff" * 8, bytes(32), b""
        )[:32]
        self.assertEqual(cs.nonce, 5)
        fresh = CipherState(expected_key)
        fresh.set_nonce(5)
        self.assertEqual(cs.encrypt_with_ad(b"", b"x"), fresh.encrypt_with_ad(b"", b"x"))

    def test_rekey_without_key(self) -> None:
        self.assertRaises(NoiseError, CipherState().rekey)

    def test_bad_key_length(self) -> None:
        self.assertRaises(ValueError, CipherState, b"short")


class SymmetricStateTests(SynchronousTestCase):
    def test_long_name_is_hashed(self) -> None:
        # Our protocol name is 33 bytes, one more than HASHLEN, so it is hashed.
        self.assertEqual(len(PROTOCOL_NAME), 33)
        self.assertEqual(
            SymmetricState(PROTOCOL_NAME).get_handshake_hash(),
            hashlib.blake2s(PROTOCOL_NAME).digest(),
        )
        short = b"Noise_NN_25519_AESGCM_SHA256"
        self.assertEqual(SymmetricState(short).get_handshake_hash(), short.ljust(32, b"\x00"))

    def test_hkdf_outputs(self) -> None:
        two = hkdf(bytes(32), b"ikm", 2)
        three = hkdf(bytes(32), b"ikm", 3)
        self.assertEqual(three[:2], two)
        self.assertEqual({len(x) for x in three}, {32})
        self.assertRaises(ValueError, hkdf, bytes(32), b"", 4)

    def test_split_gives_distinct_keys(self) -> None:
        first, second = SymmetricState(PROTOCOL_NAME).split()
        self.assertNotEqual(first.encrypt_with_ad(b"", b"x"), second.encrypt_with_ad(b"", b"x"))

    def test_mix_key_and_hash_changes_hash(self) -> None:
        ss = SymmetricState(PROTOCOL_NAME)
        before = ss.get_handshake_hash()
        ss.mix_key_and_hash(b"psk")
        self.assertNotEqual(ss.get_handshake_hash(), before)
        self.assertNotEqual(ss.encrypt_and_hash(b"x"), b"x")
