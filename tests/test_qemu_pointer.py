"""QEMU's absolute pointer through the proxy, seen from inside the guest.

QEMU's VNC server takes absolute positions when the guest has an absolute pointer, and says so
with Pointer Type Change (-257, value 1); vncterm passes both on (RFC 6143 section 7.5.5 for the
PointerEvent itself).  The proof that the positions are the right ones is taken where they end
up: the test guest (qemuguest.tablet_init) gets QEMU's virtio tablet, loads the booted kernel's
virtio-input and evdev modules, and copies the tablet's event device to its second serial port,
one struct input_event (two 64-bit times, type, code, value) in hex a line.  QEMU scales a
position in 0..width to 0..0x7fff, so a value turned back into pixels must be where vncdotool,
a real viewer that knows nothing of -257, pointed.  Two positions far apart on both axes catch a
proxy that swaps, clips, offsets or turns the positions into motion.

Booting the guest takes a minute of software emulation; it is the only test of its kind.
"""

import struct

import pytest

from harness import Proxy, follow, leak_checked
from peers import wait_until as wait_for
from qemuguest import BOOT_TIMEOUT, TABLET, vga_options
from rawviewer import DESKTOP_SIZE, POINTER_TYPE_CHANGE, RAW

EV_ABS, ABS_X, ABS_Y = 3, 0, 1
ABS_MAX = 0x7FFF
INPUT_EVENT = struct.Struct("<qqHHi")  # struct input_event on x86-64


def transcript_words(path):
    return path.read_text(errors="replace").split() if path.exists() else []


def tablet_events(words):
    """(code, value) of each EV_ABS event among the hex lines of the transcript."""
    events = []
    for word in words:
        if len(word) == 2 * INPUT_EVENT.size and all(c in "0123456789abcdef" for c in word):
            _, _, kind, code, value = INPUT_EVENT.unpack(bytes.fromhex(word))
            if kind == EV_ABS:
                events.append((code, value))
    return events


def pointed_at(words, width, height):
    """Where the guest's tablet last was, in the desktop's pixels (None before both axes)."""
    latest = dict(tablet_events(words))
    if ABS_X not in latest or ABS_Y not in latest:
        return None
    return latest[ABS_X] * width / ABS_MAX, latest[ABS_Y] * height / ABS_MAX


def near(position, x, y):
    return position is not None and abs(position[0] - x) < 1 and abs(position[1] - y) < 1


@pytest.fixture
def proxy():
    yield from leak_checked(Proxy)


def test_a_real_viewers_pointer_lands_where_it_pointed_inside_the_guest(
        proxy, boot, tablet_initrd, vncdo_viewers, tmp_path):
    p = proxy()
    transcript = tmp_path / "ttyS1.txt"
    guest = boot([*vga_options(p.reverse_port, transcript), *TABLET], tablet_initrd)
    assert wait_for(lambda: p.server.desktop is not None, 30), guest.lines
    guest.cont()
    assert wait_for(lambda: {"vga-ready", "tablet-ready"} <= set(transcript_words(transcript)),
                    BOOT_TIMEOUT), transcript_words(transcript)
    told = p.viewer(RAW, DESKTOP_SIZE, POINTER_TYPE_CHANGE)
    told.request(incremental=False)
    assert follow(told, lambda c: [rect[0] for rect in c.rects
                                   if rect[4] == POINTER_TYPE_CHANGE][-1:] == [1]), told.rects
    width, height = told.width, told.height
    viewer = vncdo_viewers(p)

    def guest_pointer():
        return pointed_at(transcript_words(transcript), width, height)

    for x, y in ((width // 5, height * 3 // 4), (width * 3 // 4, height // 5)):
        viewer.do(f"mouseMove {x} {y}")
        assert wait_for(lambda x=x, y=y: near(guest_pointer(), x, y)), (x, y, guest_pointer())
