"""Request bodies written to disk as they arrive, with a size limit enforced on the way.

Twisted's own `Request` keeps a body under 100 kB in memory and a larger one in an anonymous
temporary file. An upload must end up as a file in the instance's directory, so here a body
is written to a named file in the launcher's spool directory (on the same file system, so
taking it over is a hard link, not a copy). A body over the limit, declared or counted, is
answered with 413 TOO_LARGE at once and the connection is closed: nothing more of it is
read or stored.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from io import BytesIO
from typing import IO, Any

from twisted.logger import Logger
from twisted.web.server import Request

from nbbridge._internals import request_target

from ._api import ApiError

START_PATH = b"/datalab/start"
_PHRASES = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    413: b"Payload Too Large",
}


def _text(values: Sequence[bytes] | None) -> str | None:
    return values[0].decode("latin-1") if values else None


#: The default largest request body (an upload), in bytes.
DEFAULT_MAX_UPLOAD = 1024**3
#: Bodies of a declared length below this stay in memory, as with Twisted's own Request.
_IN_MEMORY = 100_000


class _Discard:
    """A body sink for a refused request."""

    name = None

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> None:
        pass

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


class SpooledRequest(Request):
    """A request whose body goes to a named file in the site's spool directory.

    The site (`DatalabSite`) gives ``spool_dir`` and ``max_body``.
    """

    _log_upload = Logger()

    def gotLength(self, length: int | None) -> None:
        site: Any = self.channel.site  # type: ignore[attr-defined]  # set by Site.buildProtocol
        self._max_body: int = site.max_body
        self._received = 0
        self._refused = False
        if length is not None and length > self._max_body:
            self.content = _Discard()  # type: ignore[assignment]
            self._refuse_too_large()
            return
        refusal = self._precheck(site)
        if refusal is not None:
            self.content = _Discard()  # type: ignore[assignment]
            self._refuse(refusal)
            return
        if length is not None and length < _IN_MEMORY:
            self.content = BytesIO()  # type: ignore[assignment]
            return
        self.content = tempfile.NamedTemporaryFile(  # type: ignore[assignment]  # noqa: SIM115
            dir=site.spool_dir, prefix="upload-"
        )  # closed by Request._cleanup, or connectionLost

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._max_body:
            self._refuse_too_large()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        content: IO[bytes] | None = getattr(self, "content", None)
        super().connectionLost(reason)
        if content is not None:
            content.close()

    def _precheck(self, site: Any) -> ApiError | None:
        """A start whose signature or timestamp is wrong, refused from its headers alone."""
        precheck = getattr(site, "precheck_start", None)
        target = request_target(self.channel)
        if precheck is None or target is None:
            return None
        path, _, query = target.partition(b"?")
        if path != START_PATH:
            return None
        try:
            precheck(
                query.decode("latin-1"),
                _text(self.requestHeaders.getRawHeaders(b"X-SIGN")),
                _text(self.requestHeaders.getRawHeaders(b"X-SIGN-ALG")),
            )
        except ApiError as e:
            return e
        return None

    def _refuse_too_large(self) -> None:
        self._log_upload.info("refused a request body over {limit} bytes", limit=self._max_body)
        self._refuse(
            ApiError(
                413, "TOO_LARGE", f"the request body is over the limit of {self._max_body} bytes"
            )
        )

    def _refuse(self, error: ApiError) -> None:
        """Answer ERROR before the body is read, and close: the rest of it is never taken."""
        self._refused = True
        content: Any = self.content
        if not isinstance(content, _Discard):
            content.close()
            self.content = _Discard()  # type: ignore[assignment]
        if error.status != 413:
            self._log_upload.info(
                "refused an upload before its body: {code} ({message})",
                code=error.code,
                message=error.message,
            )
        body = error.body()
        transport: Any = self.channel.transport
        transport.write(
            b"HTTP/1.1 %d %s\r\n"
            % (error.status, _PHRASES.get(error.status, b"Refused"))
            + b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body
        )
        transport.loseConnection()


def take_body(request: Request, spool_dir: str) -> str:
    """The path of a new file in SPOOL_DIR holding REQUEST's body (a hard link, not a copy)."""
    target = os.path.join(spool_dir, "in-" + os.urandom(12).hex())
    content: Any = request.content
    name = getattr(content, "name", None)
    if isinstance(name, str) and os.path.dirname(name) == spool_dir:
        content.flush()
        os.link(name, target)
    else:
        # A body that arrived by another way (tests, a request factory of a proxy layer).
        content.seek(0)
        with open(target, "wb") as out:
            while chunk := content.read(1 << 16):
                out.write(chunk)
    return target
