"""The mux frames as frozen records: what a session says to its peer, and nothing about bytes."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

#: Largest channel id (ids are u32; 0 is reserved for the session itself).
MAX_CHANNEL_ID = 0xFFFFFFFF
#: Largest payload of one frame. Data is split into frames no bigger than this.
MAX_PAYLOAD = 256 * 1024
#: Service names are short identifiers, not free text.
MAX_SERVICE_NAME = 255
#: Metadata is a handful of small strings (a client label, a requested path...).
MAX_METADATA_ITEMS = 32
MAX_METADATA_BYTES = 4096
#: Reason texts are for humans and logs; longer ones are cut when encoded.
MAX_REASON = 1024


class FrameType(enum.IntEnum):
    """The u8 type of a frame."""

    OPEN = 1
    OPEN_OK = 2
    OPEN_FAIL = 3
    DATA = 4
    WINDOW = 5
    CLOSE = 6
    RESET = 7
    GOAWAY = 8
    #: resumption (docs/resume.md): sent only to a peer that said it understands them
    HELLO = 9
    RESUME = 10
    RESUMED = 11
    ACK = 12


class Reason(enum.IntEnum):
    """u16 reason codes carried by OPEN_FAIL, RESET and GOAWAY."""

    NORMAL = 0
    UNKNOWN_SERVICE = 1
    CONNECT_FAILED = 2
    REFUSED = 3
    TOO_MANY_CHANNELS = 4
    WINDOW_EXCEEDED = 5
    PROTOCOL_ERROR = 6
    ABORTED = 7
    SESSION_CLOSED = 8
    INTERNAL_ERROR = 9
    #: a RESUME refused: unknown session, another client's, or a bad proof
    RESUME_REFUSED = 10


def _metadata_pairs(
    value: Mapping[str, str] | tuple[tuple[str, str], ...],
) -> tuple[tuple[str, str], ...]:
    """Metadata is kept as sorted pairs so frames stay hashable and compare by value."""
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), str(v)) for k, v in items))


@attrs.frozen
class Open:
    """Ask the peer to open channel ``channel`` to ``service``; ``window`` is our receive credit."""

    channel: int
    service: str
    window: int
    metadata: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_metadata_pairs)


@attrs.frozen
class OpenOk:
    """The channel is open; ``window`` is the acceptor's receive credit."""

    channel: int
    window: int


@attrs.frozen
class OpenFail:
    """The channel could not be opened, and why."""

    channel: int
    code: int
    text: str


@attrs.frozen
class Data:
    """Bytes for the channel's consumer; they use up the sender's credit."""

    channel: int
    payload: bytes


@attrs.frozen
class Window:
    """The receiver consumed ``increment`` more bytes: the sender may send that many more."""

    channel: int
    increment: int


@attrs.frozen
class Close:
    """The sender will send no more data on this channel (a half-close)."""

    channel: int


@attrs.frozen
class Reset:
    """The channel is aborted in both directions, with a reason."""

    channel: int
    code: int
    text: str


@attrs.frozen
class GoAway:
    """The whole session ends, with a reason (channel id is always 0)."""

    code: int
    text: str

    channel: int = 0


#: Length of a session id and of a resume proof.
SESSION_ID_SIZE = 16
PROOF_SIZE = 32
#: Flags of a ResumeEntry.
ENTRY_FIN = 0x01  #: the sender of the entry has received the channel's CLOSE
ENTRY_DISCARD = 0x02  #: the sender closed the channel and drops what still comes for it
#: Largest u64 (byte offsets in resumption are u64).
MAX_OFFSET = 0xFFFFFFFFFFFFFFFF


@attrs.frozen
class Hello:
    """First frame of a resumable session, both ways: version and grace period (seconds)."""

    version: int
    grace: int

    channel: int = 0


@attrs.frozen
class ResumeEntry:
    """Where one channel stands, for resumption: bytes received, and up to where the
    sender may send (``limit``, an absolute offset: lost WINDOW frames do not matter)."""

    channel: int
    flags: int
    received: int
    limit: int


@attrs.frozen
class Resume:
    """The client asks, on a fresh link, to go on with session ``session_id``."""

    session_id: bytes
    proof: bytes
    entries: tuple[ResumeEntry, ...]

    channel: int = 0


@attrs.frozen
class Resumed:
    """The agent's answer to RESUME: code 0 and its own entries, or a refusal and why."""

    code: int
    proof: bytes
    entries: tuple[ResumeEntry, ...]
    text: str = ""

    channel: int = 0


@attrs.frozen
class Ack:
    """The receiver holds ``received`` bytes of the channel (and its CLOSE, if ``fin``):
    the sender may forget them."""

    channel: int
    received: int
    fin: bool = False


Frame = (
    Open
    | OpenOk
    | OpenFail
    | Data
    | Window
    | Close
    | Reset
    | GoAway
    | Hello
    | Resume
    | Resumed
    | Ack
)
