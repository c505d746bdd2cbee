"""Sans-IO rules of the mix: which backend a name or path belongs to, and JSON rewrites.

A remote's kernelspec ``python3`` is ``gpu:python3`` in the mix and its display name
``Python 3 (gpu)``; the local server's names are unchanged, so the default stays local and
a JupyterLab that only knows the local kernels sees nothing new. Kernel and session ids are
the backends' own (UUIDs) and pass through unchanged; only the ``name`` fields that hold a
kernelspec name are rewritten, both ways.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

#: a remote's name: what prefixes its kernelspecs (``gpu:python3``)
REMOTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")

#: the separator between a remote's name and its own kernelspec name
SEPARATOR = ":"


def check_remote_name(name: str) -> str:
    """NAME if it can prefix kernelspec names, else a ValueError saying why."""
    if not REMOTE_NAME.match(name):
        raise ValueError(
            f"remote name {name!r}: use letters, digits, '-' and '_' (at most 32), "
            "starting with a letter or digit"
        )
    return name


def split_spec(name: str, remotes: set[str] | frozenset[str]) -> tuple[str | None, str]:
    """(remote, its own name) for a mixed kernelspec name; (None, name) for a local one."""
    prefix, sep, rest = name.partition(SEPARATOR)
    if sep and prefix in remotes and rest:
        return prefix, rest
    return None, name


def prefixed(remote: str | None, name: str) -> str:
    return name if remote is None else f"{remote}{SEPARATOR}{name}"


def _resource_path(remote: str | None, name: str, original: str) -> str:
    """A spec's resource URL (``/kernelspecs/python3/logo-64x64.png``) in the mixer's space."""
    _, sep, tail = original.rpartition("/kernelspecs/")
    if not sep:
        return original
    _, slash, file = tail.partition("/")
    return f"/kernelspecs/{quote(prefixed(remote, name), safe=':')}/{file}" if slash else original


def mark_spec(remote: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    """One ``/api/kernelspecs`` entry as the mix shows it (a copy)."""
    own = str(spec.get("name", ""))
    out = dict(spec)
    out["name"] = prefixed(remote, own)
    inner = dict(spec.get("spec") or {})
    if remote is not None and "display_name" in inner:
        inner["display_name"] = f"{inner['display_name']} ({remote})"
    out["spec"] = inner
    resources = spec.get("resources") or {}
    out["resources"] = {k: _resource_path(remote, own, str(v)) for k, v in resources.items()}
    return out


def merge_kernelspecs(
    local: dict[str, Any] | None, remotes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The ``/api/kernelspecs`` answer: local specs (and default) plus every remote's, marked."""
    specs: dict[str, Any] = {}
    default = None
    if local is not None:
        default = local.get("default")
        for entry in (local.get("kernelspecs") or {}).values():
            marked = mark_spec(None, entry)
            specs[marked["name"]] = marked
    for remote, answer in remotes.items():
        for entry in (answer.get("kernelspecs") or {}).values():
            marked = mark_spec(remote, entry)
            specs[marked["name"]] = marked
    if default is None and specs:
        default = sorted(specs)[0]
    return {"default": default, "kernelspecs": specs}


def mark_kernel(remote: str | None, model: dict[str, Any]) -> dict[str, Any]:
    """A kernel model from backend REMOTE as the mix shows it (its spec name prefixed)."""
    out = dict(model)
    if remote is not None and isinstance(out.get("name"), str):
        out["name"] = prefixed(remote, out["name"])
    return out


def mark_session(remote: str | None, model: dict[str, Any]) -> dict[str, Any]:
    """A session model from backend REMOTE, its kernel's spec name prefixed."""
    out = dict(model)
    if isinstance(out.get("kernel"), dict):
        out["kernel"] = mark_kernel(remote, out["kernel"])
    return out


def dead_kernel(kernel_id: str, name: str) -> dict[str, Any]:
    """The model of a kernel whose backend cannot be reached: it is reported dead."""
    return {
        "id": kernel_id,
        "name": name,
        "last_activity": None,
        "execution_state": "dead",
        "connections": 0,
    }


def strip_token(target: bytes) -> bytes:
    """TARGET (path and query) without a ``token`` parameter: the mixer's token stays here."""
    path, sep, query = target.partition(b"?")
    if not sep:
        return target
    pairs = [(k, v) for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True)]
    kept = [(k, v) for k, v in pairs if k != "token"]
    if len(kept) == len(pairs):
        return target
    return path + (b"?" + urlencode(kept).encode("latin-1") if kept else b"")


def segments(path: bytes) -> list[str]:
    """The decoded segments of a request path (``/api/kernels/x`` -> ``["api","kernels","x"]``)."""
    return [unquote(s.decode("latin-1")) for s in path.split(b"?", 1)[0].split(b"/") if s]
