"""Open a page in headless Chromium (Debian's /usr/bin/chromium) and report what a person would see.

Speaks the Chrome DevTools Protocol over `--remote-debugging-pipe` (NUL-separated JSON on fds 3 and 4), so
it needs no driver package, no browser download and no network port.
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

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
IMAGES = "JSON.stringify(Array.from(document.images, i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})))"


@dataclass
class PageView:
    images: list[dict]  # every <img>: alt, complete, naturalWidth (0 = did not load)
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, failed loads
    title: str = ""


class _Pipe:
    """One CDP connection: `call` sends a command and returns its result, collecting events meanwhile."""

    def __init__(self, write_fd: int, read_fd: int, timeout: float) -> None:
        self.write_fd, self.read_fd, self.timeout = write_fd, read_fd, timeout
        self.buffer, self.events, self.next_id = b"", [], 0

    def send(self, method: str, session: str | None = None, **params) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        return self.next_id

    def call(self, method: str, session: str | None = None, **params) -> dict:
        wanted = self.send(method, session, **params)
        reply = self._until(lambda m: m.get("id") == wanted, method)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str) -> dict:
        seen = next((e for e in self.events if e["method"] == method), None)
        return seen or self._until(lambda m: m.get("method") == method, method)

    def _until(self, done, what: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if done(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {what} within {self.timeout} s")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited while waiting for {what}")
            self.buffer += chunk


def open_page(path: Path | str, screenshot: Path | None = None, width: int = 1280, timeout: float = 60,
              ready: str | None = None, script: str | None = None, height: int = 900) -> PageView:  # fmt: skip
    """Load `path` from file:// (or a URL: `http://...`), wait for its load event, and read its images and errors
    (+ a full-page PNG). For a page that renders after loading (a web app), `ready` is a JavaScript expression
    polled until true first, and `script` JavaScript run once then (a click), a second before the screenshot."""
    url = path if isinstance(path, str) and "://" in path else Path(path).resolve().as_uri()
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def wire_fds():  # in the child: Chromium reads commands on fd 3 and writes replies on fd 4
        commands = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # copies above 4 first: the pipes may sit on 3/4
        replies = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.dup2(commands, 3)  # dup2 makes them inheritable
        os.dup2(replies, 4)

    with tempfile.TemporaryDirectory() as profile:
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run"]
        browser = subprocess.Popen(
            [CHROMIUM, *args, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds,
            close_fds=False,  # keep the inheritable fds 3 and 4 made by wire_fds (Python's own fds are not inheritable)
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(to_browser_w, from_browser_r, timeout)
        try:
            return _inspect(pipe, url, screenshot, width, height, ready, script)
        finally:
            with contextlib.suppress(OSError):
                pipe.send("Browser.close")
            try:
                browser.wait(timeout=10)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait()
            os.close(to_browser_w)
            os.close(from_browser_r)


def _inspect(pipe: _Pipe, url: str, screenshot: Path | None, width: int, height: int, ready: str | None,
             script: str | None) -> PageView:  # fmt: skip
    target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
    session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        pipe.call(f"{domain}.enable", session)
    pipe.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1,
              mobile=False)  # fmt: skip
    pipe.call("Page.navigate", session, url=url)
    pipe.wait_event("Page.loadEventFired")
    deadline = time.monotonic() + pipe.timeout
    while ready and not pipe.call("Runtime.evaluate", session, expression=f"!!({ready})")["result"]["value"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page at {url} was not ready ({ready}) within {pipe.timeout} s")
        time.sleep(0.2)
    if script:
        pipe.call("Runtime.evaluate", session, expression=script)
        time.sleep(1)
    images = json.loads(
        pipe.call("Runtime.evaluate", session, expression=IMAGES, returnByValue=True)["result"]["value"]
    )
    title = pipe.call("Runtime.evaluate", session, expression="document.title", returnByValue=True)["result"]["value"]
    if screenshot is not None:
        size = pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = pipe.call("Page.captureScreenshot", session, format="png", clip=clip, captureBeyondViewport=True)
        Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
    return PageView(images, [_error(e) for e in pipe.events if _error(e)], title)


def _error(event: dict) -> str | None:
    """The text of an event that is an error a person would see in the console, else None."""
    params = event.get("params", {})
    if event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
        return " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
    if event["method"] == "Runtime.exceptionThrown":
        return params["exceptionDetails"].get("text", "uncaught exception")
    if event["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
        return params["entry"].get("text", "error")
    return None
