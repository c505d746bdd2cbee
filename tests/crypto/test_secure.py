"""The sans-IO secure channel: framing, handshake, refusal, tampering, rekey."""

from __future__ import annotations

import os
import struct

from twisted.trial.unittest import SynchronousTestCase

from nbbridge.crypto import (
    HANDSHAKE,
    MAX_PLAINTEXT,
    MAX_RECORD_LENGTH,
    REFUSAL,
    TRANSPORT,
    AuthorizedKeys,
    CipherState,
    HandshakeComplete,
    HandshakeError,
    Initiator,
    PrivateKey,
    PublicKey,
    Responder,
    SecureChannelError,
)
from nbbridge.crypto._secure import (
    AUTH_FAILED,
    BAD_HANDSHAKE,
    KEY_MISMATCH,
    NOT_AUTHORIZED,
    TRUNCATED,
    Event,
    record,
)

from ._support import split_records


class Pair:
    """An initiator and a responder with fresh keys, handshake done by `connect()`."""

    def __init__(self, rekey_interval: int = 1 << 20, authorized: bool = True) -> None:
        self.client_key = PrivateKey.generate()
        self.agent_key = PrivateKey.generate()
        allowed = [self.client_key.public_key] if authorized else []
        self.initiator = Initiator(
            self.client_key, self.agent_key.public_key, rekey_interval=rekey_interval
        )
        self.responder = Responder(
            self.agent_key, AuthorizedKeys.from_keys(allowed), rekey_interval=rekey_interval
        )

    def connect(self) -> tuple[list[Event], list[Event]]:
        """Message 1, message 2, then the initiator's confirmation record."""
        at_responder = self.responder.receive_data(self.initiator.start())
        at_initiator = self.initiator.receive_data(self.responder.data_to_send())
        at_responder += self.responder.receive_data(self.initiator.data_to_send())
        return at_initiator, at_responder


