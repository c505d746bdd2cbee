"""Run fuzz targets for a number of inputs each: ``python -m fuzz.run [--runs N] [TARGET ...]``.

Each target runs in its own process (atheris with libFuzzer's ``-runs=N``), starting from a
fresh corpus of its ``seeds()``; ``--corpus DIR`` keeps the corpora there instead, so a long
run can resume. A target that finds a failing input writes it under ``--artifacts`` and the
run exits 1, naming it. The summary gives inputs, seconds and inputs per second per target.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

TARGETS = (
    "mux_codec",
    "ws_frames",
    "noise_handshake",
    "noise_records",
    "relay_routes",
    "relay_http",
)
#: Inputs longer than this are not tried: the formats' interesting structure fits well within
#: it, and longer inputs only make each run slower.
DEFAULT_MAX_LEN = 256
_ROOT = Path(__file__).resolve().parent.parent
_DONE = re.compile(rb"Done (\d+) runs in (\d+) second")


@attrs.frozen
class Result:
    """How one target's run went."""

    target: str
    runs: int
    seconds: float
    ok: bool
    output: str

    @property
    def per_second(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0


def write_seeds(target: str, corpus: Path) -> None:
    """Put TARGET's seeds in CORPUS (a directory), one file each."""
    module = importlib.import_module(f"fuzz.{target}")
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(module.seeds()):
        (corpus / f"seed-{i:02d}").write_bytes(seed)


def run_target(
    target: str,
    runs: int,
    corpus: Path,
    artifacts: Path,
    *,
    max_len: int = DEFAULT_MAX_LEN,
    seed: int = 1,
    python: str = sys.executable,
) -> Result:
    """Run TARGET for RUNS inputs from CORPUS in a subprocess; failing inputs go to ARTIFACTS."""
    write_seeds(target, corpus)
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [
        python,
        "-m",
        f"fuzz.{target}",
        f"-runs={runs}",
        f"-max_len={max_len}",
        f"-seed={seed}",
        f"-artifact_prefix={artifacts}/{target}-",
        "-print_final_stats=1",
        str(corpus),
    ]
    path = [str(_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    started = time.monotonic()
    done = subprocess.run(command, cwd=_ROOT, env=env, capture_output=True, check=False)
    seconds = time.monotonic() - started
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    found = _DONE.search(done.stdout + done.stderr)
    ran = int(found.group(1)) if found else 0
    ok = done.returncode == 0 and ran >= runs
    return Result(target, ran, seconds, ok, output)


def failure_summary(result: Result) -> str:
    """The lines of a failed run that say what went wrong and where the input was saved."""
    keep = [
        line
        for line in result.output.splitlines()
        if not line.startswith(("INFO:", "#", "WARNING: Failed to find"))
    ]
    return "\n".join(keep[-40:])


def run_all(
    targets: Sequence[str],
    runs: int,
    *,
    corpus_root: Path | None = None,
    artifacts: Path | None = None,
    jobs: int = 2,
    max_len: int = DEFAULT_MAX_LEN,
    report: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run TARGETS, JOBS at a time; fresh temporary corpora unless CORPUS_ROOT is given.

    REPORT, if given, hears of each target as soon as it is done (long runs take hours).
    """

    def one(target: str) -> Result:
        result = run_target(target, runs, root / target, saved, max_len=max_len)
        if report is not None:
            report(result)
        return result

    with tempfile.TemporaryDirectory(prefix="nbbridge-fuzz-") as scratch:
        root = corpus_root or Path(scratch) / "corpus"
        saved = artifacts or Path(scratch) / "artifacts"
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(one, targets))


def _line(r: Result) -> str:
    status = "ok" if r.ok else "FAILED"
    text = (
        f"{r.target:16} {r.runs:>11,} inputs {r.seconds:8.1f} s {r.per_second:9,.0f}/s  {status}\n"
    )
    return text if r.ok else text + failure_summary(r) + "\n"


def _print(result: Result) -> None:
    sys.stdout.write(_line(result))
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"of {', '.join(TARGETS)}")
    parser.add_argument("--runs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--jobs", type=int, default=2, help="targets run at once")
    parser.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN, help="longest input")
    parser.add_argument("--corpus", type=Path, help="keep corpora here (one folder a target)")
    parser.add_argument(
        "--artifacts", type=Path, default=Path("fuzz-artifacts"), help="where failing inputs go"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    results = run_all(
        args.targets or TARGETS,
        args.runs,
        corpus_root=args.corpus,
        artifacts=args.artifacts.resolve(),
        jobs=args.jobs,
        max_len=args.max_len,
        report=_print,
    )
    failed = any(not r.ok for r in results)
    if args.json:
        figures = [attrs.asdict(r, filter=lambda a, _: a.name != "output") for r in results]
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
