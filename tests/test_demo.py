"""`make demo` as a new user meets it: open the printed URL, create a notebook, run a cell.

The demo runs exactly as ``make demo`` runs it (``python -m nbbridge.demo``: a relay, an agent,
a client, each a real ``twistd`` process, and a real JupyterLab, all on loopback). Headless
Chromium opens the URL the demo prints, which reaches JupyterLab only through the tunnel;
the test clicks the launcher's notebook tile, types ``print(6*7)``, presses Shift+Enter and
waits for ``42`` in the output area. Ctrl-C (SIGINT) then stops the demo, and no process it
started may be left; nor after SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ProcessExitedAlready
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from nbbridge.demo import JUPYTER_LAB, OPEN_PROMPT
from tests._cleanup import add_async_cleanup
from tests._devtools import missing_chromium, open_page
from tests._tools import unavailable
from tests.tunnel._process import ChildProcess, child_env, spawn

#: Seconds for each step a slow, shared 2-core machine may take (JupyterLab's first load
#: parses megabytes of JavaScript; a kernel takes seconds to start).
STEP_TIMEOUT = 180.0

#: What the user does in JupyterLab, as CSS selectors.
LAUNCHER_NOTEBOOK = '.jp-LauncherCard[data-category="Notebook"]'
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"
# The status bar says "| Idle" only once the kernel is started and connected. (The toolbar's
# execution indicator has data-status="idle" from the start; a cell run before the kernel is
# connected is skipped, with a notification that the kernel is still initializing.)
KERNEL_IDLE = ".jp-StatusBar-TextItem"
KERNEL_IDLE_TEXT = "| Idle"
CELL_EDITOR = f"{NOTEBOOK} .jp-CodeCell .cm-content"
CELL_EDITOR_FOCUSED = f"{NOTEBOOK} .jp-CodeCell .cm-editor.cm-focused .cm-content"
OUTPUT = f"{NOTEBOOK} .jp-OutputArea-output"
SHIFT = 8


def missing_lab() -> str | None:
    """Why the demo cannot run here (JupyterLab not installed), or None."""
    if not JUPYTER_LAB.exists():
        return f"JupyterLab is not installed: no {JUPYTER_LAB} (pip install '.[demo]')"
    return None


def processes_in(directory: Path) -> dict[int, str]:
    """Processes (pid: command line) working in DIRECTORY or naming it in their arguments."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue  # gone meanwhile, or not ours to look at
        if cwd.startswith(str(directory)) or str(directory) in argv:
            found[int(entry.name)] = argv.strip()
    return found


def kill_processes_in(directory: Path) -> None:
    """SIGKILL whatever a failed demo left running in DIRECTORY (so one failure stays one)."""
    for pid in processes_in(directory):
        with contextlib.suppress(OSError):  # it ended meanwhile
            os.kill(pid, signal.SIGKILL)


def ended_within(seconds: float, what: str, child: ChildProcess) -> Deferred[None]:
    """Fires once CHILD has ended; fails with a clear message after SECONDS.

    CHILD's own ``ended`` is left alone (a timeout here must not cancel it: the clean-up
    still waits on it).
    """
    d: Deferred[None] = Deferred()

    def ended(result: object) -> object:
        if not d.called:
            d.callback(None)
        return result

    def late(failure: Failure) -> Failure:
        if failure.check(TimeoutError):
            raise AssertionError(f"{what}: not done after {seconds:g} s:\n{child.tail()}")
        return failure

    child.ended.addBoth(ended)
    d.addTimeout(seconds, reactor)
    d.addErrback(late)
    return d


