"""Headless Chromium, JupyterLab through the mixer: a notebook on the remote kernel runs a cell.

The local server is a real JupyterLab; the browser opens ``/lab?token=T`` on the *mixer*
(usage 2: the mixer is the front of the local Jupyter), clicks the launcher's ``Python 3
(gpu)`` tile (the remote kernelspec, mixed in), and runs a cell that prints the marker
variable only the remote Jupyter's environment has.
"""

from __future__ import annotations

from tests._devtools import missing_chromium, open_page
from tests._tools import unavailable
from tests.test_demo import (
    CELL_EDITOR,
    CELL_EDITOR_FOCUSED,
    KERNEL_IDLE,
    KERNEL_IDLE_TEXT,
    OUTPUT,
    SHIFT,
    STEP_TIMEOUT,
    missing_lab,
)

from ._setup import MARK, MixerTestCase

REMOTE_TILE = '.jp-LauncherCard[data-category="Notebook"][title$=" (gpu)"]'


class BrowserTests(MixerTestCase):
    timeout = 900
    skip = unavailable(missing_chromium() or missing_lab())
    local_script = "jupyter-lab"

    async def test_cell_on_remote_kernel_in_jupyterlab(self) -> None:
        await self.start_all()
        page = await open_page(self)
        await page.navigate(self.url(f"/lab?token={self.token}"))
        await page.wait_for(REMOTE_TILE, STEP_TIMEOUT)
        await page.click(REMOTE_TILE)
        await page.wait_for(CELL_EDITOR, STEP_TIMEOUT)
        await page.wait_for(KERNEL_IDLE, STEP_TIMEOUT, text=KERNEL_IDLE_TEXT)
        await page.click(CELL_EDITOR)
        await page.wait_for(CELL_EDITOR_FOCUSED, STEP_TIMEOUT)
        code = f"import os; print(os.environ.get('{MARK}', 'none'))"
        await page.type(code)
        await page.wait_for(CELL_EDITOR, STEP_TIMEOUT, text=code)
        await page.press("Enter", 13, modifiers=SHIFT)
        output = await page.wait_for(OUTPUT, STEP_TIMEOUT, text="remote-host")
        self.assertEqual(output.strip(), "remote-host")
        # The kernel lives on the remote Jupyter; the notebook file on the local one.
        sessions = await self.api("GET", "/api/sessions")
        self.assertEqual([s["kernel"]["name"] for s in sessions], ["gpu:python3"])
        remote = await self.api(
            "GET", "/api/kernels", port=self.remote.port, token=self.remote.token
        )
        self.assertEqual([k["id"] for k in remote], [sessions[0]["kernel"]["id"]])
        self.assertTrue(list(self.local.root.globChildren("*.ipynb")))
