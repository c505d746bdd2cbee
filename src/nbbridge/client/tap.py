"""twistd entry point for nbbridge-client (not built yet: see the tunnel issue)."""

import sys

from twisted.application.service import IService
from twisted.python import usage


class Options(usage.Options):
    """Accepts any arguments until the service is built, so it can say so clearly."""

    def parseArgs(self, *args: str) -> None:
        pass


def makeService(options: Options) -> IService:
    """Exit with a clear message: this daemon is not built yet."""
    sys.stderr.write("nbbridge-client: not built yet (see the tunnel issue)\n")
    raise SystemExit(2)
