# twisted.web's resource API is untyped.
# mypy: disable-error-code="no-untyped-call"
"""A file of a page, served from memory with the headers every nbbridge page sends."""

from __future__ import annotations

from importlib import resources

from twisted.web.resource import Resource
from twisted.web.server import Request

#: A page's security policy: only its own scripts, styles and connections.
PAGE_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def shared_file(name: str) -> bytes:
    """A file both pages use (``chart.js``), from this package's data."""
    return resources.files("nbbridge.webpage").joinpath("static", name).read_bytes()


class StaticFile(Resource):
    """One file of a page, read from package data once."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self._body = body
        self._type = content_type

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self._type)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", PAGE_CSP)
        return self._body
