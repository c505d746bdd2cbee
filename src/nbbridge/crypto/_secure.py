"""The secure channel, sans-IO: Noise IK over a byte stream cut into records.

Record: u32 big-endian length of (kind + body), u8 kind, body.

* HANDSHAKE (1): a Noise handshake message; exactly one each way.
* TRANSPORT (2): one Noise transport message (ciphertext + 16-byte tag).
* REFUSAL (3): UTF-8 reason, in clear, sent by the responder before it closes
  when it rejects the initiator. Nothing authenticates it, so the initiator
  reports it marked as such. It is generic: it never names the initiator's key,
  which IK carries encrypted so that onlookers cannot tell who is calling.

Confirmation: the first handshake message of IK can be replayed (by the relay, or
anyone on the path), and answering it proves nothing about the sender. So the
responder counts the handshake complete only once the initiator's first
TRANSPORT record authenticates, which takes the keys of the fresh exchange; the
initiator sends an empty TRANSPORT record right after the handshake so that this
happens at once, even if it has nothing to say yet. Until then the responder
sends no data, and its user (SecureProtocol) closes the stream after a short
deadline.

Deviation from Noise, on purpose: after the handshake a transport message may
carry up to 1 MiB of plaintext, not 65535 bytes, because per-record overhead
dominates at line rate otherwise. Our length prefix is 32 bits so nothing else
changes. The handshake itself is plain Noise_IK_25519_ChaChaPoly_BLAKE2s with
the prologue b"nbbridge/1".

Both sides rekey (Noise Rekey()) after every `rekey_interval` records in a
direction, and end the session after `max_records`, far below nonce exhaustion.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, TypeAlias

import attrs

from ._errors import HandshakeError, SecureChannelError
from ._keys import AuthorizedKeys, PrivateKey, PublicKey
from ._noise import TAGLEN, CipherState, DecryptError, HandshakeState, NoiseError

HANDSHAKE: Final = 1
TRANSPORT: Final = 2
REFUSAL: Final = 3

PROLOGUE: Final = b"nbbridge/1"
MAX_PLAINTEXT: Final = 1 << 20
MAX_RECORD_BODY: Final = 2 << 20
# The length field counts the kind byte and the body; 2 MiB of body plus the tag at most.
MAX_RECORD_LENGTH: Final = 1 + MAX_RECORD_BODY + TAGLEN
MAX_HANDSHAKE_BODY: Final = 65535
MAX_REFUSAL_TEXT: Final = 512
REKEY_INTERVAL: Final = 1 << 20
MAX_RECORDS: Final = 1 << 48

_HEADER: Final = struct.Struct(">IB")
_LENGTH: Final = struct.Struct(">I")

AUTH_FAILED: Final = "authentication failed (tampered, replayed or reordered record)"
NOT_AUTHORIZED: Final = "this client's key is not authorized by the agent"
BAD_HANDSHAKE: Final = "bad handshake message"
AGENT_ERROR: Final = "agent error while checking the client key"
TRUNCATED: Final = "connection closed in the middle of a record"
KEY_MISMATCH: Final = "agent key does not match the pinned key"


@attrs.frozen
class HandshakeComplete:
    """The handshake finished; the peer proved it holds `remote_static`."""

    remote_static: PublicKey
    handshake_hash: bytes
    #: the payload of the peer's handshake message (feature flags; empty from older peers)
    payload: bytes = b""
    #: a secret only the two parties know, for binding later use to this session
    secret: bytes = b""


#: The label of the secret exported from every handshake (``HandshakeComplete.secret``).
EXPORT_LABEL: Final = b"nbbridge/1 session secret"


Event: TypeAlias = bytes | HandshakeComplete | SecureChannelError
Authorizer: TypeAlias = AuthorizedKeys | Callable[[PublicKey], bool]


def record(kind: int, body: bytes) -> bytes:
    """Frame one record."""
    return _HEADER.pack(len(body) + 1, kind) + body


def _clean_text(text: str) -> str:
    """Make peer-supplied text safe for one log line: no control characters, bounded."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    if len(cleaned) > MAX_REFUSAL_TEXT:
        cleaned = cleaned[:MAX_REFUSAL_TEXT] + "..."
    return cleaned


