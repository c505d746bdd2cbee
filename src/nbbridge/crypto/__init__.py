"""nbbridge.crypto: static keys and the end-to-end Noise IK channel.

* Keys: PrivateKey / PublicKey, their text and file forms, authorized keys.
* Noise: CipherState, SymmetricState, HandshakeState (IK, 25519, ChaChaPoly, BLAKE2s).
* Channel: the sans-IO Initiator / Responder and SecureProtocol, their Twisted wrapper.
"""

from ._errors import HandshakeError, KeyFileError, KeyFormatError, SecureChannelError
from ._keys import (
    PRIVATE_KEY_HEADER,
    PUBLIC_KEY_PREFIX,
    AuthorizedKeys,
    PrivateKey,
    PublicKey,
    load_authorized_keys,
    load_private_key,
    parse_authorized_keys,
    parse_private_key_text,
    parse_public_key,
    private_key_text,
    write_private_key,
)
from ._noise import (
    PROTOCOL_NAME,
    CipherState,
    DecryptError,
    HandshakeState,
    NoiseError,
    NonceExhaustedError,
    SymmetricState,
)
from ._protocol import RESPONDER_HANDSHAKE_TIMEOUT, SecureProtocol
from ._secure import (
    HANDSHAKE,
    MAX_PLAINTEXT,
    MAX_RECORD_LENGTH,
    PROLOGUE,
    REFUSAL,
    REKEY_INTERVAL,
    TRANSPORT,
    Authorizer,
    Event,
    HandshakeComplete,
    Initiator,
    Responder,
)

__all__ = [
    "HANDSHAKE",
    "MAX_PLAINTEXT",
    "MAX_RECORD_LENGTH",
    "PRIVATE_KEY_HEADER",
    "PROLOGUE",
    "PROTOCOL_NAME",
    "PUBLIC_KEY_PREFIX",
    "REFUSAL",
    "REKEY_INTERVAL",
    "RESPONDER_HANDSHAKE_TIMEOUT",
    "TRANSPORT",
    "AuthorizedKeys",
    "Authorizer",
    "CipherState",
    "DecryptError",
    "Event",
    "HandshakeComplete",
    "HandshakeError",
    "HandshakeState",
    "Initiator",
    "KeyFileError",
    "KeyFormatError",
    "NoiseError",
    "NonceExhaustedError",
    "PrivateKey",
    "PublicKey",
    "Responder",
    "SecureChannelError",
    "SecureProtocol",
    "SymmetricState",
    "load_authorized_keys",
    "load_private_key",
    "parse_authorized_keys",
    "parse_private_key_text",
    "parse_public_key",
    "private_key_text",
    "write_private_key",
]
