"""The guest-desktop side of the real-peer proxy tests: vncterm as a proxy, Xvnc as the guest.

vncterm runs with `--verbose --reverse-port 0` on a console that paints `PATTERN` with its own
printf (peers.py), clear of the bottom row, where vncterm writes its status line and the "guest
desktop up" notice.  The guest is TigerVNC's Xvnc, whose root window is painted with
`xsetroot -solid` in a colour no console cell has, with an xterm at a known place; `connect`
reverse-connects it with `vncconfig -connect`.  vncterm's --verbose log is read only to know
when to look (a guest arrived, a guest left), never as the evidence.

The checks take a capture (the framebuffer, as vncdotool or vncsnapshot saves it) or a
screenshot (a viewer's window on an X screen) and return the list of what is wrong with it, []
when it shows what it must: the console's blocks, or the desktop at its own size with the root
colour away from the xterm and the xterm's white where -geometry put it.  `settle` retakes a
look until it finds nothing wrong, and then fails with the last list.
"""

import re

from PIL import ImageChops

import peers
from peers import Block

PATTERN = (Block("red", 2, 1), Block("green", 72, 1), Block("blue", 2, 19))
DESKTOP_SIZE = (1024, 768)
ROOT = "#ff8000"
ROOT_RGB = (255, 128, 0)
XTERM_GEOMETRY = "80x10+100+100"
XTERM_INSIDE = (300, 150)
COLOUR_TOLERANCE = 40

REVERSE = re.compile(r"vncterm: guest desktops connect to 127\.0\.0\.1:(\d+)")
ARRIVED = re.compile(r"guest desktop \S+ connected, (\d+)x(\d+)")
LEFT = re.compile(r"guest desktop \S+ disconnected")


def hotkey(key):
    """vncdo actions for Ctrl-Alt-KEY, pressed and released the way a person does."""
    return ("keydown", "ctrl", "keydown", "alt", "key", key, "keyup", "alt", "keyup", "ctrl")


def vncdo_capture(server, path, *actions):
    """Do the actions, then capture twice in the same vncdo session (vncdotool 1.4.2's quirk)."""
    peers.vncdo(server, *actions, "capture", str(path), "capture", str(path))
    return peers.load_rgb(path)


# --- vncterm and its log -----------------------------------------------------------------------


def start_proxy(start_vncterm, folder, options=()):
    """vncterm --verbose with a reverse port of its own, on a console that paints PATTERN."""
    script = folder / "console.sh"
    script.write_text(f"{peers.paint_command(PATTERN)}\nexec cat > {folder / 'typed.txt'}\n")
    return start_vncterm(f"sh {script}", options=("--verbose", "--reverse-port", "0", *options))


def reverse_port(server):
    """The reverse port vncterm printed (its stdout line comes before the listening line)."""
    for line in server.output:
        if match := REVERSE.fullmatch(line):
            return int(match[1])
    raise AssertionError(f"vncterm never said where guests connect\n{server.report()}")


def log_count(server, pattern):
    """How many lines of vncterm's stderr log match pattern."""
    return len(pattern.findall(peers.read_text(server.log_path)))


def wait_for_log(server, pattern, count=1, timeout=20.0):
    """Wait until the log holds `count` matches of pattern; fail with the log if it never does."""
    if not peers.wait_until(lambda: log_count(server, pattern) >= count, timeout):
        raise AssertionError(
            f"no {count}th log line matching {pattern.pattern!r}\n{server.report()}")


# --- Guest X servers ---------------------------------------------------------------------------


class Xvnc(peers.Xvnc):
    """TigerVNC's Xvnc as the guest's X server, which paints and connects on request."""

    def __init__(self, folder, name="Xvnc", options=()):
        super().__init__(folder, DESKTOP_SIZE, name, options)

    def paint(self, colour=ROOT, xterm_command=None):
        """Paint the root; with xterm_command, start an xterm running it and wait for its window."""
        self.run("xsetroot", "-solid", colour)
        if xterm_command:
            self.start(["xterm", "-geometry", XTERM_GEOMETRY, "-e", "sh", "-c", xterm_command],
                       "xterm")
            self.run("xdotool", "search", "--sync", "--onlyvisible", "--class", "XTerm")

    def connect(self, server):
        """vncconfig -connect to vncterm's reverse port; wait until vncterm has the desktop."""
        before = log_count(server, ARRIVED)
        # vncconfig exits 0 whether or not the connection worked: only vncterm's log can say.
        self.run("vncconfig", "-display", self.display, "-connect",
                 f"127.0.0.1:{reverse_port(server)}")
        wait_for_log(server, ARRIVED, before + 1)


