"""The handshake's payload (the agent's feature flags) and the secret it exports for resumption."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nbbridge.crypto import AuthorizedKeys, HandshakeComplete, Initiator, PrivateKey, Responder


def _handshake(payload: bytes) -> tuple[Initiator, Responder]:
    client, agent = PrivateKey.generate(), PrivateKey.generate()
    initiator = Initiator(client, agent.public_key)
    responder = Responder(agent, AuthorizedKeys.from_keys([client.public_key]), payload=payload)
    responder.receive_data(initiator.start())
    initiator.receive_data(responder.data_to_send())
    responder.receive_data(initiator.data_to_send())
    return initiator, responder


class ExportTests(SynchronousTestCase):
    def test_payload_reaches_the_initiator(self) -> None:
        initiator, responder = _handshake(b"resume/1")
        self.assertEqual(initiator.peer_payload, b"resume/1")
        self.assertEqual(responder.peer_payload, b"")

    def test_no_payload_from_an_older_agent(self) -> None:
        initiator, _ = _handshake(b"")
        self.assertEqual(initiator.peer_payload, b"")

    def test_both_ends_export_the_same_secret(self) -> None:
        initiator, responder = _handshake(b"")
        self.assertIsNotNone(initiator.session_secret)
        self.assertEqual(initiator.session_secret, responder.session_secret)
        self.assertEqual(len(initiator.session_secret or b""), 32)

    def test_secret_is_fresh_and_not_the_handshake_hash(self) -> None:
        a, _ = _handshake(b"")
        b, _ = _handshake(b"")
        self.assertNotEqual(a.session_secret, b.session_secret)
        self.assertNotEqual(a.session_secret, a.handshake_hash)

    def test_handshake_complete_carries_them(self) -> None:
        client, agent = PrivateKey.generate(), PrivateKey.generate()
        initiator = Initiator(client, agent.public_key)
        responder = Responder(agent, AuthorizedKeys.from_keys([client.public_key]), payload=b"x")
        responder.receive_data(initiator.start())
        [done] = initiator.receive_data(responder.data_to_send())
        assert isinstance(done, HandshakeComplete)
        self.assertEqual(done.payload, b"x")
        self.assertEqual(done.secret, initiator.session_secret)
