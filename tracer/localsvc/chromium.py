"""Debian's headless Chromium, driven over the DevTools protocol: open a page, read what it logged
and requested, evaluate JavaScript in it, take a screenshot. For the tests of the HTML reports.

The browser runs with a fresh profile, bound to loopback on a free debugging port, with background
networking and component updates off (it must make no request of its own), and is stopped, with its
process group, by whoever started it. The DevTools WebSocket is spoken here with the standard
library (RFC 6455 text frames, client-masked), so the tests need no WebSocket package.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlparse

from tracer.localsvc.base import ServiceError, _Process, free_port, wait_until

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--no-default-browser-check", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--hide-scrollbars")


def chromium_binary() -> str:
    """Debian's chromium (``MSGTRACE_CHROMIUM`` overrides); ServiceError when there is none."""
    for cand in (os.environ.get("MSGTRACE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise ServiceError("chromium not found: apt-get install chromium (or set MSGTRACE_CHROMIUM)")


class _WebSocket:
    """A minimal client WebSocket for the DevTools protocol: text messages only."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ServiceError("chromium closed the DevTools connection during the handshake")
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n", 1)[0]:
            raise ServiceError(f"DevTools handshake refused: {status[:80]!r}")
        self.buf = rest

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ServiceError("chromium closed the DevTools connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + struct.pack("!H", n) if n < 65536 else
                                bytes([0x80 | 127]) + struct.pack("!Q", n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def recv(self) -> str:
        parts: list[bytes] = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            op = b0 & 0x0F
            if op == 0x8:
                raise ServiceError("chromium closed the DevTools connection")
            if op == 0x9:  # ping: answer with a pong
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                continue
            if op in (0x1, 0x2, 0x0):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass(slots=True)
class PageLog:
    """What a page did while it was open."""

    console: list[dict[str, Any]] = field(default_factory=list)  # Runtime.consoleAPICalled
    exceptions: list[dict[str, Any]] = field(default_factory=list)  # Runtime.exceptionThrown
    log_entries: list[dict[str, Any]] = field(default_factory=list)  # Log.entryAdded
    requests: list[str] = field(default_factory=list)  # Network.requestWillBeSent URLs
    failed: list[dict[str, Any]] = field(default_factory=list)  # Network.loadingFailed

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries, as text."""
        out = [" ".join(str(a.get("value", a.get("description", ""))) for a in c.get("args", []))
               for c in self.console if c.get("type") in ("error", "assert")]
        out += [x.get("exceptionDetails", {}).get("text", "exception") for x in self.exceptions]
        out += [f"{x.get('entry', {}).get('source')}: {x.get('entry', {}).get('text')}" for x in self.log_entries
                if x.get("entry", {}).get("level") == "error"]
        return out


class Page:
    """One tab, over its DevTools WebSocket."""

    def __init__(self, ws_url: str) -> None:
        self.ws = _WebSocket(ws_url)
        self.next_id = 0
        self.log = PageLog()
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise ServiceError(f"DevTools {method}: {msg['error'].get('message')}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self._event(msg)
        raise TimeoutError(f"DevTools {method}: no answer in {timeout:.0f} s")

    def _event(self, msg: dict[str, Any]) -> None:
        m, p = msg.get("method"), msg.get("params", {})
        self.events.append(msg)
        if m == "Runtime.consoleAPICalled":
            self.log.console.append(p)
        elif m == "Runtime.exceptionThrown":
            self.log.exceptions.append(p)
        elif m == "Log.entryAdded":
            self.log.log_entries.append(p)
        elif m == "Network.requestWillBeSent":
            self.log.requests.append(p.get("request", {}).get("url", ""))
        elif m == "Network.loadingFailed":
            self.log.failed.append(p)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for msg in self.events:
            if msg.get("method") == method:
                return msg
        deadline = time.monotonic() + timeout
        self.ws.sock.settimeout(timeout)
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self._event(msg)
            if msg.get("method") == method:
                found: dict[str, Any] = msg
                return found
        raise TimeoutError(f"no {method} in {timeout:.0f} s")

    def open(self, url: str, timeout: float = 30.0) -> None:
        """Navigate and wait for the load event."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", timeout)

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise ServiceError(f"evaluate failed: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def screenshot(self, path: str | Path, full_page: bool = True) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics").get("cssContentSize") or {}
            w, h = int(size.get("width", 1000)), int(min(size.get("height", 1000), 16000))
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        Path(path).write_bytes(data)
        return data

    def close(self) -> None:
        self.ws.close()


class Chromium(_Process):
    """A headless Chromium of our own: ``with Chromium() as c: page = c.page(); page.open(url)``."""

    def __init__(self, workdir: str | None = None, binary: str | None = None, window: str = "1100,900") -> None:
        self.binary = binary or chromium_binary()
        self._own = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="msgtrace-chromium-")
        self.port = 0
        self.window = window

    def start(self, timeout: float = 30.0) -> Self:
        self.port = free_port()
        profile = Path(self.workdir) / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        argv = [self.binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
                f"--remote-debugging-port={self.port}", f"--window-size={self.window}", "about:blank"]
        self._spawn(argv, str(Path(self.workdir) / "chromium.log"))
        try:
            wait_until(lambda: self.running and self._json("/json/version"), timeout, "chromium's DevTools endpoint")
        except TimeoutError:
            tail = self.log_tail()
            self.stop()
            raise ServiceError(f"chromium did not start: {tail[-500:]}") from None
        return self

    def _json(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=5) as r:  # loopback only
            return json.loads(r.read().decode())

    def page(self) -> Page:
        """A new tab (its WebSocket)."""
        target = self._json("/json/new?about:blank", method="PUT")
        return Page(target["webSocketDebuggerUrl"])

    def stop(self, timeout: float = 5.0) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)  # the browser and its renderers: our own process group
            except ProcessLookupError:
                pass
        super().stop(timeout)
        if p is not None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._own:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