def guest_peers():
    for peer in ("Xvnc", "vncconfig", "xsetroot", "xterm", "xdotool", "vncdotool", "vncsnapshot"):
        peers.require(peer)


# --- What a picture must show ------------------------------------------------------------------


def near(rgb, expected):
    return all(abs(a - b) <= COLOUR_TOLERANCE for a, b in zip(rgb, expected, strict=True))


def spots(size):
    """Points of a desktop of this size that the xterm, the pointer and the menus never cover."""
    width, height = size
    return [(10, 10), (width - 10, 10), (10, height - 10), (width - 10, height - 10),
            (width // 2, height - 40), (width - 60, height // 2)]


def desktop_errors(image, size=DESKTOP_SIZE, colour=ROOT_RGB, xterm=True):
    """Errors in a framebuffer capture that should be the guest desktop; [] when it is.

    With xterm, the xterm's window must also be where -geometry put it (not the root colour):
    the capture is the desktop with its windows, not merely something of the right colour.
    """
    if image.size != size:
        return [f"capture is {image.width}x{image.height}, the desktop is {size[0]}x{size[1]}"]
    errors = [f"desktop pixel {spot} is {image.getpixel(spot)}, the root is {colour}"
              for spot in spots(size) if not near(image.getpixel(spot), colour)]
    if xterm and near(image.getpixel(XTERM_INSIDE), colour):
        errors.append(f"no xterm at {XTERM_INSIDE}: the root colour shows there")
    return errors


# The console's bottom row carries the "guest desktop up" notice: only the top corners are black.
TOP_CORNERS = [(0, 0), (peers.COLUMNS - 1, 0)]


def console_errors(image):
    """Errors in a capture of the PATTERN console."""
    return peers.framebuffer_errors(image, PATTERN, TOP_CORNERS)


def screenshot_console_errors(image):
    """Errors in a screenshot of a viewer window showing the PATTERN console."""
    return peers.screenshot_errors(image, PATTERN, TOP_CORNERS)


def colour_box(image, colour):
    """The bounding box of the pixels near colour, or None."""
    masks = [channel.point(lambda v, c=c: 255 if abs(v - c) <= COLOUR_TOLERANCE else 0)
             for channel, c in zip(image.split(), colour, strict=True)]
    return ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2]).getbbox()


def screenshot_desktop_errors(image, size=DESKTOP_SIZE, colour=ROOT_RGB):
    """Errors in a screenshot that should show the desktop, xterm included, at its own size."""
    box = colour_box(image, colour)
    if box is None:
        return [f"no pixel of the root colour {colour} in the screenshot"]
    shown = (box[2] - box[0], box[3] - box[1])
    if shown != size:
        return [f"the root colour covers {shown[0]}x{shown[1]} at {box[:2]}, "
                f"the desktop is {size[0]}x{size[1]}"]
    xterm = (box[0] + XTERM_INSIDE[0], box[1] + XTERM_INSIDE[1])
    if near(image.getpixel(xterm), colour):
        return [f"no xterm at {XTERM_INSIDE} of the desktop: the root colour shows there"]
    if peers.find_console(image, PATTERN[0]) is not None:
        return ["the console's red block is on the screen too"]
    return []


def expect_text(path, expected):
    """Wait until the file holds exactly expected; fail showing what it holds."""
    peers.wait_until(lambda: peers.read_text(path) == expected)
    assert peers.read_text(path) == expected, f"{path.name} holds {peers.read_text(path)!r}"


def settle(look):
    """Retake a look until it finds no errors; assert on the last one."""
    errors = peers.until_no_errors(look)
    assert not errors, "\n".join(errors)
