"""Headless Chromium driven over the DevTools protocol, for tests that use a page as a user would.

Chromium is started with ``--remote-debugging-port=0`` and reports the browser's DevTools
WebSocket on stderr; the tests wait for that line, then talk to one page target over an
Autobahn WebSocket: navigate, wait for a CSS selector, click with the mouse, type, press keys.

Waiting happens inside the page, on events: a ``MutationObserver`` resolves a promise once the
condition holds, and ``Runtime.evaluate(awaitPromise=True)`` returns when it does (or when the
deadline passes, with the page's text for the error message). No polling loop, no sleep.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import TestCase

from tests._cleanup import add_async_cleanup
from tests.tunnel._process import ChildProcess, spawn

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--window-size=1400,1000",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
#: Seconds for Chromium to start and report its DevTools address (slow 2-core machines).
START_TIMEOUT = 90.0
#: Seconds a single DevTools command may take before the test fails.
CALL_TIMEOUT = 60.0
#: Errors of Runtime.evaluate when the page navigated away while it ran: evaluate again.
_shots = itertools.count(1)
_NAVIGATED = re.compile(r"context was destroyed|navigated or closed|Cannot find context", re.I)


def missing_chromium() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if CHROMIUM is None:
        return "chromium not found: apt-get install chromium (Debian) to run the browser tests"
    return None


class DevToolsError(Exception):
    """Chromium answered a DevTools command with an error."""


class DevToolsConnection(WebSocketClientProtocol):
    """One DevTools WebSocket: numbered commands, each answered by the reply with its id."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, Deferred[dict[str, Any]]]] = {}

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        waiter = self._pending.pop(message.get("id", -1), None)
        if waiter is None:
            return  # an event: the tests wait on the page's DOM instead
        method, d = waiter
        if "error" in message:
            d.errback(DevToolsError(f"{method}: {message['error']}"))
        else:
            d.callback(message.get("result", {}))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(AssertionError(f"DevTools WebSocket refused: {code} {reason}"))

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        pending, self._pending = self._pending, {}
        for method, d in pending.values():
            d.errback(ConnectionDone(f"DevTools connection lost during {method}"))
        self.lost.callback(None)

    def call(
        self, method: str, timeout: float = CALL_TIMEOUT, **params: Any
    ) -> Deferred[dict[str, Any]]:
        """Send METHOD with PARAMS; fires with the result (DevToolsError if Chromium refuses)."""
        number = next(self._ids)
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending[number] = (method, d)
        self.sendMessage(json.dumps({"id": number, "method": method, "params": params}).encode())
        d.addTimeout(timeout, reactor)
        return d


async def connect(test: TestCase, url: str) -> DevToolsConnection:
    """Open the DevTools WebSocket at URL (ws://127.0.0.1:…); closed at the end of the test."""
    found = re.match(r"ws://([\d.]+):(\d+)/", url)
    assert found, url
    factory = WebSocketClientFactory(url, reactor=reactor)
    factory.protocol = DevToolsConnection
    factory.setProtocolOptions(autoPingInterval=0, closeHandshakeTimeout=5)
    endpoint = TCP4ClientEndpoint(reactor, found[1], int(found[2]), timeout=30)
    connection = cast(DevToolsConnection, await endpoint.connect(factory))

    async def close() -> None:
        if connection.state == connection.STATE_OPEN:
            connection.sendClose(1000)
        await connection.lost

    add_async_cleanup(test, close)
    await connection.opened
    return connection


