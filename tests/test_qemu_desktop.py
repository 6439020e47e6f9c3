"""The real device model: QEMU's own VNC server as the desktop, its keys exact.

QEMU (software emulation) boots test_guest.py's busybox guest with a VGA card. Its VNC server
dials the proxy's reverse port (`-vnc 127.0.0.1:PORT,reverse=on`), and INIT runs a shell on
tty1, the VGA console, besides the one on the serial port. What the VGA shell prints to its
second serial port lands in a file, so the test reads what the guest typed without reading
pixels.

The proof that scancodes pass through: a viewer that listed QEMU Extended Key Event (-258)
types a command whose letters carry a scancode and a keysym that disagree (the key "a" named
"q"). The guest's keyboard driver sees only scancodes, so it types what the scancodes say; had
the proxy sent keysyms, QEMU would have typed the keysyms. A second viewer with keysyms only
types on the same desktop. Caps Lock pressed as a scancode lights the guest's LED, which comes
back to the viewer as LED State (-261), and QEMU's Pointer Type Change (-257: its PS/2 mouse is
relative) reaches a viewer that listed it.  gtk-vnc's gvncviewer, TigerVNC's vncviewer and
noVNC in Chromium then type on the same VGA shell in scancodes, noVNC with a key whose code and
name disagree, as AZERTY's do.
"""

import subprocess

import pytest

import peers
from chromium import NOVNC_PAGE
from harness import Proxy, follow, leak_checked
from peers import wait_until as wait_for
from qemuguest import BOOT_TIMEOUT, vga_options
from rawviewer import DESKTOP_SIZE, LED_STATE, POINTER_TYPE_CHANGE, QEMU_EXTENDED_KEY_EVENT, RAW

SHIFT_L, RETURN = 0xFFE1, 0xFF0D
SC_SHIFT_L, SC_CAPS_LOCK, CAPS_LOCK = 0x2A, 0x3A, 0xFFE5
# XT set-1 make codes of a US keyboard, for what the tests type.
US = {**dict(zip("qwertyuiop", range(0x10, 0x1A), strict=True)),
      **dict(zip("asdfghjkl", range(0x1E, 0x27), strict=True)),
      **dict(zip("zxcvbnm", range(0x2C, 0x33), strict=True)),
      **dict(zip("1234567890", range(0x02, 0x0C), strict=True)),
      " ": 0x39, ".": 0x34, "/": 0x35, "\n": 0x1C}
SHIFTED = {">": ".", "S": "s"}


@pytest.fixture
def proxy():
    yield from leak_checked(Proxy)


def strokes(text):
    """(keysym, scancode, shifted) for each character of `text` on a US keyboard."""
    for character in text:
        keysym = RETURN if character == "\n" else ord(character)
        yield keysym, US[SHIFTED.get(character, character)], character in SHIFTED


def type_scancodes(client, text, keysyms=None):
    """Type as QEMU Extended Key Events; `keysyms` renames characters in the keysym field."""
    keysyms = keysyms or {}
    for keysym, scancode, shifted in strokes(text):
        keysym = keysyms.get(keysym, keysym)
        if shifted:
            client.scancode(SHIFT_L, SC_SHIFT_L)
        client.scancode(keysym, scancode)
        client.scancode(keysym, scancode, down=False)
        if shifted:
            client.scancode(SHIFT_L, SC_SHIFT_L, down=False)


def type_keysyms(client, text):
    """Type as plain key events, Shift pressed as a keyboard would."""
    for keysym, _, shifted in strokes(text):
        if shifted:
            client.key(SHIFT_L)
        client.key(keysym)
        client.key(keysym, down=False)
        if shifted:
            client.key(SHIFT_L, down=False)


def transcript_lines(path):
    return path.read_text(errors="replace").split() if path.exists() else []


