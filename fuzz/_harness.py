"""What every target shares: instrumented imports, input splitting, and atheris' entry."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def instrumented() -> Iterator[None]:
    """Instrument nbbridge's modules imported inside (coverage feedback), when under atheris.

    Imported without atheris (by the trial test that checks the seeds), this does nothing.
    """
    try:
        import atheris
    except ImportError:
        yield
        return
    with atheris.instrument_imports(include=["nbbridge"]):
        yield


def split(data: bytes) -> tuple[int, list[bytes]]:
    """The first byte of DATA as a selector, and the rest cut into the reads a peer might send.

    The selector's low 3 bits choose the cut: 0 is one read, else reads of 1, 2, ... 7 bytes
    repeating from a size of that many bytes; a codec must give the same result either way.
    """
    if not data:
        return 0, []
    selector, rest = data[0], data[1:]
    step = selector & 7
    if step == 0:
        return selector, [rest] if rest else []
    pieces = []
    pos, size = 0, step
    while pos < len(rest):
        pieces.append(rest[pos : pos + size])
        pos += size
        size = size % 7 + 1
    return selector, pieces


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Run atheris on TEST_ONE_INPUT with libFuzzer's command line (``-runs=N CORPUS ...``)."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