class Page:
    """One browser tab, used the way a person would: look, click, type, press keys."""

    def __init__(self, devtools: DevToolsConnection) -> None:
        self.devtools = devtools

    async def navigate(self, url: str) -> None:
        result = await self.devtools.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise AssertionError(f"navigating to {url}: {result['errorText']}")

    async def evaluate(self, expression: str, timeout: float = CALL_TIMEOUT) -> Any:
        """The value of the JavaScript EXPRESSION (awaited if it is a promise)."""
        result = await self.devtools.call(
            "Runtime.evaluate",
            timeout=timeout + 10,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, selector: str, timeout: float, text: str | None = None) -> str:
        """Wait until an element matching SELECTOR (containing TEXT, if given) is in the page.

        Returns the element's text. Fails after TIMEOUT seconds with what the page shows.
        """
        script = _WAIT_SCRIPT % {"selector": json.dumps(selector), "text": json.dumps(text)}
        deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
        while True:
            left = deadline - reactor.seconds()  # type: ignore[attr-defined]
            try:
                found = await self.evaluate(script.replace("__MS__", str(int(left * 1000))), left)
            except DevToolsError as e:
                # The page navigated while we waited (a redirect): wait in the new document.
                if _NAVIGATED.search(str(e)) and left > 0:
                    continue
                raise
            if found["ok"]:
                return str(found["text"])
            shot = await self.screenshot()
            raise AssertionError(
                f"no {selector!r}{f' with {text!r}' if text else ''} after {timeout:g} s "
                f"(screenshot: {shot}); the page at {found['url']} shows:\n"
                f"{found['text'][-3000:]}"
            )

    async def screenshot(self) -> str:
        """Save what the tab shows as a PNG in the current (trial's temporary) directory."""
        shot = await self.devtools.call("Page.captureScreenshot", format="png")
        path = os.path.abspath(f"chromium-{next(_shots)}.png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return path

    async def click(self, selector: str) -> None:
        """Click the middle of the first element matching SELECTOR, with the mouse."""
        box = await self.evaluate(_BOX_SCRIPT % json.dumps(selector))
        if box is None:
            raise AssertionError(f"nothing to click: no {selector!r} in the page")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.devtools.call(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box["x"],
                y=box["y"],
                button="none" if kind == "mouseMoved" else "left",
                clickCount=0 if kind == "mouseMoved" else 1,
            )

    async def type(self, text: str) -> None:
        """Type TEXT into whatever has the keyboard focus."""
        await self.devtools.call("Input.insertText", text=text)

    async def press(self, key: str, code: int, modifiers: int = 0) -> None:
        """Press and release KEY (e.g. "Enter", 13); MODIFIERS: 1 Alt, 2 Ctrl, 4 Meta, 8 Shift."""
        for kind in ("rawKeyDown", "keyUp"):
            await self.devtools.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=key,
                windowsVirtualKeyCode=code,
                nativeVirtualKeyCode=code,
                modifiers=modifiers,
            )


#: Resolves once SELECTOR (with TEXT) is in the document, watching DOM mutations, or at the
#: deadline with the page's text; __MS__ is the time left.
_WAIT_SCRIPT = """
new Promise((resolve) => {
  const selector = %(selector)s, text = %(text)s;
  const find = () => {
    for (const el of document.querySelectorAll(selector)) {
      if (text === null || (el.textContent || "").includes(text)) return el;
    }
    return null;
  };
  let observer = null, timer = null;
  const finish = (ok, el) => {
    if (observer) observer.disconnect();
    if (timer) clearTimeout(timer);
    const shown = document.body ? document.body.innerText : "";
    resolve({ok, text: ok ? el.textContent : shown, url: location.href});
  };
  const check = () => { const el = find(); if (el) finish(true, el); };
  const el = find();
  if (el) { finish(true, el); return; }
  observer = new MutationObserver(check);
  observer.observe(document, {subtree: true, childList: true, attributes: true,
                              characterData: true});
  timer = setTimeout(() => finish(false, null), __MS__);
})
"""

#: The centre of the first element matching the selector, scrolled into view, or null.
_BOX_SCRIPT = """
(() => {
  const el = document.querySelector(%s);
  if (!el) return null;
  el.scrollIntoView({block: "center"});
  const r = el.getBoundingClientRect();
  return {x: r.left + r.width / 2, y: r.top + Math.min(r.height / 2, 10)};
})()
"""


async def open_page(test: TestCase) -> Page:
    """Start headless Chromium with a fresh profile; its one tab, on about:blank.

    The test's clean-up closes the DevTools connections and stops Chromium (SIGTERM, then
    SIGKILL if it lingers) and waits until it has been reaped.
    """
    assert CHROMIUM is not None
    profile = os.path.abspath(test.mktemp())
    os.makedirs(profile)
    argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
    env = {**os.environ, "HOME": profile}
    browser: ChildProcess = spawn(test, "chromium", argv, env)
    found = await browser.wait_for(r"DevTools listening on (ws://\S+)", timeout=START_TIMEOUT)
    control = await connect(test, found[1])
    targets = await control.call("Target.getTargets")
    pages = [t for t in targets["targetInfos"] if t["type"] == "page"]
    if not pages:
        created = await control.call("Target.createTarget", url="about:blank")
        target_id = created["targetId"]
    else:
        target_id = pages[0]["targetId"]
    host = found[1].split("/devtools/")[0]
    page = Page(await connect(test, f"{host}/devtools/page/{target_id}"))
    await page.devtools.call("Page.enable")
    return page