def test_qemu_vga_shell_types_scancodes_and_keysyms_and_lights_caps_lock(proxy, boot, tmp_path):
    p = proxy()
    transcript = tmp_path / "ttyS1.txt"
    guest = boot(vga_options(p.reverse_port, transcript))
    assert wait_for(lambda: p.server.desktop is not None, 30), guest.lines
    guest.cont()
    assert wait_for(lambda: "vga-ready" in transcript_lines(transcript), BOOT_TIMEOUT)
    scancodes = p.viewer(RAW, DESKTOP_SIZE, QEMU_EXTENDED_KEY_EVENT, LED_STATE,
                         POINTER_TYPE_CHANGE)
    keysyms = p.viewer(RAW, DESKTOP_SIZE)
    for client in (scancodes, keysyms):
        client.request(incremental=False)
    assert follow(scancodes, lambda c: any(rect[4] == QEMU_EXTENDED_KEY_EVENT
                                           for rect in c.rects))
    # QEMU's only pointer here is its PS/2 mouse, which is relative; the notice passes through.
    assert follow(scancodes, lambda c: [rect[0] for rect in c.rects
                                        if rect[4] == POINTER_TYPE_CHANGE] == [0])

    type_scancodes(scancodes, "echo ab >/dev/ttyS1\n", keysyms={ord("a"): ord("q"),
                                                                 ord("b"): ord("n")})
    assert wait_for(lambda: "ab" in transcript_lines(transcript)), transcript_lines(transcript)
    assert "qn" not in transcript_lines(transcript)

    type_keysyms(keysyms, "echo cd >/dev/ttyS1\n")
    assert wait_for(lambda: "cd" in transcript_lines(transcript)), transcript_lines(transcript)

    scancodes.scancode(CAPS_LOCK, SC_CAPS_LOCK)
    scancodes.scancode(CAPS_LOCK, SC_CAPS_LOCK, down=False)
    assert follow(scancodes, lambda c: c.leds and c.leds[-1] & 4), scancodes.leds
    assert keysyms.leds == []


# --- Real viewers: gtk-vnc and noVNC, each on a keyboard that is not the guest's --------------


def boot_vga_guest(p, boot, transcript):
    """A QEMU guest whose desktop is up behind the proxy and whose VGA shell has started."""
    guest = boot(vga_options(p.reverse_port, transcript))
    assert wait_for(lambda: p.server.desktop is not None, 30), guest.lines
    guest.cont()
    assert wait_for(lambda: "vga-ready" in transcript_lines(transcript), BOOT_TIMEOUT)
    return guest


def until_typed(type_line, transcript, word, attempts=6):
    """Type `echo WORD >/dev/ttyS1` (with type_line) until the guest has written WORD: the
    first attempts may go out before the viewer has connected."""
    for _ in range(attempts):
        type_line(f"\necho {word} >/dev/ttyS1\n")
        if wait_for(lambda: word in transcript_lines(transcript), 10):
            return True
    return False


# (program and its arguments before the server's address, the address, its window's class)
X_VIEWERS = {
    # gvncviewer only takes host:display, that is port 5900 + display.
    "gvncviewer": (["gvncviewer"], lambda port: f"127.0.0.1:{port - 5900}", "gvncviewer"),
    "vncviewer": (["vncviewer", "Shared=1"], lambda port: f"127.0.0.1::{port}", "TigerVNC"),
}


@pytest.mark.parametrize("name", X_VIEWERS)
def test_x_viewers_type_on_the_vga_shell_in_scancodes(proxy, boot, xvfb, tmp_path, name):
    """gtk-vnc and TigerVNC answer the invitation (-258) with scancodes; the proxy passes them
    on as they are, and the guest types the line.  (This Xvfb ignores keymap changes, so a
    swapped layout is proved with noVNC below, where the page chooses each key's code.)"""
    argv, address, window_class = X_VIEWERS[name]
    for peer in (argv[0], "xdotool"):
        peers.require(peer)
    p = proxy()
    transcript = tmp_path / "ttyS1.txt"
    boot_vga_guest(p, boot, transcript)
    desktop, passed = p.server.desktop, []
    forward = desktop.extended_key
    desktop.extended_key = lambda *key: (passed.append(key[:3]), forward(*key))
    xvfb.start([*argv, address(p.port)], name)
    window = xvfb.run("xdotool", "search", "--sync", "--onlyvisible", "--class",
                      window_class).split()[0]
    xvfb.run("xdotool", "windowfocus", "--sync", window)
    # Below gvncviewer's menu bar, whose "Send Key" menu would take the typing.
    xvfb.run("xdotool", "mousemove", "--window", window, "300", "250", "click", "1")

    def type_line(text):
        """xdotool types a newline as Linefeed: press Return instead."""
        for line in text.split("\n"):
            if line:
                xvfb.run("xdotool", "type", "--delay", "30", line)
            xvfb.run("xdotool", "key", "Return")

    assert until_typed(type_line, transcript, "gtk"), transcript_lines(transcript)
    assert {(ord("g"), 0x22, True), (ord("k"), 0x25, False), (RETURN, 0x1C, True)} <= set(passed)
    xvfb.screenshot(name)