class _Session:
    """What the initiator and responder share: framing, transport, rekey, failure."""

    def __init__(
        self,
        static: PrivateKey,
        rekey_interval: int = REKEY_INTERVAL,
        max_records: int = MAX_RECORDS,
    ) -> None:
        if rekey_interval < 1 or max_records < 1:
            raise ValueError("rekey_interval and max_records must be positive")
        self._static = static
        self._rekey_interval = rekey_interval
        self._max_records = max_records
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self._sent = 0
        self._received = 0
        self._error: SecureChannelError | None = None
        self.remote_static: PublicKey | None = None
        self.handshake_hash: bytes | None = None
        #: the peer's handshake payload, once complete
        self.peer_payload: bytes = b""
        #: the exported session secret, once complete
        self.session_secret: bytes | None = None
        # A responder's handshake, answered but not yet confirmed by an authenticated record.
        self._unconfirmed: HandshakeComplete | None = None

    @property
    def established(self) -> bool:
        """True once the handshake has completed (and until the session fails).

        For a responder, completed means confirmed by the initiator's first record.
        """
        return self._send is not None and self._error is None and self.remote_static is not None

    @property
    def error(self) -> SecureChannelError | None:
        """Why the session ended, once it has failed."""
        return self._error

    def start(self) -> bytes:
        """Bytes to send as soon as the connection is up (the initiator's first message)."""
        return b""

    def data_to_send(self) -> bytes:
        """Bytes produced while receiving (handshake, confirmation, refusal); empty if none."""
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    def has_partial_record(self) -> bool:
        """True if the stream stopped in the middle of a record."""
        return bool(self._inbuf)

    def connection_lost(self) -> SecureChannelError | None:
        """What to report when the byte stream ends; None for a clean end."""
        if self._error is not None:
            return self._error
        if self._inbuf:
            return self._fail(SecureChannelError(TRUNCATED))
        if not self.established:
            return self._fail(HandshakeError(self._closed_early_reason()))
        return None

    def _closed_early_reason(self) -> str:
        return "connection closed before the handshake finished"

    def abort(self, error: SecureChannelError) -> SecureChannelError:
        """End the session from outside (a timeout, say); returns the error in force."""
        return self._fail(error)

    def timed_out(self, seconds: float) -> SecureChannelError:
        """End the session because the handshake took longer than SECONDS; returns the error."""
        return self._fail(HandshakeError(self._timeout_reason(seconds)))

    def _timeout_reason(self, seconds: float) -> str:
        return f"handshake timed out after {seconds:g} s"

    def _fail(self, error: SecureChannelError) -> SecureChannelError:
        if self._error is None:
            self._error = error
            self._inbuf = bytearray()
            self._send = self._recv = None
            self._unconfirmed = None
        return self._error

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Turn plaintext into TRANSPORT records (1 MiB of plaintext each at most)."""
        return b"".join(self.encrypt_pieces(data))

    def encrypt_pieces(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Like encrypt(), as [header, ciphertext, header, ciphertext...].

        For `transport.writeSequence()`: it saves copying each ciphertext once
        more just to glue a 5-byte header in front of it.
        """
        if self._error is not None:
            raise self._error
        if not self.established:
            raise RuntimeError("cannot send data before the handshake finished")
        size = len(data)
        # Records already sealed (the confirmation) go first: nonces must arrive in order.
        pending = self.data_to_send()
        pieces: list[bytes] = [pending] if pending else []
        if size <= MAX_PLAINTEXT:
            if size:
                self._seal(data, pieces)
            return pieces
        view = memoryview(data)
        for start in range(0, size, MAX_PLAINTEXT):
            self._seal(view[start : start + MAX_PLAINTEXT], pieces)
        return pieces

    def _seal(self, chunk: bytes | bytearray | memoryview, pieces: list[bytes]) -> None:
        send = self._send
        assert send is not None
        if self._sent >= self._max_records:
            raise self._fail(SecureChannelError("record limit reached; the session must reconnect"))
        ciphertext = send.encrypt_with_ad(b"", chunk)
        self._sent += 1
        if self._sent % self._rekey_interval == 0:
            send.rekey()
        pieces.append(_HEADER.pack(len(ciphertext) + 1, TRANSPORT))
        pieces.append(ciphertext)

    def receive_data(self, data: bytes | memoryview) -> list[Event]:
        """Feed received bytes; returns plaintexts and events in order.

        A failure comes as a SecureChannelError, always the last event; the
        session is dead after it and ignores any further input. Check
        data_to_send() afterwards: a responder may have a reply or a refusal.
        """
        if self._error is not None:
            return []
        events: list[Event] = []
        if self._inbuf:
            self._inbuf += data
            consumed = self._process(self._inbuf, events)
            if self._error is None:
                del self._inbuf[:consumed]
        else:
            consumed = self._process(data, events)
            if self._error is None and consumed < len(data):
                self._inbuf = bytearray(data[consumed:])
        return events

    def _process(self, buf: bytes | bytearray | memoryview, events: list[Event]) -> int:
        """Handle every complete record in buf; returns the bytes consumed."""
        view = memoryview(buf)
        size = len(view)
        pos = 0
        while size - pos >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(view, pos)
            if length == 0 or length > MAX_RECORD_LENGTH:
                events.append(self._fail(SecureChannelError(self._bad_length(length))))
                break
            end = pos + _LENGTH.size + length
            if end > size:
                break
            kind = view[pos + _LENGTH.size]
            body = view[pos + _LENGTH.size + 1 : end]
            pos = end
            if kind == TRANSPORT and self._recv is not None:
                result = self._open(body)
                if self._unconfirmed is not None and not isinstance(result, SecureChannelError):
                    events.append(self._confirmed())
            else:
                result = self._handle_other(kind, body)
            if result is None:
                continue
            events.append(result)
            if isinstance(result, SecureChannelError):
                break
        return pos

    @staticmethod
    def _bad_length(length: int) -> str:
        if length == 0:
            return "protocol error: empty record"
        return f"record of {length} bytes is larger than the {MAX_RECORD_LENGTH}-byte limit"

    def _open(self, body: memoryview) -> Event | None:
        recv = self._recv
        assert recv is not None
        if len(body) > MAX_PLAINTEXT + TAGLEN:
            return self._fail(SecureChannelError("protocol error: transport record over 1 MiB"))
        if self._received >= self._max_records:
            return self._fail(
                SecureChannelError("record limit reached; the session must reconnect")
            )
        try:
            plaintext = recv.decrypt_with_ad(b"", body)
        except DecryptError:
            if self._unconfirmed is not None:
                return self._fail(
                    HandshakeError(self._unconfirmed_reason("failed to authenticate"))
                )
            return self._fail(SecureChannelError(AUTH_FAILED))
        self._received += 1
        if self._received % self._rekey_interval == 0:
            recv.rekey()
        return plaintext or None

    def _handle_other(self, kind: int, body: memoryview) -> Event | None:
        if kind == HANDSHAKE:
            if self._send is not None:
                return self._fail(SecureChannelError("protocol error: second handshake record"))
            if len(body) > MAX_HANDSHAKE_BODY:
                return self._fail(HandshakeError("protocol error: handshake record too large"))
            return self._handshake(bytes(body))
        if kind == REFUSAL:
            return self._refusal(bytes(body))
        if kind == TRANSPORT:
            return self._fail(HandshakeError("protocol error: data record before the handshake"))
        return self._fail(SecureChannelError(f"protocol error: unknown record kind {kind}"))

    def _handshake(self, body: bytes) -> Event | None:
        raise NotImplementedError

    def _refusal(self, body: bytes) -> Event:
        return self._fail(SecureChannelError("protocol error: unexpected REFUSAL record"))

    def _complete(
        self, hs: HandshakeState, remote: PublicKey, payload: bytes = b""
    ) -> HandshakeComplete:
        self._send, self._recv = hs.cipher_states()
        self.remote_static = remote
        self.handshake_hash = hs.get_handshake_hash()
        self.peer_payload = payload
        self.session_secret = hs.export_secret(EXPORT_LABEL)
        return HandshakeComplete(remote, self.handshake_hash, payload, self.session_secret)

    def _confirmed(self) -> HandshakeComplete:
        done = self._unconfirmed
        assert done is not None
        self._unconfirmed = None
        self.remote_static = done.remote_static
        self.handshake_hash = done.handshake_hash
        self.peer_payload = done.payload
        self.session_secret = done.secret
        return done

    def _unconfirmed_reason(self, what: str) -> str:
        done = self._unconfirmed
        assert done is not None
        return (
            f"the first record from the client claiming key {done.remote_static} {what}: "
            "its handshake message was replayed, or it is a broken client"
        )