class DemoTestCase(TestCase):
    """Runs `make demo`'s command and checks that stopping it leaves nothing behind."""

    timeout = 900
    skip = unavailable(missing_lab())
    #: the command `make demo` runs (tests/cluster/test_demo_cluster.py: `make cluster-demo`'s)
    command: tuple[str, ...] = (sys.executable, "-m", "nbbridge.demo")

    async def start_demo(self) -> tuple[ChildProcess, str, Path]:
        """`make demo`'s command, in a temporary directory of this test; its URL and work dir.

        The clean-up stops the demo (SIGTERM) if the test did not, then kills anything it left.
        """
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir(parents=True)
        env = child_env({"TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"})
        demo = spawn(self, "demo", list(self.command), env)
        add_async_cleanup(self, self._stop_and_reap, demo, tmp)
        work = await demo.wait_for(r"work directory: (\S+)", timeout=STEP_TIMEOUT)
        url = await demo.wait_for(re.escape(OPEN_PROMPT) + r" (\S+)", timeout=STEP_TIMEOUT)
        self.assertTrue(processes_in(Path(work[1])), "the demo's processes run in its work dir")
        return demo, url[1], Path(work[1])

    async def _stop_and_reap(self, demo: ChildProcess, tmp: Path) -> None:
        """Stop the demo if the test did not, and kill whatever it left running in TMP.

        Runs before ``spawn``'s own clean-up, which waits until the demo's pipes close: a
        process the demo leaked could hold them open forever.
        """
        if demo.running and demo.transport is not None:
            with contextlib.suppress(ProcessExitedAlready):  # only its pipes are still open
                demo.transport.signalProcess("TERM")
        try:
            await ended_within(STEP_TIMEOUT, "the demo stopping at clean-up", demo)
        finally:
            kill_processes_in(tmp)
            await ended_within(STEP_TIMEOUT, "the demo's pipes closing", demo)

    async def stop_demo(self, demo: ChildProcess, work: Path, signal_name: str) -> None:
        """Send SIGNAL_NAME; the demo must exit 0, stop every process and remove WORK."""
        assert demo.transport is not None
        demo.transport.signalProcess(signal_name)
        await ended_within(STEP_TIMEOUT, f"the demo stopping after SIG{signal_name}", demo)
        self.assertTrue(demo.exited_cleanly(), demo.tail())
        self.assertIn("stopping", demo.tail())
        self.assertEqual(processes_in(work), {})
        self.assertFalse(work.exists(), "the demo removes its temporary directory")


class DemoStopTests(DemoTestCase):
    async def test_sigterm_stops_everything(self) -> None:
        """SIGTERM (systemd, kill, a closing terminal's supervisor) stops it like Ctrl-C."""
        demo, _, work = await self.start_demo()
        await self.stop_demo(demo, work, "TERM")


class DemoInBrowserTests(DemoTestCase):
    skip = unavailable(missing_chromium() or missing_lab())

    async def test_printed_url_opens_jupyterlab_and_runs_a_cell(self) -> None:
        demo, url, work = await self.start_demo()
        self.assertRegex(url, r"^http://127\.0\.0\.1:\d+/lab\?token=\w+$")

        page = await open_page(self)
        await page.navigate(url)
        await page.wait_for(LAUNCHER_NOTEBOOK, STEP_TIMEOUT)
        await page.click(LAUNCHER_NOTEBOOK)
        await page.wait_for(CELL_EDITOR, STEP_TIMEOUT)
        await page.wait_for(KERNEL_IDLE, STEP_TIMEOUT, text=KERNEL_IDLE_TEXT)
        await page.click(CELL_EDITOR)
        # Keys go where the focus is: only once the editor has it, type.
        await page.wait_for(CELL_EDITOR_FOCUSED, STEP_TIMEOUT)
        await page.type("print(6*7)")
        await page.wait_for(CELL_EDITOR, STEP_TIMEOUT, text="print(6*7)")
        await page.press("Enter", 13, modifiers=SHIFT)
        output = await page.wait_for(OUTPUT, STEP_TIMEOUT, text="42")
        self.assertEqual(output.strip(), "42")
        # The notebook JupyterLab created is in the demo's Jupyter root, so it went through.
        self.assertTrue(list((work / "notebooks").glob("*.ipynb")))

        # Ctrl-C, as the demo tells the user: everything stops, nothing is left behind.
        await self.stop_demo(demo, work, "INT")
