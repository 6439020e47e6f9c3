"""Mouse reporting end to end: vncdotool's clicks and wheel, read by a program in the console.

The program is a small Python script run as vncterm's `--command`: it turns on xterm's mouse
tracking (1002, button motion, with 1006, SGR) as mc or vim with `mouse=a` do, puts its tty in
raw mode, decodes every report it reads and writes one line per event to a file.  So the
evidence is what a real program received through a real pty, from a real viewer's
PointerEvents, not what vncterm says it sent.  vim with `mouse=a` is the second program: a
click moves its cursor, and the text typed next lands at that cell of the file it saves; in
tmux with `mouse on` a click picks the pane the next line goes to.  The
last test checks the other side: with no program asking, the same wheel pages the console's
scrollback, seen in vncdotool's capture.
"""

import subprocess
import sys

import peers
from rawviewer import Client

REPORTER = r"""
import os, re, sys, tty
out = open(sys.argv[1], "a", buffering=1)
tty.setraw(0)
os.write(1, b"\x1b[?1002h\x1b[?1006hmouse on\r\n")
out.write("ready\n")
names = {0: "left", 1: "middle", 2: "right", 64: "wheel-up", 65: "wheel-down"}
pending = b""
while data := os.read(0, 1024):
    pending += data
    while match := re.search(rb"\x1b\[<(\d+);(\d+);(\d+)([Mm])", pending):
        pending = pending[match.end():]
        code, column, row = int(match[1]), int(match[2]), int(match[3])
        kind = "release" if match[4] == b"m" else "drag" if code & 32 else "press"
        out.write(f"{kind} {names.get(code & ~32, code)} {column} {row}\n")
"""


def cell_size(server):
    """The console's cell in pixels, from the framebuffer size of an 80x25 console."""
    client = Client(server.port)
    client.close()
    return client.width // peers.COLUMNS, client.height // peers.ROWS


def centre(cell, column, row):
    """vncdotool's coordinates for the middle of a cell (columns and rows from 1)."""
    width, height = cell
    return str((column - 1) * width + width // 2), str((row - 1) * height + height // 2)


def test_a_program_that_asks_gets_clicks_drags_and_the_wheel(start_vncterm, tmp_path):
    peers.require("vncdotool")
    events = tmp_path / "events.txt"
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    server = start_vncterm(f"{sys.executable} {script} {events}")
    assert peers.wait_until(lambda: peers.read_text(events) == "ready\n")
    cell = cell_size(server)
    peers.vncdo(server, "move", *centre(cell, 5, 3), "mousedown", "1",
                "move", *centre(cell, 10, 3), "mouseup", "1",
                "click", "4", "click", "5", "click", "3")
    expected = ("ready\npress left 5 3\ndrag left 10 3\nrelease left 10 3\n"
                "press wheel-up 10 3\npress wheel-down 10 3\npress right 10 3\n"
                "release right 10 3\n")
    assert peers.wait_until(lambda: peers.read_text(events) == expected), peers.read_text(events)


def test_without_a_program_asking_the_wheel_pages_the_scrollback(start_vncterm, tmp_path):
    peers.require("vncdotool")
    script = tmp_path / "lines.sh"
    script.write_text("printf '\\033[41m          \\033[0m\\n'\n"
                      "i=1; while [ $i -le 40 ]; do echo line $i; i=$((i+1)); done\n"
                      "exec cat > /dev/null\n")
    server = start_vncterm(f"sh {script}")
    cell = cell_size(server)
    top_left = (2 * cell[0] + cell[0] // 2, cell[1] // 2)

    def top_left_colour(*actions):
        path = tmp_path / "capture.png"
        peers.vncdo(server, *actions, "capture", str(path), "capture", str(path))
        return peers.colour_name(peers.load_rgb(path).getpixel(top_left))

    assert peers.wait_until(lambda: top_left_colour() == "black")
    assert peers.wait_until(lambda: top_left_colour(*["click", "4"] * 8) == "red")


def test_a_click_moves_vims_cursor_with_mouse_on(start_vncterm, tmp_path):
    """vim with `mouse=a` turns reporting on itself; a click puts its cursor where it lands, so
    the text typed next is inserted at that cell of the file."""
    peers.require("vim")
    peers.require("vncdotool")
    text = tmp_path / "text.txt"
    text.write_text("".join(f"{n}{'.' * 30}\n" for n in range(10)))
    server = start_vncterm(f"vim -u NONE -i NONE -N -c 'set mouse=a' {text}")
    cell = cell_size(server)
    ready = tmp_path / "ready.png"
    assert peers.wait_until(lambda: peers.vncdo_capture(server, ready).getbbox() is not None)
    peers.vncdo(server, "move", *centre(cell, 6, 4), "click", "1",
                "type", "iX", "key", "esc", "type", ":wq", "key", "enter")
    assert peers.wait_until(lambda: peers.read_text(text).splitlines()[3:4] == [
        "3....X" + "." * 26]), peers.read_text(text)


def test_a_click_picks_tmuxs_pane_with_mouse_on(start_vncterm, tmp_path):
    """tmux with `mouse on`, two panes side by side, the right one active: a click in the left
    pane makes it active, so the line typed next reaches the left pane's program."""
    peers.require("tmux")
    peers.require("vncdotool")
    left, right = tmp_path / "left.txt", tmp_path / "right.txt"
    socket = tmp_path / "tmux.socket"
    server = start_vncterm(
        f"tmux -S {socket} -f /dev/null new-session 'cat > {left}' ; set -g mouse on ; "
        f"split-window -h 'cat > {right}'")
    try:
        cell = cell_size(server)
        assert peers.wait_until(lambda: right.exists())
        peers.vncdo(server, "move", *centre(cell, 10, 5), "click", "1",
                    "type", "hello", "key", "enter")
        assert peers.wait_until(lambda: peers.read_text(left) == "hello\n"), (
            peers.read_text(left), peers.read_text(right))
    finally:
        # The tmux server leaves vncterm's process group: stop it by its own socket.
        subprocess.run(["tmux", "-S", str(socket), "kill-server"], check=False,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
