"""vncterm against real VNC viewers: what they show, and what their keys do.

Each test starts vncterm on a shell script of its own. The script paints coloured blocks with
printf (SGR 41/42/44 backgrounds at cells the test chose), then hands the pty to `cat > typed.txt`,
so every key a viewer sends ends up in a file the test can read. The expected picture therefore
comes from the test alone, never from the server: a block must show its colour at the centre of
each of its cells, and the cells around it and the screen's corners must stay black.

The viewers are the third-party programs people actually point at a VNC server: vncdotool
(Python, Twisted); vncsnapshot (RFB 3.3, an old TightVNC code base), asked for one encoding at a
time so that Raw, Hextile, Zlib and ZRLE each meet a real decoder; TigerVNC's vncviewer (RFB 3.8,
Tight, continuous updates) and gtk-vnc's gvncviewer, the last two under Xvfb and read back by
screenshot. Each is a different client implementation, so a bug that one viewer forgives another
will catch. The last test connects several at once to one console and checks that they all see
the same screen, before and after it changes.

Screens are polled rather than slept on: a capture is retaken until the pattern is there or a
timeout passes, and the final failure lists every cell that was wrong.
"""

import subprocess

import pytest

import peers
from peers import Block

PATTERN = (Block("red", 2, 1), Block("green", 72, 1), Block("blue", 2, 22))
REPAINTED = (Block("red", 40, 10), Block("green", 2, 22), Block("blue", 72, 1))
BLANK_CELL = (40, 13)


def start_console(start_vncterm, folder, *patterns):
    """Start vncterm on a script that paints the patterns, one more per line read, then cats."""
    lines = [peers.paint_command(patterns[0])]
    for pattern in patterns[1:]:
        lines += ["IFS= read -r line", peers.paint_command(pattern)]
    lines.append(f"exec cat > {folder / 'typed.txt'}")
    script = folder / "console.sh"
    script.write_text("\n".join(lines) + "\n")
    return start_vncterm(f"sh {script}")


@pytest.fixture
def console(start_vncterm, tmp_path):
    """vncterm showing PATTERN; what is typed into it lands in the `typed` file."""
    return start_console(start_vncterm, tmp_path, PATTERN)


@pytest.fixture
def typed(tmp_path):
    """The file the console's `cat` writes every line it reads from the pty to."""
    return tmp_path / "typed.txt"


def wait_for_text(path, expected):
    """Wait until the file holds exactly the expected text; return what it holds."""
    peers.wait_until(lambda: peers.read_text(path) == expected)
    return peers.read_text(path)


def start_tigervnc(xvfb, server):
    """Start TigerVNC's vncviewer on the screen and wait until it shows PATTERN."""
    peers.require("vncviewer")
    xvfb.start(["vncviewer", server.address], "vncviewer")
    # The "Press F8" notice covers the middle of the window's top for a few seconds; the blocks
    # sit to its sides, and retaking the screenshot rides out any overlap.
    errors = peers.until_no_errors(
        lambda: peers.screenshot_errors(xvfb.screenshot("vncviewer"), PATTERN))
    assert not errors, "\n".join(errors)


def test_vncdotool_capture_shows_the_blocks(console, artifacts):
    peers.require("vncdotool")
    errors = peers.until_no_errors(lambda: peers.framebuffer_errors(
        peers.vncdo_capture(console, artifacts / "vncdotool.png"), PATTERN))
    assert not errors, "\n".join(errors)


def test_vncdotool_keys_reach_the_pty(console, typed):
    """Printable keys, then the pty's line editing: BackSpace erases, Tab is kept, Ctrl-D sends."""
    peers.require("vncdotool")
    peers.vncdo(console,
                "type", "Hello, world!", "key", "enter",
                "type", "hellp", "key", "bsp", "type", "o", "key", "tab", "type", "x",
                "key", "enter", "type", "eof", "key", "ctrl-d")
    expected = "Hello, world!\nhello\tx\neof"
    assert wait_for_text(typed, expected) == expected


@pytest.mark.parametrize("encoding", ["raw", "hextile", "zlib", "zrle"])
def test_vncsnapshot_shows_the_blocks(console, artifacts, encoding):
    peers.require("vncsnapshot")
    errors = peers.until_no_errors(lambda: peers.framebuffer_errors(
        peers.vncsnapshot_capture(console, artifacts / "vncsnapshot.jpg", encoding), PATTERN))
    assert not errors, "\n".join(errors)


