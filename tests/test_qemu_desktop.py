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
back to the viewer as LED State (-261).
"""

import pytest

import test_guest
from peers import wait_until as wait_for
from rawviewer import DESKTOP_SIZE, LED_STATE, QEMU_EXTENDED_KEY_EVENT, RAW
from test_guest import BOOT_TIMEOUT, vga_options
from test_server import leak_checked
from test_vncproxy import Proxy, follow

initrd, boot = test_guest.initrd, test_guest.boot  # the guest's fixtures, shared

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
    scancodes = p.viewer(RAW, DESKTOP_SIZE, QEMU_EXTENDED_KEY_EVENT, LED_STATE)
    keysyms = p.viewer(RAW, DESKTOP_SIZE)
    for client in (scancodes, keysyms):
        client.request(incremental=False)
    assert follow(scancodes, lambda c: any(rect[4] == QEMU_EXTENDED_KEY_EVENT
                                           for rect in c.rects))

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
