"""The channel dispatcher: many flow-controlled channels over one byte stream."""

from ._acceptor import Acceptor, OpenRequest, ServiceMap
from ._channel import Channel, ChannelAddress
from ._endpoint import ChannelEndpoint, SessionSource
from ._errors import (
    ChannelOpenFailed,
    ChannelReset,
    ServiceUnavailable,
    SessionClosed,
    TooManyChannels,
    UnknownService,
)
from ._forwarding import ForwardCounters, ForwardingFactory, SpliceFactory, TcpSide
from ._pacing import DEFAULT_CONNECTS_IN_FLIGHT, LOOPBACK_RETRIES, PacedEndpoint
from ._resumable import LinkEnd
from ._resume import (
    DEFAULT_GRACE,
    RESUME_FEATURE,
    ResumeSecrets,
    SessionRegistry,
    features_payload,
    peer_features,
)
from ._session import (
    DEFAULT_CHANNEL_LIMITS,
    DEFAULT_MAX_WINDOW,
    DEFAULT_WINDOW,
    ChannelLimits,
    MuxSession,
)

__all__ = [
    "DEFAULT_CHANNEL_LIMITS",
    "DEFAULT_CONNECTS_IN_FLIGHT",
    "DEFAULT_GRACE",
    "DEFAULT_MAX_WINDOW",
    "DEFAULT_WINDOW",
    "LOOPBACK_RETRIES",
    "RESUME_FEATURE",
    "Acceptor",
    "Channel",
    "ChannelAddress",
    "ChannelEndpoint",
    "ChannelLimits",
    "ChannelOpenFailed",
    "ChannelReset",
    "ForwardCounters",
    "ForwardingFactory",
    "LinkEnd",
    "MuxSession",
    "OpenRequest",
    "PacedEndpoint",
    "ResumeSecrets",
    "ServiceMap",
    "ServiceUnavailable",
    "SessionClosed",
    "SessionRegistry",
    "SessionSource",
    "SpliceFactory",
    "TcpSide",
    "TooManyChannels",
    "UnknownService",
    "features_payload",
    "peer_features",
]