def test_tigervnc_viewer_shows_the_blocks(xvfb, console):
    # xvfb is set up first, so it is torn down last: vncterm gets its SIGTERM while the
    # viewer is still connected, and must still exit cleanly.
    start_tigervnc(xvfb, console)


def test_tigervnc_viewer_keys_reach_the_pty(console, typed, xvfb):
    peers.require("xdotool")
    start_tigervnc(xvfb, console)
    window = xvfb.run("xdotool", "search", "--sync", "--onlyvisible", "--class", "TigerVNC")
    region = peers.find_console(xvfb.screenshot("before-typing"), PATTERN[0])
    assert region, "the console vanished from vncviewer's window"
    x, y = peers.cell_centre(region, *BLANK_CELL)
    # With no window manager, vncviewer only takes keys once focused and clicked.
    xvfb.run("xdotool", "windowfocus", "--sync", window.split()[0])
    xvfb.run("xdotool", "mousemove", "--sync", str(x), str(y), "click", "1")
    xvfb.run("xdotool", "type", "--delay", "20", "echo Hi, there!")
    xvfb.run("xdotool", "key", "Return")
    assert wait_for_text(typed, "echo Hi, there!\n") == "echo Hi, there!\n"


def test_gvncviewer_shows_the_blocks(console, xvfb):
    peers.require("gvncviewer")
    # gvncviewer only takes host:display and connects to port 5900 + display; vncterm's port 0
    # comes from the kernel's ephemeral range, which starts far above 5900.
    assert console.port > 5900
    xvfb.start(["gvncviewer", f"127.0.0.1:{console.port - 5900}"], "gvncviewer")
    errors = peers.until_no_errors(
        lambda: peers.screenshot_errors(xvfb.screenshot("gvncviewer"), PATTERN))
    assert not errors, "\n".join(errors)


def test_viewers_share_one_console(start_vncterm, tmp_path, xvfb, artifacts):
    """vncviewer stays connected while the others come and go: all see each screen in turn."""
    for peer in ("vncviewer", "vncsnapshot", "vncdotool"):
        peers.require(peer)
    server = start_console(start_vncterm, tmp_path, PATTERN, REPAINTED)
    start_tigervnc(xvfb, server)

    def looks(blocks, stage):
        return {
            "vncviewer": peers.until_no_errors(lambda: peers.screenshot_errors(
                xvfb.screenshot(f"vncviewer-{stage}"), blocks)),
            "vncsnapshot": peers.until_no_errors(lambda: peers.framebuffer_errors(
                peers.vncsnapshot_capture(server, artifacts / f"vncsnapshot-{stage}.jpg"), blocks)),
            "vncdotool": peers.until_no_errors(lambda: peers.framebuffer_errors(
                peers.vncdo_capture(server, artifacts / f"vncdotool-{stage}.png"), blocks)),
        }

    clean = {"vncviewer": [], "vncsnapshot": [], "vncdotool": []}
    assert looks(PATTERN, "first") == clean
    peers.vncdo(server, "type", "next", "key", "enter")
    assert looks(REPAINTED, "repainted") == clean


def debian_python_has_the_packages():
    check = "import pyte, PIL, serial"
    return subprocess.run(["/usr/bin/python3", "-c", check], capture_output=True).returncode == 0


def test_runs_from_a_checkout_with_debian_packages(tmp_path, artifacts):
    """No venv: Debian's python3 with python3-pyte, python3-pil and python3-serial."""
    peers.require("python3-pyte", debian_python_has_the_packages())
    peers.require("vncsnapshot")
    script = tmp_path / "console.sh"
    script.write_text(peers.paint_command(PATTERN) + "\nexec cat\n")
    server = peers.VncTerm(f"sh {script}", artifacts / "vncterm.log", python="/usr/bin/python3")
    try:
        errors = peers.until_no_errors(lambda: peers.framebuffer_errors(
            peers.vncsnapshot_capture(server, artifacts / "vncsnapshot.jpg"), PATTERN))
        assert not errors, "\n".join(errors)
    finally:
        server.stop()
