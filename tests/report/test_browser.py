"""The report in a real browser: Debian's headless chromium, driven over the DevTools protocol.

Chromium is installed by `make test` (Makefile target `browser`). In CI (env CI set) a missing
chromium fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from _support import REPORT_PLOTS

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1"]


def chromium_or_skip() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if path is None:
        message = "chromium is not installed (make test installs it: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class DevTools:
    """A minimal DevTools-protocol session on one page: commands in order, events kept."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.events: list[dict] = []
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            self.events.append(message)
            if message.get("method") == event:
                return message["params"]
        raise TimeoutError(f"no {event} within {timeout} s")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"]["value"]

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and browser-log errors seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert", "warning"):
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"log: {params['entry']['text']} ({params['entry'].get('url', '')})")
        return found


@contextmanager
def headless_chromium(profile: Path) -> Iterator[DevTools]:
    """Start chromium with a throw-away profile; a DevTools session on its first page."""
    binary = chromium_or_skip()
    profile.mkdir(parents=True, exist_ok=True)
    log = (profile / "chromium.log").open("wb")
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT)
    session = None
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {(profile / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            targets = json.load(response)
        session = DevTools(next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"))
        yield session
    finally:
        if session is not None:
            session.ws.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


FIGURE_SIZES = """JSON.stringify([...document.querySelectorAll('figure[data-plot]')].map(f => {
  const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return [f.dataset.plot, box.width, box.height, svg ? svg.querySelectorAll('path').length : 0]; }))"""


def test_the_report_renders_in_chromium_without_errors(tiny_run, tmp_path):
    from PIL import Image

    page = (tiny_run / "report.html").resolve()
    with headless_chromium(tmp_path / "profile") as chromium:
        for domain in ("Page", "Runtime", "Log", "Network"):
            chromium.call(f"{domain}.enable")
        chromium.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        chromium.call("Page.navigate", url=page.as_uri())
        chromium.wait_for("Page.loadEventFired")
        figures = json.loads(chromium.evaluate(FIGURE_SIZES))
        chromium.evaluate("new Promise(done => setTimeout(() => done(true), 300))")  # late console messages
        height = chromium.evaluate("document.documentElement.scrollHeight")
        shot = chromium.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                             clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1})
        problems = chromium.problems()
        requests = [e["params"]["request"]["url"] for e in chromium.events
                    if e.get("method") == "Network.requestWillBeSent"]

    assert sorted(name for name, *_ in figures) == sorted(REPORT_PLOTS)
    for name, width, box_height, paths in figures:
        assert width > 300 and box_height > 150 and paths > 10, (name, width, box_height, paths)
    assert problems == []
    assert requests == [page.as_uri()]  # the page itself and nothing else: it works offline
    png = tmp_path / "report.png"
    png.write_bytes(base64.b64decode(shot["data"]))
    image = Image.open(io.BytesIO(png.read_bytes())).convert("RGB")
    assert image.size == (1280, height) and height > 2000
    colours = image.resize((320, height // 4)).getcolors(maxcolors=1 << 20)
    assert len(colours) > 200  # plots and text, not a blank or error page
    print(f"screenshot: {png}")
