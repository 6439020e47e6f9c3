"""Headless Chromium driven over the Chrome DevTools Protocol: a real browser for real pages.

`Chromium` starts Debian's chromium with `--remote-debugging-port=0`.  Chromium picks the port
itself and writes it to `DevToolsActivePort` in its profile folder.  We ask its HTTP endpoint
for the page's WebSocket and send DevTools commands over it (websocket-client), one at a time:
navigate, screenshot, evaluate JavaScript, and input events that the page receives exactly as
if a person pressed a key.  Of the events the page sends, only their names are kept, until
`wait_for_event` finds the one it waits for.

Keys go in as DOM key events with a `key` and a physical `code`, the way a US keyboard sends
them.  noVNC tracks modifiers by code and turns each event into an X keysym.  `KEYS` names the
few non-character keys the tests press; characters map to their own key.
"""

import base64
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import websocket

import peers

NOVNC_PAGE = Path("/usr/share/novnc/vnc.html")
BROWSER_URL = re.compile(r"vncterm: browser console at (https?://\S+)")
FIRST_PICTURE = 40  # seconds for the page to load, connect and draw, generous for a loaded machine
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0"]

# DOM key name -> (code, Windows virtual key code); CDP fills in keyCode from the latter.
KEYS = {
    "Enter": ("Enter", 13), "Backspace": ("Backspace", 8), "Tab": ("Tab", 9),
    "Control": ("ControlLeft", 17), "Alt": ("AltLeft", 18),
}
MODIFIER_BITS = {"Alt": 1, "Control": 2}
TEXT_KEYS = {"Enter": "\r", "Tab": "\t"}


def key_code(key):
    """(code, virtual key code) for a DOM key: a KEYS name or one character of a US layout."""
    if key in KEYS:
        return KEYS[key]
    if key.isascii() and key.isalpha():
        return f"Key{key.upper()}", ord(key.upper())
    if key.isdigit():
        return f"Digit{key}", ord(key)
    if key == " ":
        return "Space", 32
    raise ValueError(f"no US keyboard code for {key!r} in this helper")


class Chromium:
    """One headless Chromium with one page, driven by DevTools commands."""

    def __init__(self, folder, profile, size=(1100, 900)):
        self.log_path = folder / "chromium.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["chromium", *FLAGS, f"--user-data-dir={profile}",
                 f"--window-size={size[0]},{size[1]}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            self.socket = websocket.create_connection(
                self._page_socket(profile / "DevToolsActivePort"), timeout=30,
                suppress_origin=True)
        except BaseException:
            peers.stop_process(self.proc)
            raise
        self.next_id = 0
        self.events = []
        self.modifiers = 0

    def _page_socket(self, port_file, timeout=30):
        """The DevTools WebSocket address of the page Chromium opened."""
        if not peers.wait_until(port_file.exists, timeout):
            raise AssertionError(f"chromium wrote no {port_file.name}; see {self.log_path}")
        port = int(peers.wait_until(lambda: port_file.read_text().split("\n")[0], timeout))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def call(self, method, **params):
        """Send one DevTools command and return its result; raise on a DevTools error."""
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.next_id:
                break
            self.events.append(reply.get("method"))
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def wait_for_event(self, method):
        """Read until the page sends event `method` (or has sent it since the last wait)."""
        while method not in self.events:
            self.events.append(json.loads(self.socket.recv()).get("method"))
        self.events.clear()

    def open(self, url):
        """Load url and wait until the page has loaded."""
        self.call("Page.enable")
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression} threw {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path):
        """Save what the page shows now as PNG at path; return it as an RGB image."""
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot")["data"]))
        return peers.load_rgb(path)

    def click(self, element_id, timeout=10):
        """Click the middle of an element's visible part, as a mouse does, once it is still."""
        where = ("(() => { const e = document.getElementById('%s');"
                 " if (!e.checkVisibility({opacityProperty: true, visibilityProperty: true}))"
                 " return null; const r = e.getBoundingClientRect();"
                 " const left = Math.max(r.left, 0), right = Math.min(r.right, innerWidth);"
                 " const top = Math.max(r.top, 0), bottom = Math.min(r.bottom, innerHeight);"
                 " return [(left + right) / 2, (top + bottom) / 2]; })()" % element_id)
        spots = [None]

        def still():
            """Panels slide in: the element is in place when it is where it was last time."""
            spots.append(self.evaluate(where))
            return spots[-1] is not None and spots[-1] == spots[-2]

        if not peers.wait_until(still, timeout):
            raise AssertionError(f"#{element_id} never showed still on the page")
        x, y = spots[-1]
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def key_down(self, key):
        code, virtual = key_code(key)
        self.modifiers |= MODIFIER_BITS.get(key, 0)
        event = {"type": "keyDown", "key": key, "code": code, "windowsVirtualKeyCode": virtual,
                 "modifiers": self.modifiers}
        text = TEXT_KEYS.get(key, key if len(key) == 1 else "")
        if text and not self.modifiers & (MODIFIER_BITS["Control"] | MODIFIER_BITS["Alt"]):
            event["text"] = text
        self.call("Input.dispatchKeyEvent", **event)

    def key_up(self, key):
        code, virtual = key_code(key)
        self.modifiers &= ~MODIFIER_BITS.get(key, 0)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=code,
                  windowsVirtualKeyCode=virtual, modifiers=self.modifiers)

    def press(self, *keys):
        """Press the keys in order and release them in reverse: press('Control', 'Alt', '7')."""
        for key in keys:
            self.key_down(key)
        for key in reversed(keys):
            self.key_up(key)

    def type(self, text):
        """Type text one key at a time (letters, digits and spaces)."""
        for character in text:
            self.press(character)

    def insert_text(self, text):
        """Put text into the focused text field, as a paste or an input method does."""
        self.call("Input.insertText", text=text)

    def close(self):
        self.socket.close()
        peers.stop_process(self.proc)


def require_browser():
    for peer in ("chromium", "websockify"):
        peers.require(peer)
    peers.require("novnc", installed=NOVNC_PAGE.is_file())


def printed(server, pattern):
    """The first group of the first stdout line of vncterm's that matches pattern."""
    for line in server.output:
        if match := pattern.fullmatch(line):
            return match[1]
    raise AssertionError(f"vncterm printed no line like {pattern.pattern!r}\n{server.report()}")
