"""nbbridge.instances.JupyterProcesses on its own: a port taken between pick and bind."""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from nbbridge.instances import JupyterProcesses, _jupyter
from tests._tools import unavailable
from tests.tunnel._jupyter import missing_jupyter


class PortRaceTests(TestCase):
    timeout = 180
    skip = unavailable(missing_jupyter())

    async def test_a_taken_port_is_retried_with_another(self) -> None:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        picks = [taken.getsockname()[1]]
        real = _jupyter.free_port
        self.patch(_jupyter, "free_port", lambda: picks.pop() if picks else real())
        base = os.path.abspath(self.mktemp())
        processes = JupyterProcesses(reactor, base)
        self.addCleanup(lambda: Deferred.fromCoroutine(processes.stop_all()))
        upload = os.path.join(processes.spool(), "up")
        with open(upload, "wb") as f:
            f.write(b"a,b\n")
        running = await processes.start("one", "data.csv", upload)
        self.assertNotEqual(running.port, taken.getsockname()[1])
        with open(os.path.join(running.root, "data.csv"), "rb") as f:
            self.assertEqual(f.read(), b"a,b\n")
        self.assertEqual(
            [d for d in os.listdir(base) if d.startswith("i-")],
            [os.path.basename(running.directory)],
        )
