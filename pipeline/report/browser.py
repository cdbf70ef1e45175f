"""Open a report page in a real headless Chromium and check it: no console errors, no failed
or outside requests, every plot decoded; optionally save a screenshot.

Chromium is driven over the DevTools protocol through `--remote-debugging-pipe` (JSON
messages ended by a NUL byte on file descriptors 3 and 4), so the check needs no network
port, no websocket library and no Node: only the `chromium` binary (Debian's package, which
`make browser` installs).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import KilnError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-pipe"]
# What the page reports about itself once loaded.
INSPECT_JS = """(() => {
  const imgs = [...document.images];
  const anchors = [...document.querySelectorAll('a[href^="#"]')].map(a => a.getAttribute('href').slice(1));
  return {
    title: document.title,
    images: imgs.length,
    plots: document.querySelectorAll('img.plot').length,
    broken_images: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 60)),
    sections: [...document.querySelectorAll('main section')].map(s => s.id),
    broken_links: anchors.filter(id => !document.getElementById(id)),
    scripts: document.scripts.length,
    height: document.documentElement.scrollHeight,
  };
})()"""


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    info: dict[str, Any] = field(default_factory=dict)
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = [f"console: {e}" for e in self.console_errors] + [f"exception: {e}" for e in self.exceptions]
        out += [f"failed request: {r}" for r in self.failed_requests]
        out += [f"request outside the page: {r}" for r in self.outside_requests]
        out += [f"image did not load: {i}" for i in self.info.get("broken_images", [])]
        out += [f"link to a missing section: #{a}" for a in self.info.get("broken_links", [])]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "ok" if self.ok else "; ".join(self.problems[:5])
        return (f"{self.info.get('plots', 0)} plots, {len(self.info.get('sections', []))} sections, "
                f"page {self.info.get('height', 0)} px tall: {state}")


class _Pipe:
    """The DevTools protocol over Chromium's pipe: commands out, responses and events in."""

    def __init__(self, process: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.process = process
        self.to_browser = to_browser
        self.from_browser = from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KilnError("chromium did not answer in time")
            ready, _, _ = select.select([self.from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    raise KilnError(f"chromium exited (code {self.process.poll()})")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise KilnError(f"chromium: {method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event


def check_page(page: str | os.PathLike, screenshot: str | os.PathLike | None = None, width: int = 1280,
               height: int = 1600, full_page: bool = False, chromium: str | None = None,
               timeout: float = 60.0) -> PageCheck:
    """Load `page` (a local HTML file) in headless Chromium and report what went wrong, if
    anything. With `screenshot`, saves a PNG of the top `height` pixels (or the whole page)."""
    binary = chromium or find_chromium()
    if not binary:
        raise KilnError("no chromium found (install it with `make browser`, Debian's `chromium` package)")
    url = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="kiln-chromium-") as profile:
        to_read, to_browser = os.pipe()  # chromium reads commands on fd 3
        from_browser, to_write = os.pipe()  # and writes replies on fd 4

        def wire_pipes() -> None:  # in the child: the pipe ends become fds 3 and 4
            high_read = fcntl.fcntl(to_read, fcntl.F_DUPFD, 10)  # first out of the way, in case
            high_write = fcntl.fcntl(to_write, fcntl.F_DUPFD, 10)  # either already is 3 or 4
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # close_fds=False keeps the dup2'ed fds 3 and 4 open; Python's own fds are not
            # inheritable, so nothing else leaks into chromium.
            preexec_fn=wire_pipes, close_fds=False,
        )
        os.close(to_read)
        os.close(to_write)
        pipe = _Pipe(process, to_browser, from_browser)
        try:
            return _inspect(pipe, url, screenshot, width, height, full_page, timeout)
        finally:
            with contextlib.suppress(KilnError, OSError):
                pipe.send("Browser.close", timeout=5)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            os.close(to_browser)
            os.close(from_browser)


def _inspect(pipe: _Pipe, url: str, screenshot: str | os.PathLike | None, width: int, height: int,
             full_page: bool, timeout: float) -> PageCheck:
    target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
    pipe.events.clear()
    pipe.send("Page.navigate", {"url": url}, session=session, timeout=timeout)
    pipe.wait_for("Page.loadEventFired", timeout=timeout)
    info = pipe.send("Runtime.evaluate", {"expression": INSPECT_JS, "returnByValue": True}, session=session)
    check = PageCheck(info=info.get("result", {}).get("value", {}))
    if screenshot:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": width, "height": check.info.get("height", height),
                                "scale": 1})
        data = pipe.send("Page.captureScreenshot", params, session=session, timeout=timeout)["data"]
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        Path(screenshot).write_bytes(base64.b64decode(data))
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            check.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            check.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            check.console_errors.append(params["entry"].get("text", ""))
        elif method == "Network.loadingFailed":
            check.failed_requests.append(params.get("errorText", ""))
        elif method == "Network.requestWillBeSent":
            request_url = params.get("request", {}).get("url", "")
            if not request_url.startswith(("data:", "about:", url)):
                check.outside_requests.append(request_url[:120])
    return check