class HandshakeTests(SynchronousTestCase):
    def test_handshake(self) -> None:
        pair = Pair()
        at_initiator, at_responder = pair.connect()
        self.assertEqual(len(at_initiator), 1)
        self.assertEqual(len(at_responder), 1)
        done_i, done_r = at_initiator[0], at_responder[0]
        assert isinstance(done_i, HandshakeComplete) and isinstance(done_r, HandshakeComplete)
        self.assertEqual(done_i.remote_static, pair.agent_key.public_key)
        self.assertEqual(done_r.remote_static, pair.client_key.public_key)
        self.assertEqual(done_i.handshake_hash, done_r.handshake_hash)
        self.assertTrue(pair.initiator.established and pair.responder.established)
        self.assertEqual(pair.responder.remote_static, pair.client_key.public_key)
        self.assertEqual(pair.initiator.data_to_send(), b"")

    def test_records_on_the_wire(self) -> None:
        pair = Pair()
        first = pair.initiator.start()
        self.assertEqual(struct.unpack(">IB", first[:5]), (len(first) - 4, HANDSHAKE))
        # e (32) + encrypted s (48) + encrypted empty payload (16)
        self.assertEqual(len(first), 5 + 96)
        pair.responder.receive_data(first)
        second = pair.responder.data_to_send()
        self.assertEqual(struct.unpack(">IB", second[:5]), (len(second) - 4, HANDSHAKE))
        self.assertEqual(len(second), 5 + 48)

    def test_byte_at_a_time(self) -> None:
        pair = Pair()
        events: list[Event] = []
        for byte in pair.initiator.start():
            events += pair.responder.receive_data(bytes([byte]))
        self.assertEqual(events, [])
        reply = pair.responder.data_to_send()
        for byte in reply:
            events += pair.initiator.receive_data(bytes([byte]))
        self.assertIsInstance(events[-1], HandshakeComplete)
        records = pair.initiator.encrypt(b"hello") + pair.initiator.encrypt(b" world")
        received = b""
        at_responder: list[Event] = []
        for byte in records:
            at_responder += pair.responder.receive_data(bytes([byte]))
        self.assertIsInstance(at_responder[0], HandshakeComplete)
        for event in at_responder[1:]:
            assert isinstance(event, bytes)
            received += event
        self.assertEqual(received, b"hello world")

    def test_unauthorized(self) -> None:
        pair = Pair(authorized=False)
        at_responder = pair.responder.receive_data(pair.initiator.start())
        error = at_responder[-1]
        self.assertIsInstance(error, HandshakeError)
        assert isinstance(error, HandshakeError)
        # The agent's own log names the key, so its operator knows whom to add.
        self.assertEqual(error.reason, f"client key {pair.client_key.public_key} is not authorized")
        refusal = pair.responder.data_to_send()
        self.assertEqual(refusal, record(REFUSAL, NOT_AUTHORIZED.encode()))
        at_initiator = pair.initiator.receive_data(refusal)
        error = at_initiator[-1]
        assert isinstance(error, HandshakeError)
        self.assertEqual(
            error.reason, f"refused by the agent: {NOT_AUTHORIZED} (unauthenticated message)"
        )
        self.assertFalse(pair.initiator.established)

    def test_refusals_do_not_name_the_client_key(self) -> None:
        """IK hides the initiator's key from onlookers; the cleartext REFUSAL must too."""
        client = PrivateKey.generate()
        agent = PrivateKey.generate()

        def broken(key: PublicKey) -> bool:
            raise RuntimeError(f"lookup of {key} failed")

        for authorizer in [AuthorizedKeys.from_keys([]), broken]:
            with self.subTest(authorizer=authorizer):
                responder = Responder(agent, authorizer)
                events = responder.receive_data(Initiator(client, agent.public_key).start())
                self.assertIsInstance(events[-1], HandshakeError)
                refusal = responder.data_to_send()
                self.assertEqual(refusal[4], REFUSAL)
                for form in (client.public_key.to_text(), client.public_key.raw):
                    text = form if isinstance(form, bytes) else form.encode()
                    self.assertNotIn(text, refusal)
                    self.assertNotIn(text[:12], refusal)

    def test_callable_authorizer(self) -> None:
        seen: list[PublicKey] = []

        def allow(key: PublicKey) -> bool:
            seen.append(key)
            return True

        client, agent = PrivateKey.generate(), PrivateKey.generate()
        initiator = Initiator(client, agent.public_key)
        responder = Responder(agent, allow)
        self.assertEqual(responder.receive_data(initiator.start()), [])
        self.assertEqual(seen, [client.public_key])
        initiator.receive_data(responder.data_to_send())
        events = responder.receive_data(initiator.data_to_send())
        self.assertIsInstance(events[0], HandshakeComplete)

    def test_authorizer_error(self) -> None:
        def broken(key: PublicKey) -> bool:
            raise RuntimeError("database down")

        client, agent = PrivateKey.generate(), PrivateKey.generate()
        responder = Responder(agent, broken)
        events = responder.receive_data(Initiator(client, agent.public_key).start())
        error = events[-1]
        assert isinstance(error, HandshakeError)
        self.assertIn("database down", error.reason)
        self.assertEqual(
            responder.data_to_send(),
            record(REFUSAL, b"agent error while checking the client key"),
        )

    def test_wrong_pinned_key(self) -> None:
        """The responder cannot read message 1 and says so; the initiator reports it."""
        client, agent, other = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
        initiator = Initiator(client, other.public_key)
        responder = Responder(agent, AuthorizedKeys.from_keys([client.public_key]))
        error = responder.receive_data(initiator.start())[-1]
        assert isinstance(error, HandshakeError)
        self.assertIn("the client pinned a different agent key", error.reason)
        at_initiator = initiator.receive_data(responder.data_to_send())
        error = at_initiator[-1]
        assert isinstance(error, HandshakeError)
        self.assertIn(KEY_MISMATCH, error.reason)
        self.assertIn("unauthenticated", error.reason)

    def test_reply_that_does_not_authenticate(self) -> None:
        """A reply not made with the pinned key: the initiator names the key mismatch."""
        pair = Pair()
        pair.responder.receive_data(pair.initiator.start())
        reply = bytearray(pair.responder.data_to_send())
        reply[-1] ^= 0x80
        error = pair.initiator.receive_data(bytes(reply))[-1]
        assert isinstance(error, HandshakeError)
        self.assertTrue(error.reason.startswith(KEY_MISMATCH), error.reason)

    def test_refusal_text_is_sanitized(self) -> None:
        pair = Pair()
        pair.initiator.start()
        evil = "bad\x1b[31m\nnews" + "x" * 2000
        error = pair.initiator.receive_data(record(REFUSAL, evil.encode()))[-1]
        assert isinstance(error, HandshakeError)
        self.assertNotIn("\n", error.reason)
        self.assertNotIn("\x1b", error.reason)
        self.assertLess(len(error.reason), 700)

    def test_data_before_handshake(self) -> None:
        pair = Pair()
        error = pair.responder.receive_data(record(TRANSPORT, bytes(40)))[-1]
        self.assertIsInstance(error, HandshakeError)
        self.assertRaises(RuntimeError, pair.initiator.encrypt, b"too early")

    def test_second_handshake_record(self) -> None:
        pair = Pair()
        first = pair.initiator.start()
        pair.responder.receive_data(first)
        error = pair.responder.receive_data(first)[-1]
        self.assertIsInstance(error, SecureChannelError)
        self.assertIn("second handshake record", str(error))

    def test_start_twice(self) -> None:
        pair = Pair()
        pair.initiator.start()
        self.assertRaises(RuntimeError, pair.initiator.start)

    def test_closed_before_handshake(self) -> None:
        pair = Pair()
        pair.initiator.start()
        error = pair.initiator.connection_lost()
        self.assertIsInstance(error, HandshakeError)
        assert error is not None
        self.assertIn("connection closed before the handshake finished", error.reason)

    def test_bad_parameters(self) -> None:
        key = PrivateKey.generate()
        self.assertRaises(ValueError, Initiator, key, key.public_key, rekey_interval=0)