class Initiator(_Session):
    """The side that knows whom it calls (the client): it pins the responder's key."""

    def __init__(
        self,
        static: PrivateKey,
        responder_key: PublicKey,
        *,
        rekey_interval: int = REKEY_INTERVAL,
        max_records: int = MAX_RECORDS,
    ) -> None:
        super().__init__(static, rekey_interval, max_records)
        self.responder_key = responder_key
        self._hs: HandshakeState | None = None

    def start(self) -> bytes:
        """The first handshake record, to send once the byte stream is connected."""
        if self._hs is not None:
            raise RuntimeError("start() was already called")
        self._hs = HandshakeState(
            initiator=True,
            static=self._static.to_x25519(),
            remote_static=self.responder_key.raw,
            prologue=PROLOGUE,
        )
        return record(HANDSHAKE, self._hs.write_message(b""))

    def _handshake(self, body: bytes) -> Event:
        hs = self._hs
        if hs is None:
            return self._fail(HandshakeError("protocol error: handshake reply before start()"))
        try:
            payload = hs.read_message(body)
        except DecryptError:
            return self._fail(
                HandshakeError(f"{KEY_MISMATCH} (the agent's reply did not authenticate)")
            )
        except NoiseError as e:
            return self._fail(HandshakeError(f"bad handshake reply from the agent: {e}"))
        self._hs = None
        done = self._complete(hs, self.responder_key, payload)
        # Confirm at once, even with nothing to say: the responder waits for an authenticated
        # record before it counts us as connected (see "Confirmation" above).
        confirmation: list[bytes] = []
        self._seal(b"", confirmation)
        self._outbuf += b"".join(confirmation)
        return done

    def _refusal(self, body: bytes) -> Event:
        text = _clean_text(body.decode("utf-8", errors="replace"))
        if self._send is None:
            return self._fail(
                HandshakeError(f"refused by the agent: {text} (unauthenticated message)")
            )
        return self._fail(
            SecureChannelError(f"unexpected refusal after the handshake: {text} (unauthenticated)")
        )

    def _closed_early_reason(self) -> str:
        return "connection closed before the handshake finished (agent unreachable or refusing?)"


