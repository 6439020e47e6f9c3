"""More real viewers: the ones users run besides TigerVNC, on the console and through a VT switch.

test_viewers.py and test_proxy_viewers.py prove the console and the proxy with vncdotool,
vncsnapshot, TigerVNC and gvncviewer.  This module adds four more client implementations, each
under Xvfb and read back by screenshot: xtightvncviewer (TightVNC 1.3, the reference Tight
decoder), ssvncviewer (asked for ZRLE), remote-viewer (virt-viewer, gtk-vnc underneath) and
Remmina's VNC plugin (libvncclient, as KRDC and Guacamole use it), run three times so that its
Zlib, Tight and 8-bit ZRLE decoders each meet vncterm's encoders.  Each must show the console,
type into it (xdotool's keys land in the file the console's `cat` writes), then follow a guest
desktop that connects (TigerVNC's Xvnc through `vncconfig -connect`) and switch back and forth
with the hotkeys it can send.

What "the hotkeys it can send" means was measured here, with the default XKB map of Xvfb.  An X
server turns Ctrl-Alt-F1..F7 into its own VT-switch action: the viewer never sees the key press,
and gets only the release, as keysym XF86Switch_VT_n.  xtightvncviewer, ssvncviewer and Remmina
forward that lone release, so vncterm treats those keysyms as the hotkeys; their tests press
Ctrl-Alt-F1 and Ctrl-Alt-F7 as a person does (F-key released before the modifiers).
remote-viewer (like TigerVNC's vncviewer) drops a release it saw no press for, so nothing reaches
the server: it switches with the Ctrl-Alt-1 / Ctrl-Alt-7 alternates, which every viewer passes.

Each viewer shows a desktop in its own way.  ssvncviewer and remote-viewer resize their window,
so the whole 1024x768 desktop must show.  Remmina keeps its console-sized window and scrolls, so
it shows the desktop's top-left 640x400.  xtightvncviewer lists no DesktopSize and can never
resize, so vncterm switches it only to a desktop of the console's own size: its guest is given
exactly that size.

The expected pictures come from the tests alone, as in test_proxy_viewers.py (both use
guestdesktop.py's helpers): the console's coloured blocks, the guest's root colour and its
xterm.  Screens are polled, not slept on, and every process is stopped by its own handle.
"""

import functools
import glob
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import peers
from guestdesktop import (
    DESKTOP_SIZE,
    LEFT,
    ROOT_RGB,
    Xvnc,
    colour_box,
    expect_text,
    guest_peers,
    screenshot_console_errors,
    screenshot_desktop_errors,
    settle,
    start_proxy,
    wait_for_log,
)

CONSOLE_SIZE = (peers.COLUMNS * 8, peers.ROWS * 16)  # vncterm's default font has 8x16 cells
F_KEYS = ("F1", "F7")
DIGITS = ("1", "7")


def xtightvncviewer(server, folder):
    return ["xtightvncviewer", "-encodings", "tight copyrect", server.address]


def ssvncviewer(server, folder):
    return ["ssvncviewer", "-encodings", "zrle", server.address]


def remote_viewer(server, folder):
    return ["remote-viewer", f"vnc://127.0.0.1:{server.port}"]


def remmina(server, folder, quality):
    """Remmina with a profile of its own and a fresh HOME (it writes its settings there).
    libvncclient's encodings follow the quality: 9 asks for Zlib, 1 for Tight, 0 for ZRLE
    with 8 bits per pixel."""
    home = folder / "remmina-home"
    home.mkdir()
    profile = folder / "console.remmina"
    profile.write_text(f"[remmina]\nname=console\nprotocol=VNC\nserver=127.0.0.1:{server.port}\n"
                       f"colordepth=32\nquality={quality}\n")
    return ["env", f"HOME={home}", "remmina", "-c", str(profile)]


@dataclass(frozen=True)
class Viewer:
    """One viewer program: how to start it on an X screen, and what it can do."""

    name: str
    program: str
    package: str
    command: Callable  # command(server, folder) -> argv; folder holds any file it needs
    window_class: str
    hotkeys: tuple[tuple[str, str], ...]  # the (to console, to desktop) pairs it can send
    shows: str  # the "whole" desktop, its top-left "corner", or only a "console size" desktop


VIEWERS = [
    Viewer("xtightvncviewer", "xtightvncviewer", "xtightvncviewer", xtightvncviewer, "Vncviewer",
           (F_KEYS, DIGITS), "console size"),
    Viewer("ssvncviewer", "ssvncviewer", "ssvnc", ssvncviewer, "Ssvnc", (F_KEYS, DIGITS), "whole"),
    Viewer("remote-viewer", "remote-viewer", "virt-viewer", remote_viewer, "Remote-viewer",
           (DIGITS,), "whole"),
    *(Viewer(f"remmina-quality-{quality}", "remmina", "remmina",
             functools.partial(remmina, quality=quality), "org.remmina.Remmina",
             (F_KEYS, DIGITS), "corner")
      for quality in (9, 1, 0)),
]


