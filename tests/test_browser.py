"""The browser console: `--web` serves noVNC, and a real headless Chromium uses it.

Each test starts vncterm with `--web 0` on a console that paints coloured blocks with its own
printf (peers.py), then hands the pty to `cat > typed.txt`.  The browser opens the URL vncterm
printed, exactly as a person would: nothing is told to noVNC but that URL.  The evidence is
what the page shows (DevTools screenshots, read with peers.py's block checks) and what the pty
receives (the typed file), never anything vncterm says about itself.

* The page shows the console, over plain HTTP and over TLS (a throw-away self-signed
  certificate; with `--web-cert`, websockify refuses anything but TLS, so a picture proves
  that both the page and the WebSocket were encrypted).  When vncterm stops, the web port
  closes with it: websockify was its child.
* Keys typed into the page reach the pty: letters, Return, BackSpace, Tab, a Ctrl combination
  (Ctrl-U kills the line), and text put into noVNC's clipboard panel, once Ctrl-Alt-V pastes it.
* The clipboard panel both ways: a mouse selection on the console shows up in it, and what is
  put into it is kept, never typed by itself.
* The guest desktop: TigerVNC's Xvnc reverse-connects (`vncconfig -connect`), the page switches
  to it, and Ctrl-Alt-1 / Ctrl-Alt-7 switch back and forth.  These are the hotkeys a browser
  passes through; Ctrl-Alt-F1..F7 belong to the desktop the browser runs on.

Chromium is driven over the DevTools protocol (chromium.py): DOM key events with real key
codes, as a keyboard sends them, so noVNC's own keyboard handling is part of what is tested.
"""

import os
import re
import signal
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image, ImageChops

import peers
import web
from chromium import BROWSER_URL, FIRST_PICTURE, printed, require_browser
from peers import Block

PATTERN = (Block("red", 2, 1), Block("green", 72, 1), Block("blue", 2, 19))
TEXT = (r"\033[6;4H\033[1;37mvncterm\033[0m in a browser: noVNC through websockify, one flag"
        r"\033[8;4H$ \033[1mvncterm.py --web 6080\033[0m"
        r"\033[9;4Hvncterm: browser console at \033[4mhttp://127.0.0.1:6080/vnc.html"
        r"?autoconnect=1\033[0m"
        r"\033[11;4H\033[34mdrwxr-xr-x\033[0m 2 root root 4096 \033[1;34mbin\033[0m  "
        r"\033[32m-rwxr-xr-x\033[0m 1 root root 9236 \033[1;32mvncterm.py\033[0m"
        r"\033[13;4H")
REVERSE = re.compile(r"vncterm: guest desktops connect to 127\.0\.0\.1:(\d+)")
DESKTOP_SIZE = (800, 600)
ROOT = "#ff8000"
ROOT_RGB = (255, 128, 0)
COLOUR_TOLERANCE = 40
CONTROL_BAR_OPEN = "document.getElementById('noVNC_control_bar').classList.contains('noVNC_open')"
CANVAS = ("(() => { const r = document.querySelector('#noVNC_container canvas')"
          ".getBoundingClientRect(); return [r.left, r.top]; })()")
CELL = (8, 16)  # vncterm's default console font


def start_console(start_vncterm, folder, options=()):
    """vncterm --web 0 on a console that paints PATTERN and TEXT, then cats into typed.txt."""
    script = folder / "console.sh"
    script.write_text(f"{peers.paint_command(PATTERN)}\nprintf '{TEXT}'\n"
                      f"exec cat > {folder / 'typed.txt'}\n")
    return start_vncterm(f"sh {script}", options=("--web", "0", *options))


def open_console(browser, server, artifacts, name="console"):
    """Open the URL vncterm printed and wait until the page shows the console."""
    url = printed(server, BROWSER_URL)
    browser.open(url)
    errors = peers.until_no_errors(lambda: peers.screenshot_errors(
        browser.screenshot(artifacts / f"{name}.png"), PATTERN), timeout=FIRST_PICTURE)
    assert not errors, "\n".join(errors)
    return url


def still_screenshot(browser, path, timeout=10):
    """A screenshot once two taken in a row are the same: nothing on the page is moving."""
    shots = [browser.screenshot(path)]

    def still():
        shots.append(browser.screenshot(path))
        return ImageChops.difference(shots[-2], shots[-1]).getbbox() is None

    assert peers.wait_until(still, timeout, interval=0.3), "the page never stopped moving"
    return shots[-1]


