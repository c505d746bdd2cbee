"""WebSocket masking (RFC 6455 §5.3) in place, in C when Autobahn's compiled NVX helper is there.

Autobahn's own masker returns a fresh zero-filled copy per call; the data path masks a buffer
it has just built (a frame header followed by its payload) and wants no further copy.
"""

from __future__ import annotations

from typing import Any

try:
    from _nvx_xormasker import ffi as _ffi
    from _nvx_xormasker import lib as _lib
except ImportError:  # pragma: no cover - Autobahn built without its C helpers
    _ffi = _lib = None

_nvx: Any = _lib
_cffi: Any = _ffi

#: Whether masking runs in C (Autobahn's NVX helper) rather than in Python.
NATIVE = _nvx is not None


def _rotated(key: bytes, offset: int) -> bytes:
    shift = offset & 3
    return key[shift:] + key[:shift] if shift else key


def mask_in_place(buf: bytearray, start: int, key: bytes, offset: int = 0) -> None:
    """XOR ``buf[start:]`` with the 4-byte masking KEY (masking and unmasking are the same).

    :param offset: where ``buf[start]`` sits in the frame's payload, for a payload that
        arrives in pieces: the key repeats every 4 bytes from the payload's first byte.
    """
    length = len(buf) - start
    if length <= 0:
        return
    key = _rotated(key, offset)
    if _nvx is not None:
        masker = _nvx.nvx_xormask_new(key)
        try:
            _nvx.nvx_xormask_process(masker, _cffi.from_buffer("uint8_t[]", buf) + start, length)
        finally:
            _nvx.nvx_xormask_free(masker)
        return
    stream = (key * (length // 4 + 1))[:length]
    value = int.from_bytes(buf[start:], "little") ^ int.from_bytes(stream, "little")
    buf[start:] = value.to_bytes(length, "little")
