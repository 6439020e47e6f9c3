"""The VNC proxy against real guest servers and real viewers: the desktop arrives, and VT switches.

vncterm is also a VNC proxy: a guest's X server (TigerVNC's Xvnc through `vncconfig -connect`,
or x11vnc `-connect`) reverse-connects to it, or vncterm dials one that only listens
(`--desktop-connect`), and every viewer is switched to that desktop; Ctrl-Alt-F1..F6 (or
Ctrl-Alt-1..6) takes a viewer back to the text console and Ctrl-Alt-F7 (or Ctrl-Alt-7) to the
desktop again.  These tests drive that with programs written by other people on both sides.

The expected pictures come from the tests alone.  The console paints coloured blocks with its
own printf (peers.py), placed clear of the bottom row, where vncterm writes its status line and
the "guest desktop up" notice.  The guest's root window is painted with `xsetroot -solid` in a
colour no console cell has, and an xterm sits at a known place, so a desktop check is "the
capture is the size given to Xvnc's -geometry (or xrandr), the root colour shows at spots away
from the xterm, and the xterm's white shows where -geometry put it".  Nothing is read back from
vncterm except its --verbose log, which is used only to know when to look (a guest arrived, a
guest left), never as the evidence.

Viewers: vncdotool's command line (one session per call: a hotkey, then captures in the same
session), vncdotool's Python API kept connected in a child process (`peers.VncdoViewer`, Raw),
because some checks need a viewer that was already there when the desktop came or went,
vncsnapshot (Raw, RFB 3.3) and TigerVNC's vncviewer under Xvfb (Tight, continuous updates) read
back by screenshot.  Under Xvfb, Ctrl-Alt-F1 never reaches vncviewer (the X server's keymap turns
it into a VT-switch action and swallows it), so vncviewer switches with the Ctrl-Alt-1 /
Ctrl-Alt-7 alternates, which is what those alternates are for.

Screens are polled, not slept on: a capture is retaken until it is right or a timeout passes,
and the failure then lists what was wrong.  Every process a test starts is stopped by its own
handle at teardown (fixtures, or try/finally), never by name.
"""

import re
import socket
import struct
import subprocess

import pytest

import peers
from guestdesktop import (
    ARRIVED,
    DESKTOP_SIZE,
    LEFT,
    ROOT,
    XTERM_INSIDE,
    Xvnc,
    console_errors,
    desktop_errors,
    expect_text,
    guest_peers,
    hotkey,
    log_count,
    reverse_port,
    screenshot_console_errors,
    screenshot_desktop_errors,
    settle,
    start_proxy,
    vncdo_capture,
    wait_for_log,
)
from peers import free_port

SMALLER_SIZE = (800, 600)
OTHER_ROOT = "#00c0c0"
OTHER_ROOT_RGB = (0, 192, 192)
PASSWORD = "s3cret!-longer-than-8"  # VNC authentication uses the first 8 characters


def hotkeys_switch(server, artifacts, to_console, to_desktop, **desktop_checks):
    """A fresh vncdotool viewer on the desktop: `to_console` shows it the console, and
    `to_console` then `to_desktop` bring it back to the desktop."""
    settle(lambda: console_errors(
        vncdo_capture(server, artifacts / f"{to_console}.png", *hotkey(to_console))))
    settle(lambda: desktop_errors(
        vncdo_capture(server, artifacts / f"{to_console}-{to_desktop}.png",
                      *hotkey(to_console), *hotkey(to_desktop)), **desktop_checks))


@pytest.fixture
def proxy(start_vncterm, tmp_path):
    """vncterm --verbose --reverse-port 0 showing PATTERN on its console."""
    return start_proxy(start_vncterm, tmp_path)


