"""HTTP/1.1 message heads, sans-IO: the upgrade request we write, the answer we read.

Only the WebSocket path needs these: twisted.web's client (`Agent`) cannot hand over its
connection after a 101, so the upgrade is written and its answer parsed here, and after a 101
the connection is the WebSocket's. A refused upgrade's body is read by `BodyReader` (length,
chunked or until close), bounded: it is an error page.
"""

from __future__ import annotations

import attrs
from twisted.web.http_headers import Headers

#: The largest response head accepted from an upstream.
MAX_HEAD = 64 * 1024


class BadHead(Exception):
    """The upstream's answer is not HTTP/1.x, or too large."""


def encode_request(method: bytes, target: bytes, headers: Headers) -> bytes:
    """The request line and header block of an HTTP/1.1 request."""
    lines = [b"%s %s HTTP/1.1" % (method, target)]
    for name, values in headers.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def encode_response_head(code: int, phrase: bytes, headers: Headers) -> bytes:
    """The status line and header block of an HTTP/1.1 response."""
    lines = [b"HTTP/1.1 %d %s" % (code, phrase)]
    for name, values in headers.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    return b"\r\n".join(lines) + b"\r\n\r\n"


@attrs.frozen
class ResponseHead:
    """A parsed status line and headers."""

    code: int
    phrase: bytes
    headers: Headers


class HeadReader:
    """Collects bytes until a response head is complete.

    `feed` returns None until the blank line arrives, then ``(head, leftover)`` where
    LEFTOVER is what came after the head (WebSocket frames, or the start of a body). Raises
    `BadHead`. Interim 1xx answers other than 101 (a stray ``100 Continue``) are skipped.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[ResponseHead, bytes] | None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    raise BadHead(f"response head longer than {MAX_HEAD} bytes")
                return None
            head = _parse(self._buffer[:end])
            self._buffer = self._buffer[end + 4 :]
            if 100 <= head.code < 200 and head.code != 101:
                continue
            leftover, self._buffer = self._buffer, b""
            return head, leftover


def _parse(block: bytes) -> ResponseHead:
    lines = block.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise BadHead(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    code = int(parts[1])
    if not 100 <= code <= 599:
        raise BadHead(f"status {code} out of range")
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise BadHead(f"bad header line: {line[:80]!r}")
        headers.addRawHeader(name, value.strip())
    return ResponseHead(code, parts[2] if len(parts) > 2 else b"", headers)


class BodyReader:
    """The body of a (refused-upgrade) response, bounded to LIMIT bytes.

    `feed` takes raw bytes and returns True once the body is complete; `body` is what was
    read (at most LIMIT bytes; more is dropped and `truncated` set). A body delimited by the
    connection's end completes in `close`.
    """

    def __init__(self, headers: Headers, *, limit: int = 64 * 1024, no_body: bool = False):
        self._limit = limit
        self.body = b""
        self.truncated = False
        self._chunked = (
            b"chunked" in b",".join(headers.getRawHeaders(b"transfer-encoding", [])).lower()
        )
        length = headers.getRawHeaders(b"content-length")
        self._remaining: int | None
        if no_body:
            self._remaining = 0
        elif self._chunked:
            self._remaining = None
        elif length:
            try:
                self._remaining = int(length[0])
            except ValueError:
                raise BadHead(f"bad Content-Length: {length[0][:40]!r}") from None
        else:
            self._remaining = None  # until the connection closes
        self._buffer = b""
        self._chunk_left = 0
        self._done = self._remaining == 0

    @property
    def done(self) -> bool:
        return self._done

    def _keep(self, data: bytes) -> None:
        room = self._limit - len(self.body)
        if len(data) > room:
            self.truncated = True
        self.body += data[: max(room, 0)]

    def feed(self, data: bytes) -> bool:
        if self._done:
            return True
        if self._chunked:
            return self._feed_chunked(data)
        if self._remaining is None:
            self._keep(data)
            return False
        data = data[: self._remaining]
        self._remaining -= len(data)
        self._keep(data)
        self._done = self._remaining == 0
        return self._done

    def _feed_chunked(self, data: bytes) -> bool:
        self._buffer += data
        while not self._done:
            if self._chunk_left:
                piece = self._buffer[: self._chunk_left]
                self._buffer = self._buffer[len(piece) :]
                self._chunk_left -= len(piece)
                self._keep(piece)
                if self._chunk_left:
                    return False
                continue
            if self._buffer.startswith(b"\r\n"):
                self._buffer = self._buffer[2:]
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > 1024:
                    raise BadHead("bad chunk size line")
                return False
            size_text = self._buffer[:end].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadHead(f"bad chunk size: {size_text[:20]!r}") from None
            self._buffer = self._buffer[end + 2 :]
            if size == 0:
                self._done = True  # trailers, if any, are ignored
            self._chunk_left = size
        return True

    def close(self) -> bool:
        """The connection ended: whether that completed the body (a close-delimited one)."""
        if not self._done and self._remaining is None and not self._chunked:
            self._done = True
        return self._done
