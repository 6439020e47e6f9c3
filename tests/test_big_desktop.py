"""A legal big desktop with real viewers: 16 M pixels of noise must not drop a viewer that reads.

A guest's desktop may be as big as the caps allow (4096x4096).  A frame of noise that size is
64 MiB in Raw and not much less in any encoding, far more than a viewer may leave unread
(updates.HARD_OUTBOX); vncterm sends it in bands as the viewer reads, so TigerVNC's vncviewer,
which reads promptly, must stay connected, show the desktop, follow a second whole frame, and
still reach the console with the console hotkey.

The guest is scripted (tests/bigdesktop.py), so the test knows the picture: noise with a
solid marker block in the top-left corner, whose colour changes from frame to frame.  The
viewer runs under Xvfb and is read back by screenshot; the marker is found by colour with a
tolerance wide enough for JPEG.  Xvfb's keymap turns Ctrl-Alt-F1 into a VT switch that never
reaches the viewer as F1, so the viewer goes to the console with the Ctrl-Alt-1 alternate.
"""

import re

import pytest
from PIL import ImageChops, ImageFilter

import peers
from bigdesktop import NoiseGuest, reverse_port
from peers import Block

PATTERN = (Block("red", 2, 1), Block("green", 72, 1), Block("blue", 2, 19))
TOP_CORNERS = [(0, 0), (peers.COLUMNS - 1, 0)]
MARKER = 200
FIRST, SECOND = (255, 128, 0), (0, 192, 192)
TOLERANCE = 48
ARRIVED = re.compile(r"guest desktop \S+ connected, 4096x4096")
DROPPED = re.compile(r"viewer \S+: gone")
FRAME_WAIT = 120.0


def marker_errors(image, colour):
    """Errors unless a solid MARKER x MARKER block of colour shows, with noise beside it."""
    masks = [channel.point(lambda v, c=c: 255 if abs(v - c) <= TOLERANCE else 0)
             for channel, c in zip(image.split(), colour, strict=True)]
    mask = ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2])
    # Noise has pixels of every colour, but never a solid 5x5 patch: erode them away.
    box = mask.filter(ImageFilter.MinFilter(5)).getbbox()
    if box is None:
        return [f"no solid patch of the marker colour {colour}"]
    left, top, right, bottom = box
    if not all(MARKER - 4 <= side <= MARKER for side in (right - left, bottom - top)):
        return [f"the marker colour covers {right - left}x{bottom - top} at {box[:2]}"]
    beside = image.crop((right, top, min(right + MARKER, image.width), bottom))
    if len(beside.getcolors(1 << 16) or range(1 << 16)) < 1000:
        return ["no noise beside the marker"]
    return []


def press_in_viewer(xvfb, keys):
    """Press keys in the vncviewer window (focused and clicked first: there is no WM)."""
    window = xvfb.run("xdotool", "search", "--sync", "--onlyvisible", "--class",
                      "TigerVNC").split()[0]
    xvfb.run("xdotool", "windowfocus", "--sync", window)
    xvfb.run("xdotool", "mousemove", "--window", window, "5", "5", "click", "1")
    xvfb.run("xdotool", "key", keys)


@pytest.mark.parametrize("options", [("PreferredEncoding=Tight", "QualityLevel=6"),
                                     ("PreferredEncoding=Raw",)], ids=["tight-jpeg", "raw"])
def test_tigervnc_stays_on_a_4096x4096_desktop_of_noise(start_vncterm, xvfb, tmp_path,
                                                        options):
    for peer in ("vncviewer", "xdotool"):
        peers.require(peer)
    script = tmp_path / "console.sh"
    script.write_text(f"{peers.paint_command(PATTERN)}\nexec cat > /dev/null\n")
    server = start_vncterm(f"sh {script}", options=("--verbose",))
    guest = NoiseGuest(reverse_port(server))
    try:
        assert guest.updates_requested.wait(10)
        guest.paint_noise(MARKER, FIRST)
        assert peers.wait_until(lambda: ARRIVED.search(peers.read_text(server.log_path)))
        viewer = xvfb.start(["vncviewer", "Shared=1", "AutoSelect=0", *options, server.address],
                            "vncviewer")
        shots = iter(range(1000))

        def look(colour):
            return marker_errors(xvfb.screenshot(f"shot-{next(shots)}"), colour)

        assert peers.until_no_errors(lambda: look(FIRST), FRAME_WAIT) == []
        guest.paint_noise(MARKER, SECOND)
        assert peers.until_no_errors(lambda: look(SECOND), FRAME_WAIT) == []
        assert viewer.poll() is None, "vncviewer exited"
        assert not DROPPED.search(peers.read_text(server.log_path)), server.report()
        press_in_viewer(xvfb, "ctrl+alt+1")
        assert peers.until_no_errors(lambda: peers.screenshot_errors(
            xvfb.screenshot(f"console-{next(shots)}"), PATTERN, TOP_CORNERS), FRAME_WAIT) == []
    finally:
        guest.close()