class ConfirmationTests(SynchronousTestCase):
    """The responder counts a handshake done only after the initiator's first record."""

    def test_responder_waits_for_the_first_record(self) -> None:
        pair = Pair()
        self.assertEqual(pair.responder.receive_data(pair.initiator.start()), [])
        self.assertFalse(pair.responder.established)
        self.assertIsNone(pair.responder.remote_static)
        # Nothing goes to a peer that has not proven its key.
        self.assertRaises(RuntimeError, pair.responder.encrypt, b"welcome")
        pair.initiator.receive_data(pair.responder.data_to_send())
        confirmation = pair.initiator.data_to_send()
        # One empty TRANSPORT record: the 16-byte tag and nothing else.
        self.assertEqual(confirmation[:5], struct.pack(">IB", 1 + 16, TRANSPORT))
        self.assertEqual(len(confirmation), 5 + 16)
        [done] = pair.responder.receive_data(confirmation)
        assert isinstance(done, HandshakeComplete)
        self.assertEqual(done.remote_static, pair.client_key.public_key)
        self.assertTrue(pair.responder.established)

    def test_confirmation_goes_before_data_written_at_once(self) -> None:
        """A user who encrypts before draining data_to_send() still sends records in order."""
        pair = Pair()
        pair.responder.receive_data(pair.initiator.start())
        pair.initiator.receive_data(pair.responder.data_to_send())
        events = pair.responder.receive_data(pair.initiator.encrypt(b"hi"))
        self.assertIsInstance(events[0], HandshakeComplete)
        self.assertEqual(events[1:], [b"hi"])
        self.assertEqual(pair.initiator.data_to_send(), b"")

    def captured(self) -> tuple[Pair, bytes, bytes]:
        """A session as the relay saw it: message 1, then the client's records."""
        pair = Pair()
        first = pair.initiator.start()
        pair.responder.receive_data(first)
        pair.initiator.receive_data(pair.responder.data_to_send())
        later = pair.initiator.data_to_send() + pair.initiator.encrypt(b"open jupyter")
        return pair, first, later

    def test_replayed_first_message_is_never_a_client(self) -> None:
        """The relay replays message 1 to the agent: answered, but never counted as connected."""
        pair, first, _ = self.captured()
        fresh = Responder(pair.agent_key, AuthorizedKeys.from_keys([pair.client_key.public_key]))
        self.assertEqual(fresh.receive_data(first), [])
        self.assertFalse(fresh.established)
        error = fresh.timed_out(5)
        self.assertIsInstance(error, HandshakeError)
        self.assertEqual(
            error.reason,
            f"the first record from the client claiming key {pair.client_key.public_key} "
            "did not come within 5 s of the handshake: its handshake message was replayed, "
            "or it is a broken client",
        )
        self.assertIs(fresh.connection_lost(), error)

    def test_replayed_whole_session_fails_to_authenticate(self) -> None:
        """Replaying every captured record: the fresh keys of the new exchange refuse them."""
        pair, first, later = self.captured()
        fresh = Responder(pair.agent_key, AuthorizedKeys.from_keys([pair.client_key.public_key]))
        events = fresh.receive_data(first + later)
        self.assertEqual(len(events), 1)
        error = events[0]
        assert isinstance(error, HandshakeError)
        self.assertIn("failed to authenticate", error.reason)
        self.assertIn("replayed", error.reason)
        self.assertFalse(fresh.established)

    def test_closed_before_confirmation(self) -> None:
        pair, first, _ = self.captured()
        fresh = Responder(pair.agent_key, AuthorizedKeys.from_keys([pair.client_key.public_key]))
        fresh.receive_data(first)
        error = fresh.connection_lost()
        assert isinstance(error, HandshakeError)
        self.assertIn("never came (connection closed)", error.reason)

    def test_bad_handshake_refusal_is_generic(self) -> None:
        agent = PrivateKey.generate()
        responder = Responder(agent, AuthorizedKeys.from_keys([]))
        error = responder.receive_data(record(HANDSHAKE, bytes(10)))[-1]
        self.assertIsInstance(error, HandshakeError)
        self.assertEqual(responder.data_to_send(), record(REFUSAL, BAD_HANDSHAKE.encode()))

    def test_timeout_before_message_one(self) -> None:
        responder = Responder(PrivateKey.generate(), AuthorizedKeys.from_keys([]))
        self.assertEqual(responder.timed_out(2.5).reason, "handshake timed out after 2.5 s")


class TransportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.connect()
        self.i, self.r = self.pair.initiator, self.pair.responder

    def deliver(self, data: bytes, to: Initiator | Responder | None = None) -> list[Event]:
        return (to or self.r).receive_data(data)

    def test_round_trip_both_ways(self) -> None:
        self.assertEqual(self.deliver(self.i.encrypt(b"ping")), [b"ping"])
        self.assertEqual(self.deliver(self.r.encrypt(b"pong"), to=self.i), [b"pong"])

    def test_large_write_is_split(self) -> None:
        data = os.urandom(3 * MAX_PLAINTEXT + 5)
        records = split_records(self.i.encrypt(data))
        self.assertEqual(len(records), 4)
        self.assertEqual(len(records[0]), 4 + 1 + MAX_PLAINTEXT + 16)
        events = self.deliver(b"".join(records))
        self.assertEqual(b"".join(e for e in events if isinstance(e, bytes)), data)

    def test_empty_write(self) -> None:
        self.assertEqual(self.i.encrypt(b""), b"")
        self.assertEqual(self.i.encrypt_pieces(b""), [])

    def test_pieces(self) -> None:
        """encrypt_pieces() gives header and ciphertext apart, for writeSequence()."""
        pieces = self.i.encrypt_pieces(bytes(MAX_PLAINTEXT + 1))
        self.assertEqual([len(p) for p in pieces], [5, MAX_PLAINTEXT + 16, 5, 1 + 16])
        self.assertEqual(pieces[0], struct.pack(">IB", MAX_PLAINTEXT + 17, TRANSPORT))
        events = self.deliver(b"".join(pieces))
        self.assertEqual(
            b"".join(e for e in events if isinstance(e, bytes)), bytes(MAX_PLAINTEXT + 1)
        )

    def test_many_records_in_one_chunk(self) -> None:
        stream = b"".join(self.i.encrypt(bytes([n]) * n) for n in range(1, 50))
        events = self.deliver(stream)
        self.assertEqual(events, [bytes([n]) * n for n in range(1, 50)])

    def assertFails(self, events: list[Event], reason: str) -> None:
        self.assertTrue(events, "no events")
        error = events[-1]
        self.assertIsInstance(error, SecureChannelError)
        assert isinstance(error, SecureChannelError)
        self.assertEqual(error.reason, reason)
        self.assertFalse(self.r.established)
        # Dead sessions ignore input and refuse to send.
        self.assertEqual(self.r.receive_data(self.i.encrypt(b"more")), [])
        self.assertRaises(SecureChannelError, self.r.encrypt, b"x")

    def test_tampered(self) -> None:
        for position in (4, 5, 10, -1):
            with self.subTest(position=position):
                self.setUp()
                data = bytearray(self.i.encrypt(b"secret data"))
                data[position] ^= 0x01
                events = self.deliver(bytes(data))
                if position == 4:  # the kind byte: no longer a transport record
                    self.assertIsInstance(events[-1], SecureChannelError)
                else:
                    self.assertFails(events, AUTH_FAILED)

    def test_good_records_before_a_bad_one_are_delivered(self) -> None:
        good = self.i.encrypt(b"first")
        bad = bytearray(self.i.encrypt(b"second"))
        bad[-1] ^= 1
        events = self.deliver(good + bytes(bad))
        self.assertEqual(events[0], b"first")
        self.assertEqual(events[1].reason, AUTH_FAILED)  # type: ignore[union-attr]

    def test_replayed(self) -> None:
        data = self.i.encrypt(b"pay 10 EUR")
        self.assertEqual(self.deliver(data), [b"pay 10 EUR"])
        self.assertFails(self.deliver(data), AUTH_FAILED)

    def test_reordered(self) -> None:
        one, two = self.i.encrypt(b"one"), self.i.encrypt(b"two")
        self.assertFails(self.deliver(two + one), AUTH_FAILED)

    def test_dropped(self) -> None:
        self.i.encrypt(b"lost")
        self.assertFails(self.deliver(self.i.encrypt(b"next")), AUTH_FAILED)

    def test_truncated(self) -> None:
        data = self.i.encrypt(b"cut short")
        self.assertEqual(self.deliver(data[:-3]), [])
        self.assertTrue(self.r.has_partial_record())
        error = self.r.connection_lost()
        assert error is not None
        self.assertEqual(error.reason, TRUNCATED)
        self.assertIsNone(self.pair.initiator.connection_lost())

    def test_truncated_header(self) -> None:
        self.deliver(self.i.encrypt(b"x")[:2])
        error = self.r.connection_lost()
        assert error is not None
        self.assertEqual(error.reason, TRUNCATED)

    def test_oversize_record(self) -> None:
        header = struct.pack(">IB", MAX_RECORD_LENGTH + 1, TRANSPORT)
        events = self.deliver(header)  # refused from the header alone
        self.assertFails(
            events,
            f"record of {MAX_RECORD_LENGTH + 1} bytes is larger than "
            f"the {MAX_RECORD_LENGTH}-byte limit",
        )

    def test_transport_record_over_max_plaintext(self) -> None:
        body = bytes(MAX_PLAINTEXT + 17)
        events = self.deliver(record(TRANSPORT, body))
        self.assertFails(events, "protocol error: transport record over 1 MiB")

    def test_empty_record(self) -> None:
        self.assertFails(self.deliver(bytes(4)), "protocol error: empty record")

    def test_unknown_kind(self) -> None:
        self.assertFails(self.deliver(record(9, b"?")), "protocol error: unknown record kind 9")

    def test_refusal_after_handshake(self) -> None:
        events = self.i.receive_data(record(REFUSAL, b"go away"))
        error = events[-1]
        assert isinstance(error, SecureChannelError)
        self.assertIn("unauthenticated", error.reason)
        error = self.r.receive_data(record(REFUSAL, b"go away"))[-1]
        assert isinstance(error, SecureChannelError)
        self.assertIn("unexpected REFUSAL", error.reason)

    def test_abort(self) -> None:
        error = self.r.abort(SecureChannelError("bored"))
        self.assertEqual(error.reason, "bored")
        self.assertIs(self.r.error, error)
        self.assertIs(self.r.connection_lost(), error)