class Responder(_Session):
    """The side that accepts calls (the agent): it admits only authorized initiators."""

    def __init__(
        self,
        static: PrivateKey,
        authorized: Authorizer,
        *,
        rekey_interval: int = REKEY_INTERVAL,
        max_records: int = MAX_RECORDS,
        payload: bytes = b"",
    ) -> None:
        super().__init__(static, rekey_interval, max_records)
        self._authorized = authorized
        #: sent in our handshake reply, encrypted to the initiator (older initiators ignore it)
        self._payload = payload

    def _is_authorized(self, key: PublicKey) -> bool:
        if isinstance(self._authorized, AuthorizedKeys):
            return key in self._authorized
        return bool(self._authorized(key))

    def _refuse(self, reason: str, told_peer: str) -> SecureChannelError:
        """Fail with REASON (for our log) and tell the peer TOLD_PEER, which names no key."""
        self._outbuf += record(REFUSAL, told_peer.encode("utf-8"))
        return self._fail(HandshakeError(reason))

    def _timeout_reason(self, seconds: float) -> str:
        if self._unconfirmed is None:
            return super()._timeout_reason(seconds)
        return self._unconfirmed_reason(f"did not come within {seconds:g} s of the handshake")

    def _closed_early_reason(self) -> str:
        if self._unconfirmed is None:
            return super()._closed_early_reason()
        return self._unconfirmed_reason("never came (connection closed)")

    def _handshake(self, body: bytes) -> Event | None:
        # A second HANDSHAKE record never gets here: the first one either was answered
        # (and _handle_other refuses another) or failed the session.
        hs = HandshakeState(initiator=False, static=self._static.to_x25519(), prologue=PROLOGUE)
        try:
            hs.read_message(body)
        except DecryptError:
            return self._refuse(
                "client handshake did not authenticate: the client pinned a different agent key"
                " (or speaks another protocol version)",
                told_peer=KEY_MISMATCH,
            )
        except NoiseError as e:
            return self._refuse(f"bad handshake from the client: {e}", told_peer=BAD_HANDSHAKE)
        assert hs.remote_static is not None
        client = PublicKey(hs.remote_static)
        try:
            allowed = self._is_authorized(client)
        except Exception as e:
            return self._refuse(
                f"checking client key {client} failed: {e!r}",
                told_peer=AGENT_ERROR,
            )
        if not allowed:
            return self._refuse(f"client key {client} is not authorized", told_peer=NOT_AUTHORIZED)
        try:
            reply = hs.write_message(self._payload)
        except NoiseError as e:
            return self._refuse(f"handshake failed: {e}", told_peer=BAD_HANDSHAKE)
        self._outbuf += record(HANDSHAKE, reply)
        # Not complete yet: this message may be a replay. Wait for the confirmation.
        self._send, self._recv = hs.cipher_states()
        self._unconfirmed = HandshakeComplete(
            client, hs.get_handshake_hash(), b"", hs.export_secret(EXPORT_LABEL)
        )
        return None
