"""nbbridge.datalab: signed uploads start a Jupyter per file; a nonce becomes a cookie.

The API (issue 10, the original datalab proxy's contract, unchanged)::

    POST /datalab/start?ts=TS&filename=NAME   X-SIGN: hex sha256(sign_key + TS + NAME)
    POST /datalab/stop?ts=TS&nonce=NONCE      X-SIGN: hex sha256(sign_key + TS + NONCE)
    GET  /datalab/view/NONCE/DEST             302 to /DEST + the session cookie
    GET  /datalab/static/NONCE/DEST           the file DEST of that instance
    ANY  /*                                   proxied to the instance the cookie names

`DatalabService` assembles it over a `Store` (nonces, sessions, instances, replay memory)
and a `Launcher` (``subprocess``: Jupyter servers on this machine; ``agent``: on an agent
reached through the tunnel). See docs/datalab.md.
"""

from ._api import ApiError
from ._core import Datalab, DatalabConfig
from ._instances import Instances
from ._launcher import Launcher, SubprocessLauncher
from ._records import DatalabState, InstanceRecord
from ._routing import SESSION_COOKIE
from ._service import DatalabService

__all__ = [
    "SESSION_COOKIE",
    "ApiError",
    "Datalab",
    "DatalabConfig",
    "DatalabService",
    "DatalabState",
    "InstanceRecord",
    "Instances",
    "Launcher",
    "SubprocessLauncher",
]
