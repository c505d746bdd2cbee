"""`python -m nbbridge.cli`: the same as the `nbbridge` console script."""

import sys

from nbbridge.cli import main

sys.exit(main())
