"""noVNC (Debian's novnc) in headless Chromium, served by the gateway's --http_directory,
connects through the gateway to x11vnc on Xvfb and shows the desktop (a pixel check)."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from nbbridge.gateway import DesktopService

from .._devtools import missing_chromium, open_page
from .._tools import skip_unavailable
from ._harness import start_gateway
from .test_x11 import need_x11

NOVNC = "/usr/share/novnc"

#: Resolves with the RGBA of the middle of noVNC's canvas once it is white (the Xvfb root
#: window, -wr), or after the deadline with what it shows (checked on each animation frame).
_PIXEL = """
new Promise((resolve) => {
  const deadline = Date.now() + 60000;
  function look() {
    const canvas = document.querySelector('#screen canvas');
    let px = null;
    if (canvas && canvas.width > 0 && canvas.height > 0) {
      const ctx = canvas.getContext('2d');
      px = Array.from(ctx.getImageData(canvas.width / 2, canvas.height / 2, 1, 1).data);
      if (px[0] === 255 && px[1] === 255 && px[2] === 255) {
        resolve({px, w: canvas.width, h: canvas.height,
                 status: document.querySelector('#status').textContent});
        return;
      }
    }
    if (Date.now() > deadline) {
      resolve({px, status: (document.querySelector('#status') || {}).textContent});
      return;
    }
    requestAnimationFrame(look);
  }
  look();
})
"""


class NoVNCTests(TestCase):
    timeout = 240

    async def test_novnc_shows_the_desktop(self) -> None:
        reason = missing_chromium()
        if reason is not None:
            skip_unavailable(reason)
        need_x11()
        if not os.path.exists(os.path.join(NOVNC, "vnc_lite.html")):
            skip_unavailable("noVNC not found (Debian: apt-get install novnc)")
        desktop = DesktopService({"geometry": "320x240x24", "xvfb_args": ["-wr"]}, reactor)
        host, port = await desktop.start(0)
        self.addCleanup(desktop.stop)
        gw = await start_gateway(
            self,
            [
                "--http_directory", NOVNC,
                "--http_port", "0",
                "--client_hostname", host,
                "--client_port", str(port),
                "0",
            ],
        )  # fmt: skip
        page = await open_page(self)
        url = (
            f"http://127.0.0.1:{gw.http_port}/vnc_lite.html"
            f"?host=127.0.0.1&port={gw.ws_port}&path=websockify"
        )
        await page.navigate(url)
        seen = await page.evaluate(_PIXEL, timeout=90)
        self.assertEqual(seen["px"], [255, 255, 255, 255], seen)
        self.assertEqual((seen["w"], seen["h"]), (320, 240))
        self.assertIn("Connected", seen["status"])