def server_init_size(server):
    """The framebuffer size in ServerInit, read with a handshake written here (RFC 6143 §7.3)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.read(12).startswith(b"RFB 003.")
        sock.sendall(b"RFB 003.008\n")
        types = reader.read(reader.read(1)[0])
        assert 1 in types, f"security types {list(types)} do not include None"
        sock.sendall(b"\x01")
        assert reader.read(4) == b"\0\0\0\0"
        sock.sendall(b"\x01")
        return struct.unpack(">HH", reader.read(4))


# --- The tests ---------------------------------------------------------------------------------


def test_tigervnc_guest_arrives_and_hotkeys_switch(proxy, guest, artifacts):
    """vncconfig -connect: the desktop shows; F1/F7 and the 1/7 alternates switch one session."""
    guest.paint(xterm_command="sleep 600")
    guest.connect(proxy)
    settle(lambda: desktop_errors(vncdo_capture(proxy, artifacts / "arrived.png")))
    settle(lambda: desktop_errors(
        peers.vncsnapshot_capture(proxy, artifacts / "arrived-vncsnapshot.jpg")))
    hotkeys_switch(proxy, artifacts, "f1", "f7")
    hotkeys_switch(proxy, artifacts, "1", "7")
    settle(lambda: console_errors(
        vncdo_capture(proxy, artifacts / "f7-f6.png", *hotkey("f7"), *hotkey("f6"))))


def test_viewers_already_there_follow_the_guest_coming_and_going(proxy, guest, xvfb,
                                                                  vncdo_viewers, artifacts):
    """Viewers on the console are switched to a guest that arrives, and back when it leaves."""
    tiger = peers.TigerViewer(xvfb, proxy)
    raw = vncdo_viewers(proxy)
    settle(lambda: screenshot_console_errors(tiger.screenshot()))
    settle(lambda: console_errors(raw.capture("raw-console-before")))
    guest.paint(xterm_command="sleep 600")
    guest.connect(proxy)
    settle(lambda: screenshot_desktop_errors(tiger.screenshot()))
    settle(lambda: desktop_errors(raw.capture("raw-desktop")))
    guest.stop()
    wait_for_log(proxy, LEFT)
    settle(lambda: screenshot_console_errors(tiger.screenshot()))
    settle(lambda: console_errors(raw.capture("raw-console-after")))
    settle(lambda: console_errors(vncdo_capture(proxy, artifacts / "new.png")))
    settle(lambda: console_errors(vncdo_capture(proxy, artifacts / "f7.png", *hotkey("f7"))))


def test_x11vnc_guest_arrives_and_hotkeys_switch(proxy, artifacts, vncdo_viewers):
    """x11vnc -connect_or_exit on an Xvfb: the desktop shows, hotkeys switch, its end ends it."""
    for peer in ("Xvfb", "x11vnc", "xsetroot", "vncdotool"):
        peers.require(peer)
    folder = artifacts / "guest"
    folder.mkdir()
    screen = peers.Xvfb(folder, size="%dx%d" % DESKTOP_SIZE)
    try:
        x11vnc = screen.start(
            ["x11vnc", "-display", screen.display, "-connect_or_exit",
             f"127.0.0.1:{reverse_port(proxy)}", "-rfbport", "0", "-rfbportv6", "-1", "-nopw",
             "-shared"], "x11vnc")
        wait_for_log(proxy, ARRIVED)
        # Xvfb resets when its last client leaves, so the root is painted once x11vnc is there.
        screen.run("xsetroot", "-solid", ROOT)
        raw = vncdo_viewers(proxy)
        settle(lambda: desktop_errors(raw.capture("arrived"), xterm=False))
        raw.do("keyPress ctrl-alt-f1")
        settle(lambda: console_errors(raw.capture("f1")))
        raw.do("keyPress ctrl-alt-f7")
        settle(lambda: desktop_errors(raw.capture("f7"), xterm=False))
        settle(lambda: console_errors(
            vncdo_capture(proxy, artifacts / "2.png", *hotkey("2"))))
        # x11vnc sometimes hangs in its SIGTERM clean-up with the socket still open: kill it.
        x11vnc.kill()
        wait_for_log(proxy, LEFT)
        settle(lambda: console_errors(raw.capture("x11vnc-gone")))
    finally:
        screen.stop()


def password_guest(folder, password):
    """Xvnc asking for VNC authentication with password (vncpasswd -f makes its file)."""
    peers.require("vncpasswd")
    result = subprocess.run(["vncpasswd", "-f"], input=password.encode(), capture_output=True,
                            timeout=10, check=True)
    (folder / "passwd").write_bytes(result.stdout)
    return Xvnc(folder, options=("-rfbport", "-1", "-PasswordFile", str(folder / "passwd")))


def test_desktop_password_file_answers_vnc_authentication(start_vncterm, tmp_path, artifacts):
    """Xvnc -PasswordFile offers [19, 2] on the reverse link; the password file answers VncAuth;
    the hotkeys switch, and viewers return to the console when the guest goes."""
    guest_peers()
    (tmp_path / "password").write_text(PASSWORD + "\n")
    server = start_proxy(start_vncterm, tmp_path,
                         ("--desktop-password-file", str(tmp_path / "password")))
    guest = password_guest(artifacts, PASSWORD)
    try:
        guest.paint()
        guest.connect(server)
        settle(lambda: desktop_errors(vncdo_capture(server, artifacts / "arrived.png"),
                                      xterm=False))
        hotkeys_switch(server, artifacts, "f1", "f7", xterm=False)
    finally:
        guest.stop()
    wait_for_log(server, LEFT)
    settle(lambda: console_errors(vncdo_capture(server, artifacts / "gone.png")))


@pytest.mark.parametrize("password", [None, "wrong"])
def test_without_the_right_password_the_desktop_stays_away(start_vncterm, tmp_path, artifacts,
                                                          password):
    """No password file, or the wrong password: the log says why; viewers stay on the console."""
    guest_peers()
    options = ()
    if password:
        (tmp_path / "password").write_text(password + "\n")
        options = ("--desktop-password-file", str(tmp_path / "password"))
    server = start_proxy(start_vncterm, tmp_path, options)
    guest = password_guest(artifacts, PASSWORD)
    try:
        guest.paint()
        guest.run("vncconfig", "-display", guest.display, "-connect",
                  f"127.0.0.1:{reverse_port(server)}")
        reason = (re.compile(r"guest \S+: guest refused authentication")
                  if password else
                  re.compile(r"guest \S+: guest offers security types "
                             r"\[19, 2\], none usable \(give --desktop-password-file"))
        wait_for_log(server, reason)
        assert log_count(server, ARRIVED) == 0, server.report()
        settle(lambda: console_errors(vncdo_capture(server, artifacts / "console.png")))
        settle(lambda: console_errors(
            vncdo_capture(server, artifacts / "f7.png", *hotkey("f7"))))
    finally:
        guest.stop()


def test_desktop_connect_retries_until_xvnc_listens(start_vncterm, tmp_path, artifacts):
    """--desktop-connect dials until Xvnc listens, and again after it has gone and come back."""
    guest_peers()
    port = free_port()
    server = start_proxy(start_vncterm, tmp_path, ("--desktop-connect", f"127.0.0.1:{port}"))
    options = ("-rfbport", str(port), "-interface", "127.0.0.1", "-SecurityTypes", "None")
    settle(lambda: console_errors(vncdo_capture(server, artifacts / "before.png")))
    guest = Xvnc(artifacts, "Xvnc-first", options=options)
    try:
        guest.paint()
        wait_for_log(server, ARRIVED)
        settle(lambda: desktop_errors(vncdo_capture(server, artifacts / "first.png"), xterm=False))
        hotkeys_switch(server, artifacts, "1", "7", xterm=False)
    finally:
        guest.stop()
    wait_for_log(server, LEFT)
    settle(lambda: console_errors(vncdo_capture(server, artifacts / "between.png")))
    guest = Xvnc(artifacts, "Xvnc-second", options=options)
    try:
        guest.paint(OTHER_ROOT)
        wait_for_log(server, ARRIVED, 2)
        settle(lambda: desktop_errors(vncdo_capture(server, artifacts / "second.png"),
                                      colour=OTHER_ROOT_RGB, xterm=False))
    finally:
        guest.stop()


def test_two_viewers_one_on_the_console_one_on_the_desktop(proxy, guest, xvfb, vncdo_viewers,
                                                           artifacts):
    """vncviewer (Tight) goes to the console; vncdotool (Raw), vncsnapshot stay on the desktop."""
    guest.paint(xterm_command="sleep 600")
    guest.connect(proxy)
    tiger = peers.TigerViewer(xvfb, proxy)
    raw = vncdo_viewers(proxy)
    settle(lambda: screenshot_desktop_errors(tiger.screenshot()))
    tiger.hotkey("1")
    settle(lambda: screenshot_console_errors(tiger.screenshot()))
    settle(lambda: desktop_errors(raw.capture("raw-desktop")))
    guest.run("xsetroot", "-solid", OTHER_ROOT)
    settle(lambda: desktop_errors(raw.capture("raw-repainted"), colour=OTHER_ROOT_RGB))
    settle(lambda: desktop_errors(
        peers.vncsnapshot_capture(proxy, artifacts / "vncsnapshot.jpg", "hextile"),
        colour=OTHER_ROOT_RGB))
    settle(lambda: screenshot_console_errors(tiger.screenshot()))
    tiger.hotkey("7")
    settle(lambda: screenshot_desktop_errors(tiger.screenshot(), colour=OTHER_ROOT_RGB))


def test_typing_reaches_the_xterm_in_the_guest(proxy, guest, tmp_path):
    """Keys go to the display the viewer shows; the hotkeys themselves reach neither."""
    in_guest = tmp_path / "guest.txt"
    on_console = tmp_path / "typed.txt"
    guest.paint(xterm_command=f"cat > {in_guest}")
    guest.connect(proxy)
    # With no window manager the keyboard focus follows the pointer: move it into the xterm.
    peers.vncdo(proxy, "move", *map(str, XTERM_INSIDE), "pause", "0.2",
                "type", "Hello, Guest!", "key", "enter")
    expect_text(in_guest, "Hello, Guest!\n")
    # A hotkey leaking through would sit in the pty's line buffer and show up on the next line.
    peers.vncdo(proxy, *hotkey("f1"), "type", "on the console", "key", "enter",
                *hotkey("f7"), "type", "back", "key", "enter",
                *hotkey("1"), "type", "again", "key", "enter")
    expect_text(on_console, "on the console\nagain\n")
    expect_text(in_guest, "Hello, Guest!\nback\n")


def test_a_viewer_arriving_while_the_desktop_is_up_starts_on_it(proxy, guest, artifacts):
    """ServerInit already has the desktop's size: no resize, no console first."""
    guest.paint(xterm_command="sleep 600")
    guest.connect(proxy)
    assert server_init_size(proxy) == DESKTOP_SIZE
    # vncsnapshot speaks RFB 3.3 and cannot follow a resize: it only sees what ServerInit says.
    settle(lambda: desktop_errors(peers.vncsnapshot_capture(proxy, artifacts / "first.jpg")))
    settle(lambda: desktop_errors(vncdo_capture(proxy, artifacts / "first.png")))