DOM_CODES = {" ": ("Space", 32), ".": ("Period", 190), "/": ("Slash", 191),
             "\n": ("Enter", 13)}


def dom_key(browser, key, code, virtual, down, text=""):
    """One DOM key event with a `key` and a physical `code` of our choosing."""
    event = {"type": "keyDown" if down else "keyUp", "key": key, "code": code,
             "windowsVirtualKeyCode": virtual, "modifiers": browser.modifiers}
    if down and text:
        event["text"] = text
    browser.call("Input.dispatchKeyEvent", **event)


def browser_type(browser, text, keys=None):
    """Type on a US keyboard; `keys` names some keys otherwise (an AZERTY "q" on the US "a")."""
    keys = keys or {}
    for character in text:
        base = SHIFTED.get(character, character)
        code, virtual = DOM_CODES.get(base) or (
            (f"Key{base.upper()}", ord(base.upper())) if base.isalpha()
            else (f"Digit{base}", ord(base)))
        key = "Enter" if character == "\n" else keys.get(character, character)
        shifted = character in SHIFTED
        if shifted:
            browser.modifiers |= 8
            dom_key(browser, "Shift", "ShiftLeft", 16, True)
        dom_key(browser, key, code, virtual, True, "\r" if character == "\n" else key)
        dom_key(browser, key, code, virtual, False)
        if shifted:
            browser.modifiers &= ~8
            dom_key(browser, "Shift", "ShiftLeft", 16, False)





def test_novnc_on_an_azerty_keyboard_types_what_the_guest_keyboard_says(
        proxy, boot, browser, artifacts, tmp_path):
    """The page gets "q" from the key a US keyboard has "a" on (as AZERTY does): noVNC sends
    that key's scancode, so the guest, with its US layout, types "a"."""
    p = proxy()
    transcript = tmp_path / "ttyS1.txt"
    boot_vga_guest(p, boot, transcript)
    web_port = peers.free_port()
    websockify = subprocess.Popen(
        ["websockify", "--web", str(NOVNC_PAGE.parent), f"127.0.0.1:{web_port}",
         f"127.0.0.1:{p.port}"], stdin=subprocess.DEVNULL,
        stdout=open(artifacts / "websockify.log", "wb"), stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: peers.accepts(web_port)), "websockify did not start"
        browser.open(f"http://127.0.0.1:{web_port}/vnc.html?autoconnect=1&host=127.0.0.1"
                     f"&port={web_port}")
        assert until_typed(lambda text: browser_type(browser, text), transcript, "ok")
        browser_type(browser, "echo ab >/dev/ttyS1\n", keys={"a": "q", "b": "n"})
        assert wait_for(lambda: "ab" in transcript_lines(transcript)), \
            transcript_lines(transcript)
        assert "qn" not in transcript_lines(transcript)
        browser.screenshot(artifacts / "novnc.png")
    finally:
        peers.stop_process(websockify)





def test_qemu_absolute_pointer_notice_passes_through(proxy, boot, tmp_path):
    """With a USB tablet as its only pointer (no PS/2 mouse), QEMU wants absolute events, and
    says so to a viewer that listed -257.  (The guest has no USB driver, so where the pointer
    lands inside it is not seen.)"""
    p = proxy()
    transcript = tmp_path / "ttyS1.txt"
    guest = boot([*vga_options(p.reverse_port, transcript), "-machine", "i8042=off",
                  "-device", "qemu-xhci", "-device", "usb-tablet"])
    assert wait_for(lambda: p.server.desktop is not None, 30), guest.lines
    guest.cont()
    client = p.viewer(RAW, DESKTOP_SIZE, POINTER_TYPE_CHANGE)
    client.request(incremental=False)
    assert follow(client, lambda c: [rect[0] for rect in c.rects
                                     if rect[4] == POINTER_TYPE_CHANGE] == [1]), client.rects
