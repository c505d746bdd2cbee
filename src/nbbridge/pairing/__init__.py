"""nbbridge.pairing: join a laptop to a GPU host by a short code (`nbbridge pair`).

A layer beside `nbbridge.tunnel`: services (the `nbbridge` command) build on it; it builds on
transport, crypto and the contract. See docs/pairing.md.

* `Code`, `new_code`, `parse_code`, `WORDS` — codes like `7-crossover-clockwork`;
* `Exchange` — sans-IO: SPAKE2, key confirmation, sealed offers (`Role`, `PairingFailed`);
* `AgentOffer`, `ClientOffer` — what each side hands the other, checked on arrival;
* `PairingSession`, `run_pairing` — one end over a WebSocket to the relay's rendezvous.
"""

from ._client import OfferHandler, PairingSession, run_pairing
from ._code import WORDS, Code, CodeError, new_code, parse_code
from ._exchange import Exchange, PairingFailed, PeerDone, PeerOffer, Role, Send
from ._offer import AgentOffer, ClientOffer, clean_label

__all__ = [
    "WORDS",
    "AgentOffer",
    "ClientOffer",
    "Code",
    "CodeError",
    "Exchange",
    "OfferHandler",
    "PairingFailed",
    "PairingSession",
    "PeerDone",
    "PeerOffer",
    "Role",
    "Send",
    "clean_label",
    "new_code",
    "parse_code",
    "run_pairing",
]
