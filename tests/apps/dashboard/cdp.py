"""A small headless-Chromium driver over the DevTools protocol (websockets), for the dashboard tests.

Chromium is the system's package; every host but loopback is unresolvable and every
request the page makes is recorded (``requests``), as are console errors and uncaught
exceptions (``errors``). Everything is bounded: start, commands and waits time out.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def need_browser():
    """Skip (fail under ``SWARMGUARD_REQUIRE_BROWSER``, as ``make test`` sets) without Chromium or websockets."""
    missing = None
    if CHROMIUM is None:
        missing = "no Chromium on this machine"
    else:
        try:
            import websockets.sync.client  # noqa: F401
        except ImportError:
            missing = "websockets is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("SWARMGUARD_REQUIRE_BROWSER"):
            pytest.fail(f"{missing}, and SWARMGUARD_REQUIRE_BROWSER is set (make test installs it)")
        pytest.skip(missing)


class Browser:
    """One headless Chromium with one page (``close`` ends its process group)."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 2000, timeout: float = 60.0):
        from websockets.sync.client import connect

        self.timeout = timeout
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        port = self._devtools_port()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium opened no page")
            time.sleep(0.1)
        # entered as a context (closed in close()): websockets 17 warns on a bare connect()
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout,
                          ping_interval=None, close_timeout=2).__enter__()
        self.next_id, self.requests, self.errors, self.events = 0, [], [], []
        for method in ("Page.enable", "Network.enable", "Runtime.enable", "Log.enable"):
            self.send(method)
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _devtools_port(self) -> int:
        found: list[int] = []

        def read():
            for raw in self.proc.stderr:
                m = re.search(rb"DevTools listening on ws://127\.0\.0\.1:(\d+)/", raw)
                if m:
                    found.append(int(m.group(1)))
                    break
            for _ in self.proc.stderr:          # keep draining so Chromium never blocks on stderr
                pass

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.timeout
        while not found:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise TimeoutError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        return found[0]

    # ------------------------------------------------------------------ protocol
    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        self.events.append(message)
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("exception", {}).get("description")
                               or params["exceptionDetails"].get("text"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")

    def send(self, method: str, **params):
        self.next_id += 1
        wanted = self.next_id
        self.ws.send(json.dumps({"id": wanted, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {method}")
            message = json.loads(self.ws.recv(timeout=left))
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def pump(self, seconds: float) -> None:
        """Read events for ``seconds`` (requests made meanwhile are recorded)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                self._event(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                break

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str | None = None):
        """Poll ``expression`` until truthy; returns its value (TimeoutError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:            # the page is still loading (no body yet)
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what or expression}")
            self.pump(0.1)

    def open(self, url: str, headers: dict[str, str] | None = None) -> None:
        if headers:
            self.send("Network.setExtraHTTPHeaders", headers=headers)
        self.send("Page.navigate", url=url)

    def screenshot(self, path: Path, selector: str | None = None) -> Path:
        """The whole page, or (``selector``) the box of its first match."""
        params = {"format": "png", "captureBeyondViewport": True}
        if selector is not None:
            box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                                " return {x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height}; })()")
            params["clip"] = {**box, "scale": 1}
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
