"""Remote resize: a viewer's SetDesktopSize (rfbproto) resizes a command's console.

The terminal keeps its text as xterm does when the window changes; the console clamps the size
to its bounds and refuses where the source cannot be told; and end to end, against vncterm
started as a subprocess, the evidence is what the command itself reads with `stty size` after
its SIGWINCH, never vncterm's word.  Our own RFB client (rawviewer) sends the SetDesktopSize
here; TigerVNC's vncviewer and a guest Xvnc are in test_resize_peers.py.
"""


import pytest

import console
import display
import peers
import render
import sources
import terminal
from harness import FakeSource, text_of
from peers import WATCH_SIZE
from rawviewer import (
    DESKTOP_SIZE,
    EXTENDED_DESKTOP_SIZE,
    RAW,
    Client,
    SecureClient,
    resize_reply,
    set_desktop_size,
)

PASSWORD, VIEW_ONLY_PASSWORD = b"resizer1", b"watcher1"


def rows_of(screen):
    return ["".join(screen.buffer[y][x].data for x in range(screen.columns)).rstrip()
            for y in range(screen.lines)]


def test_a_shorter_screen_cuts_blank_rows_below_the_cursor_not_the_top():
    screen = terminal.Terminal(20, 10)
    terminal.Stream(screen).feed(b"prompt$ ")
    screen.resize(5, 20)
    assert rows_of(screen) == ["prompt$", "", "", "", ""]
    assert (screen.cursor.x, screen.cursor.y) == (8, 0)
    assert not screen.history


def test_a_shorter_screen_keeps_the_cursors_row_and_scrolls_the_top_away():
    screen = terminal.Terminal(20, 10)
    terminal.Stream(screen).feed(b"\r\n".join(b"line %d" % i for i in range(8)))
    screen.resize(5, 20)
    assert rows_of(screen) == ["line 3", "line 4", "line 5", "line 6", "line 7"]
    assert screen.cursor.y == 4
    assert [text_of(row[x] for x in range(20)).rstrip() for row in screen.history] == [
        "line 0", "line 1", "line 2"]


def test_narrower_then_wider_drops_the_cut_columns():
    screen = terminal.Terminal(20, 3)
    terminal.Stream(screen).feed(b"abcdefghijklmnopqrst")
    screen.resize(3, 10)
    screen.resize(3, 30)
    assert rows_of(screen)[0] == "abcdefghij"
    assert screen.cursor.x == 9


class ResizableSource(FakeSource):
    def __init__(self):
        super().__init__()
        self.sizes = []

    def resize(self, columns, lines):
        self.sizes.append((columns, lines))


def test_a_console_resizes_within_its_bounds_and_tells_the_source():
    term = console.Console(ResizableSource(), 80, 25)
    assert term.resize(100, 40)
    assert term.resize(1000, 1000)
    assert term.resize(1, 1)
    assert term.source.sizes == [(100, 40), (400, 150), (20, 5)]
    assert term.take_frame().size == (20, 5)


def test_a_console_whose_source_cannot_be_told_refuses():
    term = console.Console(FakeSource(), 80, 25)
    assert not term.resize(100, 40)
    assert (term.columns, term.lines) == (80, 25)


def test_the_display_follows_with_a_new_size_and_a_whole_picture():
    term = console.Console(ResizableSource(), 80, 25)
    shown = display.ConsoleDisplay(term, render.Glyphs(render.load_font(None)[0]))
    first = shown.changes(None)
    cell_width, cell_height = shown.glyphs.cell
    answers = []
    shown.resize(100 * cell_width + cell_width - 1, 30 * cell_height, answers.append)
    assert answers == [0]
    assert shown.size == (100 * cell_width, 30 * cell_height)
    changes = shown.changes(first.token)
    assert changes.full and changes.tiles[0][2].size == shown.size


def test_a_guest_console_display_answers_prohibited():
    term = console.Console(FakeSource(), 80, 25)
    shown = display.ConsoleDisplay(term, render.Glyphs(render.load_font(None)[0]))
    answers = []
    shown.resize(640, 480, answers.append)
    assert answers == [1]


def test_command_source_tells_the_running_command(tmp_path):
    size_file = tmp_path / "size"
    script = tmp_path / "watch.sh"
    script.write_text(WATCH_SIZE.format(file=size_file))
    source = sources.CommandSource(f"sh {script}", 80, 25)
    source.open()
    try:
        assert peers.wait_until(lambda: peers.read_text(size_file) == "25 80\n")
        source.resize(132, 43)
        assert peers.wait_until(lambda: peers.read_text(size_file) == "43 132\n")
    finally:
        source.close()


# --- End to end, vncterm as a subprocess ---------------------------------------------------


def connect(server):
    client = Client(server.port)
    client.set_encodings(RAW, EXTENDED_DESKTOP_SIZE, DESKTOP_SIZE)
    client.request(incremental=False)
    client.read_update()
    return client


@pytest.fixture
def watched(start_vncterm, tmp_path):
    """vncterm on a command that writes its `stty size` to a file at start and on SIGWINCH."""
    size_file = tmp_path / "size"
    script = tmp_path / "watch.sh"
    script.write_text(WATCH_SIZE.format(file=size_file))
    server = start_vncterm(f"sh {script}")
    assert peers.wait_until(lambda: peers.read_text(size_file) == "25 80\n")
    return server, size_file


def test_set_desktop_size_resizes_the_commands_pty_and_every_viewer(watched):
    server, size_file = watched
    asker, other = connect(server), connect(server)
    cell_width, cell_height = asker.width // 80, asker.height // 25
    set_desktop_size(asker, 100 * cell_width + 3, 30 * cell_height + 5)
    assert resize_reply(asker) == (1, 0, 100 * cell_width, 30 * cell_height)
    assert peers.wait_until(lambda: peers.read_text(size_file) == "30 100\n")
    assert resize_reply(other) == (0, 0, 100 * cell_width, 30 * cell_height)
    set_desktop_size(other, 10 * cell_width, 2 * cell_height)
    assert resize_reply(other) == (1, 0, 20 * cell_width, 5 * cell_height)
    assert peers.wait_until(lambda: peers.read_text(size_file) == "5 20\n")
    asker.close()
    other.close()


def test_a_view_only_viewer_cannot_resize(start_vncterm, tmp_path):
    size_file = tmp_path / "size"
    script = tmp_path / "watch.sh"
    script.write_text(WATCH_SIZE.format(file=size_file))
    (tmp_path / "full").write_text(PASSWORD.decode() + "\n")
    (tmp_path / "view").write_text(VIEW_ONLY_PASSWORD.decode() + "\n")
    server = start_vncterm(f"sh {script}", options=(
        "--password-file", str(tmp_path / "full"),
        "--viewonly-password-file", str(tmp_path / "view")))
    assert peers.wait_until(lambda: peers.read_text(size_file) == "25 80\n")
    watcher = SecureClient(server.port, VIEW_ONLY_PASSWORD)
    watcher.set_encodings(RAW, EXTENDED_DESKTOP_SIZE)
    watcher.request(incremental=False)
    watcher.read_update()
    set_desktop_size(watcher, 1000, 600)
    assert resize_reply(watcher) == (1, 1, watcher.width, watcher.height)
    assert peers.read_text(size_file) == "25 80\n"
    watcher.close()
