"""Pieces of the small live pages nbbridge serves: the relay hub's /stats and the client's
status page. Both are one HTML file, a script and a style sheet from package data, with a
strict content security policy, drawing a live chart with ``static/chart.js``.

It sits with the WebSocket and transport layers (it needs only twisted.web), so both services
use it without importing each other.
"""

from ._static import PAGE_CSP, StaticFile, shared_file

__all__ = ["PAGE_CSP", "StaticFile", "shared_file"]