def test_viewers_follow_the_guest_resizing(proxy, guest, xvfb, vncdo_viewers, artifacts):
    """xrandr in the guest: viewers on the desktop follow; one on the console sees it on F7."""
    peers.require("xrandr")
    guest.paint(xterm_command="sleep 600")
    guest.connect(proxy)
    tiger = peers.TigerViewer(xvfb, proxy)
    raw = vncdo_viewers(proxy, "raw")
    on_console = vncdo_viewers(proxy, "on-console")
    on_console.do("keyPress ctrl-alt-f1")
    settle(lambda: screenshot_desktop_errors(tiger.screenshot()))
    settle(lambda: desktop_errors(raw.capture("raw-1024")))
    guest.run("xrandr", "-s", "%dx%d" % SMALLER_SIZE)
    settle(lambda: desktop_errors(raw.capture("raw-800"), SMALLER_SIZE))
    settle(lambda: screenshot_desktop_errors(tiger.screenshot(), SMALLER_SIZE))
    settle(lambda: desktop_errors(
        peers.vncsnapshot_capture(proxy, artifacts / "new-800.jpg"), SMALLER_SIZE))
    settle(lambda: console_errors(on_console.capture("console-during")))
    on_console.do("keyPress ctrl-alt-f7")
    settle(lambda: desktop_errors(on_console.capture("on-console-800"), SMALLER_SIZE))
    guest.run("xrandr", "-s", "%dx%d" % DESKTOP_SIZE)
    settle(lambda: desktop_errors(raw.capture("raw-back"), DESKTOP_SIZE))
    settle(lambda: screenshot_desktop_errors(tiger.screenshot(), DESKTOP_SIZE))
