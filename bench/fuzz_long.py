"""Long fuzz runs: every target for many inputs (10 000 000 by default), corpora kept.

    .venv/bin/python bench/fuzz_long.py [--runs 10000000] [--jobs 2] [--corpus build/fuzz-corpus]
                                        [--max-len 4096] [--json bench/results-fuzz.json]
                                        [TARGET ...]

The bounded run in `make test` gives each target 100 000 inputs from its seeds alone; this
one goes on from the corpora earlier long runs left in --corpus (under build/, not committed),
with longer inputs allowed. Prints inputs, seconds and inputs per second per target; a target
that finds a failing input stops there, saves it under --artifacts and makes the run exit 1.
Figures of the runs made so far are in README.md ("Fuzzing").
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.run import main

if __name__ == "__main__":
    defaults = [
        "--runs=10000000",
        "--corpus=build/fuzz-corpus",
        "--max-len=4096",
        "--artifacts=build/fuzz-artifacts",
    ]
    sys.exit(main(defaults + sys.argv[1:]))