def refuses_connections(port):
    """True when nothing accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_page_shows_the_console(start_vncterm, browser, artifacts, tmp_path, scheme):
    options = ()
    if scheme == "https":
        cert, key = peers.self_signed_certificate(tmp_path)
        options = ("--web-cert", str(cert), "--web-key", str(key))
        # Self-signed: no authority vouches for it, so the browser is told to accept it.
        browser.call("Security.setIgnoreCertificateErrors", ignore=True)
    server = start_console(start_vncterm, tmp_path, options)
    url = open_console(browser, server, artifacts, f"novnc-{scheme}")
    assert url.startswith(f"{scheme}://127.0.0.1:")
    assert browser.evaluate("document.documentElement.classList.contains('noVNC_connected')")
    # The README's picture (docs/browser.png): the page once noVNC has put its bars away.
    assert peers.wait_until(lambda: not browser.evaluate(CONTROL_BAR_OPEN), 10)
    assert peers.screenshot_errors(still_screenshot(browser, artifacts / "browser.png"),
                                   PATTERN) == []
    server.stop()
    assert refuses_connections(urlsplit(url).port)


def paste(browser, text):
    """Paste as a person does in noVNC: into the clipboard panel of its control bar."""
    # noVNC shows its control bar when it connects and hides it two seconds later: wait for
    # that, so that the click on the handle opens it rather than closing it.
    assert peers.wait_until(lambda: not browser.evaluate(CONTROL_BAR_OPEN), 10)
    browser.click("noVNC_control_bar_handle")
    browser.click("noVNC_clipboard_button")
    browser.click("noVNC_clipboard_text")
    browser.insert_text(text)
    # Closing the panel takes the focus from the text field, whose change event makes noVNC
    # send the text.
    browser.click("noVNC_clipboard_button")


def console_mouse(browser, kind, column, row):
    """A left-button mouse event at the middle of a console cell in noVNC's canvas, once no
    panel (sliding in or out) covers that spot."""
    left, top = browser.evaluate(CANVAS)
    width, height = CELL
    x, y = left + column * width + width / 2, top + row * height + height / 2
    # While a button is held, noVNC lays an element over the page that captures the mouse.
    on_canvas = (f"['CANVAS', 'noVNC_mouse_capture_elem'].some(name => "
                 f"[document.elementFromPoint({x}, {y}).tagName, "
                 f"document.elementFromPoint({x}, {y}).id].includes(name))")
    assert peers.wait_until(lambda: browser.evaluate(on_canvas), 10), "a panel covers the console"
    browser.call("Input.dispatchMouseEvent", type=kind, button="left", clickCount=1, x=x, y=y)


def test_keys_and_paste_reach_the_pty(start_vncterm, browser, artifacts, tmp_path):
    server = start_console(start_vncterm, tmp_path)
    open_console(browser, server, artifacts)
    browser.type("echo hello world")
    browser.press("Enter")
    browser.type("hellp")
    browser.press("Backspace")
    browser.type("o")
    browser.press("Tab")
    browser.type("x")
    browser.press("Enter")
    browser.type("oops")
    browser.press("Control", "u")
    browser.type("fine")
    browser.press("Enter")
    paste(browser, "pasted from the panel\n")
    for kind in ("mousePressed", "mouseReleased"):  # the keyboard's focus back on the console
        console_mouse(browser, kind, 40, 15)
    browser.press("Control", "Alt", "v")
    expected = "echo hello world\nhello\tx\nfine\npasted from the panel\n"
    typed = tmp_path / "typed.txt"
    peers.wait_until(lambda: peers.read_text(typed) == expected)
    assert peers.read_text(typed) == expected


def test_vnc_authentication_through_the_page(start_vncterm, browser, artifacts, tmp_path):
    """noVNC asks for the password vncterm's VNC authentication wants; a wrong one is refused."""
    secret = tmp_path / "password"
    secret.write_text("swordfsh\n")
    secret.chmod(0o600)
    server = start_console(start_vncterm, tmp_path, ("--password-file", str(secret)))
    browser.open(printed(server, BROWSER_URL))
    for attempt in ("wrong123", "swordfsh"):
        browser.click("noVNC_password_input")
        browser.insert_text(attempt)
        browser.click("noVNC_credentials_button")
        if attempt.startswith("wrong"):
            assert peers.wait_until(lambda: "authentication failed" in peers.read_text(
                server.log_path), 10), server.report()
            browser.open(printed(server, BROWSER_URL))
    errors = peers.until_no_errors(lambda: peers.screenshot_errors(
        browser.screenshot(artifacts / "novnc-password.png"), PATTERN), timeout=FIRST_PICTURE)
    assert not errors, "\n".join(errors)


def test_websockify_is_started_again_when_it_dies(start_vncterm, tmp_path):
    """web.py supervises its child: killed, it comes back on the same port within seconds."""
    require_browser()
    server = start_console(start_vncterm, tmp_path)
    url = printed(server, BROWSER_URL)
    assert page_loads(url)
    (child,) = websockify_children(server.proc.pid)
    os.killpg(child, signal.SIGKILL)
    assert peers.wait_until(
        lambda: websockify_children(server.proc.pid) not in ([], [child]), 15)
    assert peers.wait_until(lambda: page_loads(url), 15)
    assert "websockify exited with status -9; starting it again" in peers.read_text(
        server.log_path)


def websockify_children(pid):
    """The process ids of pid's websockify children, from /proc."""
    tasks = Path(f"/proc/{pid}/task")
    children = [child for task in tasks.iterdir()
                for child in (task / "children").read_text().split()]
    return [int(child) for child in children if b"websockify" in command_line(child)]


def command_line(pid):
    """A process's command line, or b"" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def page_loads(url):
    """True when the URL's page comes back 200 with noVNC's page in it."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200 and b"noVNC" in reply.read()
    except OSError:
        return False


