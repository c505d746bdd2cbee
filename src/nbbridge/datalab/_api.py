"""The datalab API's rules, without I/O: refusals, signatures, timestamps, names, paths.

Everything a request is checked against lives here as pure functions over str/bytes, so each
rule is tested alone and the web resources only turn requests into calls and answers into
responses. The contract (issue 10, the original datalab proxy's API) is exact:

* ``X-SIGN`` is the lowercase hex SHA-256 of ``sign_key + TS + NAME`` (UTF-8), or, with
  ``X-SIGN-ALG: hmac-sha256``, the hex HMAC-SHA256 of ``TS + NAME`` under the sign key;
  either is compared in constant time;
* TS is unix seconds, or milliseconds when above 10^11; it must lie within a freshness window;
* a file name keeps no directory part, no ``..``, no leading dot, no control character.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import unicodedata
from urllib.parse import quote, unquote

import attrs

#: A timestamp above this is read as milliseconds (10^11 s is the year 5138).
MILLISECONDS_ABOVE = 10**11
#: The default freshness window, seconds either side of now.
DEFAULT_FRESHNESS = 300.0
#: The longest file name kept (bytes of UTF-8), as most file systems allow.
MAX_NAME_BYTES = 255


@attrs.frozen
class ApiError(Exception):
    """A refusal: the JSON body ``{"code": CODE, "message": MESSAGE}`` with HTTP STATUS."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> bytes:
        return json.dumps({"code": self.code, "message": self.message}).encode()


def ok_body(result: dict[str, object]) -> bytes:
    """The JSON body of a successful API call."""
    return json.dumps({"code": "OK", "result": result}).encode()


def bad_signature(why: str) -> ApiError:
    return ApiError(401, "BAD_SIGNATURE", why)


def parse_timestamp(text: str | None) -> float:
    """TS as unix seconds (a value above 10^11 is milliseconds); STALE-free parse errors are 400."""
    if text is None or not text.strip():
        raise ApiError(400, "BAD_REQUEST", "the query parameter ts is required")
    try:
        value = float(text.strip())
    except ValueError:
        raise ApiError(400, "BAD_REQUEST", "ts must be a number of unix seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, "BAD_REQUEST", "ts must be a number of unix seconds")
    return value / 1000.0 if value > MILLISECONDS_ABOVE else value


def check_fresh(ts: float, now: float, window: float) -> None:
    """STALE unless TS lies within WINDOW seconds of NOW (either side: clocks differ)."""
    if abs(now - ts) > window:
        raise ApiError(
            403, "STALE", f"the timestamp is {now - ts:+.0f} s from now; at most ±{window:g} s"
        )


def expected_signature(key: bytes, ts: str, name: str, algorithm: str | None) -> str:
    """The hex signature of (TS, NAME) under KEY, by ALGORITHM (None: the seed's sha256)."""
    message = (ts + name).encode("utf-8")
    if algorithm is None or algorithm.strip().lower() in ("", "sha256"):
        return hashlib.sha256(key + message).hexdigest()
    if algorithm.strip().lower() == "hmac-sha256":
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    raise bad_signature(f"unknown X-SIGN-ALG {algorithm.strip()[:40]!r}: use hmac-sha256")


def check_signature(
    key: bytes, ts: str, name: str, given: str | None, algorithm: str | None = None
) -> None:
    """BAD_SIGNATURE unless GIVEN is the signature of (TS, NAME); constant-time comparison."""
    if not given:
        raise bad_signature("the X-SIGN header is missing")
    want = expected_signature(key, ts, name, algorithm)
    # Hex is case-insensitive on the wire; the seed sends lowercase.
    if not hmac.compare_digest(want.encode(), given.strip().lower().encode("ascii", "replace")):
        raise bad_signature("X-SIGN does not match the request")


def replay_key(ts: str, name: str, signature: str) -> str:
    """What identifies one signed request exactly (remembered for the freshness window)."""
    return hashlib.sha256(f"{ts}\0{name}\0{signature.strip().lower()}".encode()).hexdigest()


def sanitize_filename(name: str | None) -> str:
    """NAME as a plain file name inside the instance's directory, or BAD_FILENAME.

    A directory part is refused rather than stripped: a front-end that sends one has a bug
    that a silent rename would hide.
    """
    if name is None or not name:
        raise ApiError(400, "BAD_FILENAME", "the query parameter filename is required")
    name = unicodedata.normalize("NFC", name)
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise ApiError(400, "BAD_FILENAME", "the file name holds a control character")
    if "/" in name or "\\" in name:
        raise ApiError(400, "BAD_FILENAME", "the file name must not have a directory part")
    if name in (".", "..") or ".." in name:
        raise ApiError(400, "BAD_FILENAME", "the file name must not contain '..'")
    if name.startswith("."):
        raise ApiError(400, "BAD_FILENAME", "hidden files (a leading '.') are refused")
    if name != name.strip():
        raise ApiError(400, "BAD_FILENAME", "the file name must not start or end with a space")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ApiError(400, "BAD_FILENAME", f"the file name is over {MAX_NAME_BYTES} bytes")
    return name


#: Characters left as they are in a redirect path: RFC 3986 pchar and '/', nothing else.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def redirect_target(raw_dest: str, query: str, prefix: str = "") -> str:
    """The same-site path ``PREFIX/DEST[?QUERY]`` for ``view``; it never leaves the site.

    RAW_DEST is the percent-encoded rest of the request path. It is decoded once and encoded
    again with only path characters left bare, so a backslash, a control character or an
    encoded slash cannot turn it into a scheme-relative (``//host``) or absolute URL, and
    leading slashes are collapsed for the same reason.
    """
    dest = quote(unquote(raw_dest), safe=_PATH_SAFE)
    dest = dest.lstrip("/")
    location = _clean_prefix(prefix) + "/" + dest
    if query:
        location += "?" + quote(unquote(query), safe=_PATH_SAFE + "?")
    return location


def _clean_prefix(prefix: str) -> str:
    """A mount prefix like ``/lab`` (from a trusted front), or '' if it is not one."""
    prefix = prefix.strip().rstrip("/")
    if not prefix.startswith("/") or prefix.startswith("//"):
        return ""
    if any(c in prefix for c in "\\?#%") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in prefix):
        return ""
    return prefix


def file_path(segments: list[str]) -> str:
    """The path of a file inside an instance from decoded path SEGMENTS, URL-encoded.

    Refused (404, so nothing about the layout leaks): an empty, ``.`` or ``..`` segment, and
    one holding a slash, backslash or control character (``%2F``, ``%2e%2e`` arrive decoded).
    """
    if not segments:
        raise ApiError(404, "NOT_FOUND", "no file named")
    for segment in segments:
        if segment in ("", ".", "..") or any(c in segment for c in "/\\"):
            raise ApiError(404, "NOT_FOUND", "no such file")
        if any(unicodedata.category(c) == "Cc" for c in segment):
            raise ApiError(404, "NOT_FOUND", "no such file")
    return "/".join(quote(s, safe="") for s in segments)
