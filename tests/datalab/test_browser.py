"""Headless Chromium opens a datalab view URL and runs a cell in JupyterLab that reads the CSV.

The page reaches the instance only through the datalab's proxy, with the session cookie the
view set; it holds no token (JupyterLab's page carries none), so every API call and the
kernel WebSocket it makes are authenticated by the proxy.
"""

from __future__ import annotations

from tests._devtools import missing_chromium, open_page
from tests._tools import unavailable
from tests.test_demo import (
    CELL_EDITOR,
    CELL_EDITOR_FOCUSED,
    KERNEL_IDLE,
    KERNEL_IDLE_TEXT,
    LAUNCHER_NOTEBOOK,
    OUTPUT,
    SHIFT,
    STEP_TIMEOUT,
    missing_lab,
)
from tests.tunnel._jupyter import missing_jupyter

from ._harness import DatalabTestCase


class BrowserTests(DatalabTestCase):
    timeout = 900
    skip = unavailable(missing_jupyter() or missing_chromium() or missing_lab())

    async def test_view_url_opens_jupyterlab_and_runs_a_cell(self) -> None:
        await self.start_datalab()
        nonce = await self.within(120, "start", self.start_instance())
        page = await open_page(self)
        await page.navigate(f"{self.base}/datalab/view/{nonce}/lab")
        await page.wait_for(LAUNCHER_NOTEBOOK, STEP_TIMEOUT)
        self.assertEqual(await page.evaluate("location.pathname"), "/lab")
        # The page holds no credential of the instance.
        self.assertEqual(
            await page.evaluate(
                "JSON.parse(document.getElementById('jupyter-config-data').textContent).token"
            ),
            "",
        )
        self.assertNotIn("datalab-session", await page.evaluate("document.cookie"))
        await page.click(LAUNCHER_NOTEBOOK)
        await page.wait_for(CELL_EDITOR, STEP_TIMEOUT)
        await page.wait_for(KERNEL_IDLE, STEP_TIMEOUT, text=KERNEL_IDLE_TEXT)
        await page.click(CELL_EDITOR)
        await page.wait_for(CELL_EDITOR_FOCUSED, STEP_TIMEOUT)
        code = "print(open('weather.csv').read().splitlines()[2])"
        await page.type(code)
        await page.wait_for(CELL_EDITOR, STEP_TIMEOUT, text=code)
        await page.press("Enter", 13, modifiers=SHIFT)
        output = await page.wait_for(OUTPUT, STEP_TIMEOUT, text="Lima")
        self.assertEqual(output.strip(), "Lima,19")
        await page.screenshot()