class RekeyTests(SynchronousTestCase):
    def test_rekey_crossing(self) -> None:
        """Both sides rekey after every 3 records per direction and stay in step."""
        pair = Pair(rekey_interval=3)
        pair.connect()
        for n in range(20):
            message = f"record {n}".encode()
            self.assertEqual(
                pair.responder.receive_data(pair.initiator.encrypt(message)), [message]
            )
            self.assertEqual(
                pair.initiator.receive_data(pair.responder.encrypt(message)), [message]
            )

    def test_rekey_matches_noise_rekey(self) -> None:
        """Record 4 (after one rekey) decrypts only with a Noise Rekey()'d key at nonce 3.

        The records are the confirmation (nonce 0), then 3 of data.
        """
        pair = Pair(rekey_interval=3)
        pair.connect()
        send = pair.initiator._send
        assert send is not None
        probe = CipherState()
        probe._aead, probe._k = send._aead, send._k  # same key
        probe.set_nonce(1)  # nonce 0 went to the confirmation record
        records = [pair.initiator.encrypt(b"x") for _ in range(3)]
        for index in range(2):
            self.assertEqual(records[index][5:], probe.encrypt_with_ad(b"", b"x"))
        self.assertNotEqual(records[2][5:], probe.encrypt_with_ad(b"", b"x"))
        probe.set_nonce(3)
        probe.rekey()
        self.assertEqual(records[2][5:], probe.encrypt_with_ad(b"", b"x"))

    def test_mismatched_interval_fails(self) -> None:
        client, agent = PrivateKey.generate(), PrivateKey.generate()
        initiator = Initiator(client, agent.public_key, rekey_interval=2)
        responder = Responder(agent, AuthorizedKeys.from_keys([client.public_key]))
        responder.receive_data(initiator.start())
        initiator.receive_data(responder.data_to_send())
        # The confirmation and one record pass, then the initiator rekeys and the other not.
        stream = b"".join(initiator.encrypt(b"x") for _ in range(3))
        events = responder.receive_data(stream)
        self.assertIsInstance(events[0], HandshakeComplete)
        self.assertEqual(events[1], b"x")
        self.assertEqual(events[2].reason, AUTH_FAILED)  # type: ignore[union-attr]

    def test_record_limit(self) -> None:
        client, agent = PrivateKey.generate(), PrivateKey.generate()
        # The confirmation record counts as one on each side.
        initiator = Initiator(client, agent.public_key, max_records=3)
        responder = Responder(agent, AuthorizedKeys.from_keys([client.public_key]), max_records=2)
        responder.receive_data(initiator.start())
        initiator.receive_data(responder.data_to_send())
        responder.receive_data(initiator.data_to_send())
        stream = initiator.encrypt(b"a") + initiator.encrypt(b"b")
        self.assertRaises(SecureChannelError, initiator.encrypt, b"c")
        events = responder.receive_data(stream)
        self.assertEqual(events[0], b"a")
        self.assertIn("record limit reached", events[1].reason)  # type: ignore[union-attr]
