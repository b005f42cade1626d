"""Headless Chromium (Debian's `chromium`) driven over its DevTools protocol, for tests that look at pages as a
person would: open a URL, fill a file input, click, wait, read the DOM, take a screenshot.

A fresh profile per browser, no network beyond what the page itself asks for (the tests' own 127.0.0.1
servers and file:// pages), no sandbox (tests run as root in CI)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
         "--mute-audio", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One headless browser with one page. Use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 1000, timeout: float = 60.0, attempts: int = 2):
        """`attempts`: browsers started (each with a fresh profile) before giving up: once in a full suite run on
        this loaded 2-core machine, a browser never wrote its DevTools port within 60 s."""
        import websocket

        path = chromium_path()
        if path is None:
            raise RuntimeError("chromium is not installed (make sysdeps installs Debian's chromium)")
        failures = []
        for _ in range(attempts):
            port = self._start(path, width, height, timeout)
            if isinstance(port, int):
                break
            failures.append(port)
        else:
            raise RuntimeError("chromium did not start: " + " | ".join(failures))
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.timeout = timeout
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Network.enable")

    def _start(self, path: str, width: int, height: int, timeout: float) -> int | str:
        """Start one browser: its DevTools port, or why it did not start (it is stopped then)."""
        self.profile = tempfile.mkdtemp(prefix="dfbatch-chromium-")
        log = os.path.join(self.profile, "stderr.log")
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([path, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
                                         stdout=subprocess.DEVNULL, stderr=err)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while not os.path.exists(port_file) or not open(port_file).read().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                why = f"exit code {self.proc.poll()}" if self.proc.poll() is not None else f"no DevTools port after {timeout:.0f} s"
                tail = open(log, errors="replace").read()[-500:].replace("\n", " ")
                self.close()
                return f"{why}; stderr: {tail}"
            time.sleep(0.1)
        return int(open(port_file).read().split()[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                self.events.append(json.loads(self.ws.recv()))
            except Exception:
                break
        raise TimeoutError(f"no {method} within the time limit")

    def goto(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str):
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None, poll: float = 0.25) -> None:
        """Poll a JS expression until it is truthy (in JS: an element counts, though it comes back as {})."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            try:
                value = self.js(f"Boolean({expression})")
            except RuntimeError:  # mid-navigation
                value = None
            if value:
                return
            time.sleep(poll)
        try:
            where = self.js("location.href + ' | ' + document.body.innerText.slice(0, 600)")
        except Exception as exc:
            where = f"(page unreadable: {exc})"
        raise TimeoutError(f"{expression!r} stayed false; page: {where}")

    def set_files(self, selector: str, paths: list[str]) -> None:
        doc = self.send("DOM.getDocument")
        node = self.send("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector=selector)["nodeId"]
        if not node:
            raise RuntimeError(f"no element {selector}")
        self.send("DOM.setFileInputFiles", files=[os.path.abspath(p) for p in paths], nodeId=node)

    def requests(self) -> list[str]:
        """URLs the page requested since the last navigation (Network.requestWillBeSent events seen so far)."""
        return [ev["params"]["request"]["url"] for ev in self.events if ev.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: str) -> bytes:
        """A PNG of the whole page (not only the viewport)."""
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                          clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 12000), "scale": 1})["data"])
        with open(path, "wb") as f:
            f.write(data)
        return data


def not_blank(png: bytes, min_colours: int = 50) -> bool:
    """The screenshot shows something: many distinct colours and not one colour everywhere."""
    import io

    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    flat = img.reshape(-1, 3)
    colours = len(np.unique(flat[:: max(1, len(flat) // 200000)], axis=0))
    return colours >= min_colours and float(img.std()) > 10.0
