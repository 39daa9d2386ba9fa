"""A page checked in real headless Chromium over the DevTools protocol, on 127.0.0.1 only: console errors,
images and audio that do not load, and a full-page screenshot."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Evaluated in the page once it has loaded: waits for every <audio> to have its metadata (or fail), then says
# which images and audio did not resolve. An image that 404s is complete but has naturalWidth 0.
_MEDIA_CHECK = """(async () => {
  const audios = [...document.querySelectorAll('audio')];
  await Promise.all(audios.map(a => new Promise(done => {
    if (a.readyState >= 1 || a.error) return done();
    a.addEventListener('loadedmetadata', done, {once: true});
    a.addEventListener('error', done, {once: true});
    setTimeout(done, 15000);
    a.load();
  })));
  return JSON.stringify({
    images: [...document.images].map(i => ({src: (i.getAttribute('src') || '').slice(0, 120),
                                             ok: i.complete && i.naturalWidth > 0})),
    audios: audios.map(a => ({src: a.getAttribute('src') || '', ok: a.readyState >= 1 && !a.error})),
  });
})()"""


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    broken_audio: list[str] = field(default_factory=list)
    images: int = 0
    audios: int = 0
    screenshot: bytes = b""

    @property
    def problems(self) -> list[str]:
        return ([f"console: {e}" for e in self.console_errors] + [f"image: {s}" for s in self.broken_images]
                + [f"audio: {s}" for s in self.broken_audio])


class _DevTools:
    """Synchronous CDP calls on one page target; events that arrive meanwhile are kept in order."""

    def __init__(self, url: str, timeout: float):
        import websocket  # websocket-client (the `test` extra)

        # No Origin header: Chromium refuses DevTools websockets from an origin it was not told to allow.
        self.ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.events: list[dict] = []
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(json.loads(self.ws.recv()))

    def close(self) -> None:
        self.ws.close()


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
    return out


def _devtools_port(profile: str, proc: subprocess.Popen, timeout: float) -> int:
    """Chromium writes the port it chose (--remote-debugging-port=0) to DevToolsActivePort in its profile."""
    marker = Path(profile) / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        time.sleep(0.2)
    raise TimeoutError("chromium did not open its DevTools port")


def check_page(path: str | Path, *, timeout: float = 90.0, width: int = 1200, scale: float = 1.0) -> PageCheck:
    """Open a local HTML file in headless Chromium and report what is broken on it, with a screenshot."""
    if not CHROMIUM:
        raise RuntimeError("chromium is not installed")
    profile = tempfile.mkdtemp(prefix="fluxmusic-chromium-")
    proc = subprocess.Popen([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                             "--no-default-browser-check", "--mute-audio", "--disable-extensions",
                             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", f"--window-size={width},900", "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _devtools_port(profile, proc, timeout)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
            target = next(t for t in json.load(r) if t.get("type") == "page")
        cdp = _DevTools(target["webSocketDebuggerUrl"], timeout)
        try:
            for domain in ("Runtime", "Log", "Page"):
                cdp.call(f"{domain}.enable")
            cdp.call("Page.navigate", url=Path(path).resolve().as_uri())
            cdp.wait_for("Page.loadEventFired", timeout)
            result = cdp.call("Runtime.evaluate", expression=_MEDIA_CHECK, awaitPromise=True, returnByValue=True)
            if "exceptionDetails" in result:
                raise RuntimeError(f"media check failed: {result['exceptionDetails']}")
            media = json.loads(result["result"]["value"])
            size = cdp.call("Page.getLayoutMetrics")["cssContentSize"]
            shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": scale})
            cdp.call("Runtime.evaluate", expression="1")      # flush events that arrived after the checks
            return PageCheck(console_errors=_errors(cdp.events),
                             broken_images=[m["src"] for m in media["images"] if not m["ok"]],
                             broken_audio=[m["src"] for m in media["audios"] if not m["ok"]],
                             images=len(media["images"]), audios=len(media["audios"]),
                             screenshot=base64.b64decode(shot["data"]))
        finally:
            cdp.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