def require(viewer):
    """Skip (fail under CI=true) unless the viewer and Remmina's VNC plugin are installed."""
    peers.require(viewer.program, how=f"apt-get install {viewer.package}")
    if viewer.program == "remmina":
        plugin = glob.glob("/usr/lib/*/remmina/plugins/remmina-plugin-vnc.so")
        peers.require("remmina-plugin-vnc", plugin, "apt-get install remmina-plugin-vnc")
    peers.require("xdotool")


class Window:
    """A viewer running on the Xvfb screen, read back by screenshot and driven by xdotool."""

    def __init__(self, xvfb, viewer, server, folder):
        self.xvfb = xvfb
        self.viewer = viewer
        self.shots = 0
        self.proc = xvfb.start(viewer.command(server, folder), viewer.program)

    def screenshot(self):
        self.shots += 1
        return self.xvfb.screenshot(f"{self.viewer.name}-{self.shots}")

    def focus(self):
        """Focus the window and click in it: with no window manager, keys go nowhere before."""
        window = self.xvfb.run("xdotool", "search", "--sync", "--onlyvisible", "--class",
                               self.viewer.window_class).split()[0]
        self.xvfb.run("xdotool", "windowfocus", "--sync", window)
        self.xvfb.run("xdotool", "mousemove", "--window", window, "320", "200", "click", "1")

    def press(self, key):
        """Ctrl-Alt-KEY as a person types it, the key released before the modifiers."""
        self.focus()
        # `xdotool key ctrl+alt+F1` lets go of Ctrl and Alt first: the viewer then forwards a
        # bare release of F1, which is no hotkey.
        self.xvfb.run("xdotool", "keydown", "ctrl", "keydown", "alt", "key", key,
                      "keyup", "alt", "keyup", "ctrl")

    def type(self, text):
        """Type text and Return."""
        self.focus()
        self.xvfb.run("xdotool", "type", "--delay", "20", text)
        self.xvfb.run("xdotool", "key", "Return")


def desktop_errors(window, size):
    """Errors in a screenshot of the viewer's window that should show the guest desktop."""
    image = window.screenshot()
    if window.viewer.shows == "corner":
        box = colour_box(image, ROOT_RGB)
        if box is None:
            return [f"no pixel of the root colour {ROOT_RGB} in the screenshot"]
        # The window keeps the console's size and shows the desktop's top-left corner in it.
        return screenshot_desktop_errors(image.crop(box), CONSOLE_SIZE)
    return screenshot_desktop_errors(image, size)


def still_running(window):
    """The viewer is still there: libvncclient, for one, exits when it gives up."""
    assert window.proc.poll() is None, (
        f"{window.viewer.program} exited with {window.proc.returncode}; see its log")


class Guest(Xvnc):
    """Xvnc as the guest, painting and connecting as guestdesktop's does, but of any size
    (that one's constructor fixes 1024x768, so this calls peers.Xvnc's itself)."""

    def __init__(self, folder, size):
        peers.Xvnc.__init__(self, folder, size, "Xvnc",
                            ("-rfbport", "-1", "-SecurityTypes", "None"))


@pytest.fixture(params=VIEWERS, ids=[viewer.name for viewer in VIEWERS])
def viewer(request):
    require(request.param)
    return request.param


def test_viewer_shows_the_console(viewer, start_vncterm, tmp_path, xvfb, artifacts):
    server = start_proxy(start_vncterm, tmp_path)
    window = Window(xvfb, viewer, server, artifacts)
    settle(lambda: screenshot_console_errors(window.screenshot()))
    still_running(window)


def test_viewer_keys_reach_the_console(viewer, start_vncterm, tmp_path, xvfb, artifacts):
    server = start_proxy(start_vncterm, tmp_path)
    window = Window(xvfb, viewer, server, artifacts)
    settle(lambda: screenshot_console_errors(window.screenshot()))
    window.type("echo Hi, there!")
    expect_text(tmp_path / "typed.txt", "echo Hi, there!\n")


def test_viewer_follows_a_guest_and_switches_back_and_forth(viewer, start_vncterm, tmp_path,
                                                           xvfb, artifacts):
    """The desktop arrives on the viewer; its hotkeys show the console and the desktop again;
    when the guest goes, the viewer is back on the console."""
    guest_peers()
    size = CONSOLE_SIZE if viewer.shows == "console size" else DESKTOP_SIZE
    server = start_proxy(start_vncterm, tmp_path)
    window = Window(xvfb, viewer, server, artifacts)
    settle(lambda: screenshot_console_errors(window.screenshot()))
    guest = Guest(artifacts, size)
    try:
        guest.paint(xterm_command="sleep 600")
        guest.connect(server)
        settle(lambda: desktop_errors(window, size))
        for to_console, to_desktop in viewer.hotkeys:
            window.press(to_console)
            settle(lambda: screenshot_console_errors(window.screenshot()))
            window.press(to_desktop)
            settle(lambda: desktop_errors(window, size))
        still_running(window)
    finally:
        guest.stop()
    wait_for_log(server, LEFT)
    settle(lambda: screenshot_console_errors(window.screenshot()))
    still_running(window)
