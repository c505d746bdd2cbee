"""The small HTML pages the proxy answers with itself (refusals, 502, 500)."""

from __future__ import annotations

from html import escape
from http import HTTPStatus


def phrase(code: int) -> str:
    """The standard reason phrase of CODE ("Bad Gateway"), or "Error"."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def error_page(code: int, message: str) -> bytes:
    """A minimal page: the status as title, MESSAGE (escaped) as the text."""
    title = escape(f"{code} {phrase(code)}")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body><h1>{title}</h1>\n<p>{escape(message)}</p>"
        "</body></html>\n"
    ).encode()
