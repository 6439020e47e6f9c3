"""Copy and paste with real viewers: TigerVNC's vncviewer under Xvfb, read with xclip.

The console runs a script that prints a known line (accented letters, a snowman, two wide CJK
characters) at a known row and then hands the pty to `cat > typed.txt`, so whatever is pasted
into the console lands in a file.  xdotool drags across the line in vncviewer's window, and
xclip reads the viewer machine's clipboard: it must hold exactly that line.  Then xclip owns
the clipboard with other text, as a copy in another window does: vncviewer sends it to vncterm
(the log says when it arrived), nothing is typed, and a middle click pastes it once.

On the guest desktop, Ctrl-Alt-V types the viewer's clipboard into an xterm on a guest Xvnc,
as key presses (shifted punctuation, a tab, an accented letter and a snowman among them), so
the file that xterm's `cat` writes holds the text.

The guest's clipboard and the viewer's pass both ways (xclip on each X screen).  vncviewer
and Xvnc both speak the Extended Clipboard, so the text is UTF-8 all the way.  noVNC's
clipboard panel is tested with the other browser tests (test_browser.py).

Nothing is read back from vncterm but its --verbose log, and only to know when to look.
"""

import re

import guestdesktop as proxied
import peers
from guestdesktop import PATTERN, wait_for_log
from peers import TigerViewer

LINE = "grüße ☃ 漢字 ok"
LINE_ROW, LINE_CELLS = 5, 15  # the two CJK characters take two cells each
KEPT = re.compile(r"viewer \S+: clipboard of (\d+) characters kept for pasting")


def start_console(start_vncterm, folder):
    script = folder / "console.sh"
    script.write_text(
        f"{peers.paint_command(PATTERN)}\n"
        f"printf '\\033[{LINE_ROW + 1};1H%s\\033[12;1H' '{LINE}'\n"
        f"exec cat > {folder / 'typed.txt'}\n")
    return start_vncterm(f"sh {script}", options=("--verbose",))


def clipboard(screen):
    """What an X screen's clipboard holds, "" while nobody owns it."""
    result = peers.subprocess.run(["xclip", "-o", "-selection", "clipboard"], env=screen.env,
                                  capture_output=True, timeout=10)
    return result.stdout.decode(errors="replace") if result.returncode == 0 else ""


def own_clipboard(screen, folder, text):
    """Copy `text` on an X screen, as another program does (xclip keeps owning it)."""
    path = folder / f"copied-{screen.display[1:]}.txt"
    path.write_text(text)
    screen.start(["xclip", "-quiet", "-selection", "clipboard", "-i", str(path)], "xclip")


def focus_viewer(xvfb):
    window = xvfb.run("xdotool", "search", "--sync", "--onlyvisible", "--class",
                      "TigerVNC").split()[0]
    xvfb.run("xdotool", "windowfocus", "--sync", window)
    return window


def test_tigervnc_copies_a_selection_and_pastes_only_on_a_middle_click(start_vncterm, tmp_path,
                                                                      xvfb):
    for peer in ("vncviewer", "xdotool", "xclip"):
        peers.require(peer)
    server = start_console(start_vncterm, tmp_path)
    viewer = TigerViewer(xvfb, server)
    proxied.settle(lambda: proxied.screenshot_console_errors(viewer.screenshot()))
    focus_viewer(xvfb)
    region = peers.find_console(xvfb.screenshot("console"), PATTERN[0])
    assert region, "the console is not in vncviewer's window"
    start = peers.cell_centre(region, 0, LINE_ROW)
    end = peers.cell_centre(region, LINE_CELLS - 1, LINE_ROW)
    xvfb.run("xdotool", "mousemove", "--sync", *map(str, start), "mousedown", "1")
    xvfb.run("xdotool", "mousemove", "--sync", *map(str, end), "mouseup", "1")
    assert peers.wait_until(lambda: clipboard(xvfb) == LINE), repr(clipboard(xvfb))
    xvfb.screenshot("selected")

    pasted = "echo päste ☃ 漢\n"
    kept = proxied.log_count(server, KEPT)
    own_clipboard(xvfb, tmp_path, pasted)
    wait_for_log(server, KEPT, kept + 1)
    assert peers.read_text(tmp_path / "typed.txt") == "", "a copy was typed by itself"
    xvfb.run("xdotool", "click", "2")  # the pointer is still at the end of the selection
    proxied.expect_text(tmp_path / "typed.txt", pasted)


def test_tigervnc_ctrl_alt_v_types_the_clipboard_into_a_guest_xterm(start_vncterm, tmp_path,
                                                                   guest, xvfb):
    for peer in ("vncviewer", "xdotool", "xclip"):
        peers.require(peer)
    server = proxied.start_proxy(start_vncterm, tmp_path)
    typed = tmp_path / "xterm-typed.txt"
    guest.paint(xterm_command=f"stty -echo; cat > {typed}")
    guest.connect(server)
    viewer = TigerViewer(xvfb, server)
    proxied.settle(lambda: proxied.screenshot_desktop_errors(viewer.screenshot()))
    # vncviewer sends its clipboard only while it has the focus.  The guest has no window
    # manager either: its xterm takes keys while the pointer is on it.
    window = focus_viewer(xvfb)
    x, y = proxied.XTERM_INSIDE
    xvfb.run("xdotool", "mousemove", "--window", window, str(x), str(y), "click", "1")
    text = "Hello, World! ~|{}\"<>? a\tb é☃\n"
    kept = proxied.log_count(server, KEPT)
    own_clipboard(xvfb, tmp_path, text)
    wait_for_log(server, KEPT, kept + 1)
    xvfb.run("xdotool", "key", "ctrl+alt+v")
    proxied.expect_text(typed, text)


def test_tigervnc_and_a_guest_xvnc_share_the_clipboard_both_ways(start_vncterm, tmp_path,
                                                                guest, xvfb):
    for peer in ("vncviewer", "xdotool", "xclip"):
        peers.require(peer)
    server = proxied.start_proxy(start_vncterm, tmp_path)
    guest.paint(xterm_command="sleep 600")
    guest.connect(server)
    viewer = TigerViewer(xvfb, server)
    proxied.settle(lambda: proxied.screenshot_desktop_errors(viewer.screenshot()))
    focus_viewer(xvfb)
    from_guest = "from the guest: grüße ☃ 漢字"
    own_clipboard(guest, tmp_path, from_guest)
    assert peers.wait_until(lambda: clipboard(xvfb) == from_guest), repr(clipboard(xvfb))
    to_guest = "to the guest: päste ☃"
    own_clipboard(xvfb, tmp_path, to_guest)
    assert peers.wait_until(lambda: clipboard(guest) == to_guest), repr(clipboard(guest))