def test_missing_novnc_or_websockify_names_the_package(tmp_path, monkeypatch):
    with pytest.raises(OSError, match="install the Debian package novnc"):
        web.find_novnc(str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OSError, match="install the Debian package websockify"):
        web.websockify_command(tmp_path, ("127.0.0.1", 5900), None, None)


# --- The guest desktop -------------------------------------------------------------------------


@pytest.fixture
def guest(artifacts):
    """An Xvnc guest desktop painted ROOT, stopped at teardown."""
    for peer in ("Xvnc", "vncconfig", "xsetroot"):
        peers.require(peer)
    desktop = peers.Xvnc(artifacts, DESKTOP_SIZE, options=("-rfbport", "-1", "-SecurityTypes",
                                                           "None"))
    desktop.run("xsetroot", "-solid", ROOT)
    yield desktop
    desktop.stop()


def desktop_errors(image):
    """Errors unless the screenshot shows the whole desktop: a ROOT rectangle of its size."""
    red, green, blue = ImageChops.difference(image, Image.new("RGB", image.size, ROOT_RGB)).split()
    mask = ImageChops.lighter(ImageChops.lighter(red, green), blue).point(
        lambda v: 255 if v < COLOUR_TOLERANCE else 0)
    box = mask.getbbox()
    if box is None:
        return ["no root-coloured pixel in the page: the desktop is not shown"]
    size = (box[2] - box[0], box[3] - box[1])
    if size != DESKTOP_SIZE:
        return [f"the root colour covers {size}, the desktop is {DESKTOP_SIZE}"]
    if mask.crop(box).histogram()[255] < 0.95 * size[0] * size[1]:
        return ["the desktop's rectangle is not filled with the root colour"]
    return []


def console_errors(image):
    """Errors in the console's blocks and their black borders (the bottom row is the notice)."""
    region = peers.find_console(image, PATTERN[0])
    if region is None:
        return ["no solid red marker block in the page: the console is not shown"]
    if region[0] < 0 or region[1] < 0 or region[2] > image.width or region[3] > image.height:
        return [f"the console at {region} does not fit in the {image.width}x{image.height} page"]
    expected = {cell: "black" for block in PATTERN for cell in block.border()}
    expected.update({cell: block.colour for block in PATTERN for cell in block.cells()})
    errors = []
    for (col, row), colour in sorted(expected.items()):
        rgb = peers.cell_rgb(image, region, col, row)
        if peers.colour_name(rgb) != colour:
            errors.append(f"cell ({col},{row}): expected {colour}, got {rgb}")
    return errors


def test_page_follows_the_guest_desktop(start_vncterm, browser, guest, artifacts, tmp_path):
    server = start_console(start_vncterm, tmp_path)
    open_console(browser, server, artifacts)
    # vncconfig exits 0 whether or not the connection worked: the page is the evidence.
    guest.run("vncconfig", "-display", guest.display, "-connect",
              f"127.0.0.1:{printed(server, REVERSE)}")

    def look(check, name):
        return peers.until_no_errors(lambda: check(browser.screenshot(artifacts / f"{name}.png")))

    assert look(desktop_errors, "desktop") == []
    browser.press("Control", "Alt", "1")
    assert look(console_errors, "console-again") == []
    browser.press("Control", "Alt", "7")
    assert look(desktop_errors, "desktop-again") == []


CLIPBOARD_TEXT = "document.getElementById('noVNC_clipboard_text').value"
KEPT = re.compile(r"viewer \S+: clipboard of \d+ characters kept for pasting")


def test_clipboard_panel_both_ways(start_vncterm, browser, artifacts, tmp_path):
    """A drag across TEXT's first line puts it in noVNC's clipboard panel; text put into the
    panel is kept, not typed, until Ctrl-Alt-V types it (UTF-8: noVNC speaks the Extended
    Clipboard)."""
    server = start_console(start_vncterm, tmp_path, ("--verbose",))
    open_console(browser, server, artifacts)
    line = "vncterm in a browser: noVNC through websockify, one flag"
    for kind, column in (("mouseMoved", 3), ("mousePressed", 3), ("mouseMoved", 20),
                         ("mouseReleased", 3 + len(line) - 1)):
        console_mouse(browser, kind, column, 5)
    assert peers.wait_until(lambda: browser.evaluate(CLIPBOARD_TEXT) == line), (
        browser.evaluate(CLIPBOARD_TEXT))
    pasted = "from the panel: päste ☃\n"
    browser.evaluate(f"{CLIPBOARD_TEXT} = ''")
    paste(browser, pasted)
    assert peers.wait_until(lambda: KEPT.search(peers.read_text(server.log_path))), (
        server.report())
    typed = tmp_path / "typed.txt"
    assert peers.read_text(typed) == "", "the panel's text was typed by itself"
    for kind in ("mousePressed", "mouseReleased"):  # the keyboard's focus back on the console
        console_mouse(browser, kind, 40, 15)
    browser.press("Control", "Alt", "v")
    peers.wait_until(lambda: peers.read_text(typed) == pasted)
    assert peers.read_text(typed) == pasted
