"""console.py and sources.py: the change tracking, scrollback, status line and every source.

The change tracking is checked against two oracles that do not share our code: a plain
`pyte.Screen` fed the same bytes (our scroll shortcut must not change what the screen shows),
and a "viewer" that only ever applies frames (scroll, then the changed rows) and must end up
with exactly the screen's cells.
"""

import os
import socket
import threading
import tty

import pyte
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import console
import keymap
import sources
import terminal
from harness import PIECES, FakeSource, assert_frames_keep_a_viewer_exact, screen_text, text_of
from peers import wait_until as wait_for

COLUMNS, LINES = 20, 6


def cells_of(screen):
    return [[screen.buffer[y][x] for x in range(COLUMNS)] for y in range(LINES)]


def new_console(columns=COLUMNS, lines=LINES):
    return console.Console(FakeSource(), columns, lines)


@settings(max_examples=200, deadline=None)
@given(st.lists(PIECES, max_size=40))
def test_terminal_shows_what_plain_pyte_shows(pieces):
    ours = terminal.Terminal(COLUMNS, LINES)
    theirs = pyte.Screen(COLUMNS, LINES)
    ours_stream, theirs_stream = pyte.Stream(ours), pyte.Stream(theirs)
    for piece in pieces:
        ours_stream.feed(piece)
        theirs_stream.feed(piece)
    assert cells_of(ours) == cells_of(theirs)
    assert (ours.cursor.x, ours.cursor.y) == (theirs.cursor.x, theirs.cursor.y)


@settings(max_examples=200, deadline=None)
@given(st.lists(PIECES, max_size=40), st.integers(min_value=1, max_value=5))
def test_frames_keep_a_viewer_exact(pieces, every):
    assert_frames_keep_a_viewer_exact(new_console(), pieces, every)


def test_full_screen_scroll_is_counted_not_redrawn():
    term = new_console()
    term.set_status("")
    term.feed(b"\r\n".join(b"line %d" % i for i in range(LINES)))
    term.take_frame()
    term.feed(b"\r\nnext\r\nlast")
    frame = term.take_frame()
    assert frame.scroll == 2
    assert sorted(frame.rows) == [LINES - 3, LINES - 2, LINES - 1]
    assert text_of(frame.rows[LINES - 1]).rstrip() == "last"


def test_scrollback_pages_through_history():
    term = new_console()
    term.set_status("")
    term.feed(b"\r\n".join(b"line %d" % i for i in range(30)))
    term.take_frame()
    shift = keymap.Modifiers()
    shift.update(0xFFE1, True)
    term.key(console.PAGE_UP, shift)
    frame = term.take_frame()
    assert text_of(frame.rows[0]).rstrip() == "line %d" % (30 - LINES - (LINES - 1))
    assert frame.cursor is None or frame.cursor[1] >= LINES - 1
    term.pointer(console.WHEEL_DOWN, (0, 0), keymap.Modifiers())
    term.pointer(console.WHEEL_DOWN, (0, 0), keymap.Modifiers())
    frame = term.take_frame()
    assert text_of(frame.rows[LINES - 1]).rstrip() == "line 29"
    assert term.source.written == b""


def test_any_key_returns_to_the_bottom_and_is_typed():
    term = new_console()
    term.set_status("")
    term.feed(b"\r\n".join(b"line %d" % i for i in range(30)))
    term.pointer(console.WHEEL_UP, (0, 0), keymap.Modifiers())
    term.take_frame()
    term.key(ord("q"), keymap.Modifiers())
    frame = term.take_frame()
    assert text_of(frame.rows[LINES - 1]).rstrip() == "line 29"
    assert term._outbox == b"q"


def test_status_line_covers_the_bottom_row():
    term = new_console()
    term.set_status("console closed: fake")
    frame = term.take_frame()
    bottom = frame.rows[LINES - 1]
    assert "console closed" in text_of(bottom)
    assert all(cell.reverse for cell in bottom)


def test_terminal_queries_are_answered():
    term = new_console()
    term.feed(b"ab\x1b[6n")
    assert term._outbox == b"\x1b[1;3R"


def test_bell_is_counted():
    term = new_console()
    term.feed(b"\x07x\x07")
    assert term.bells == 2


def test_paste_sends_cr_line_ends():
    term = new_console()
    term.paste("one\ntwo\r\nthr\xe9e")
    assert term._outbox == "one\rtwo\rthrée".encode()


def test_outbox_is_bounded():
    term = new_console()
    term.write(b"x" * console.OUTBOX_LIMIT)
    term.write(b"more")
    assert len(term._outbox) == console.OUTBOX_LIMIT


# --- Real sources, with the reader thread --------------------------------------------------


def guest_pty():
    """A pty pair whose far end is raw, as qemu's and xenconsoled's are."""
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave


def test_pty_source_reads_writes_and_reopens(tmp_path):
    link = tmp_path / "console"
    master, slave = guest_pty()
    link.symlink_to(os.ttyname(slave))
    term = console.Console(sources.PtySource(str(link)), 40, 5)
    term.start()
    try:
        os.write(master, b"booting guest\r\n")
        assert wait_for(lambda: "booting guest" in screen_text(term))
        term.key(ord("x"), keymap.Modifiers())
        assert wait_for(lambda: os.read(master, 10) == b"x")
        os.close(slave)
        os.close(master)
        assert wait_for(lambda: term.status.startswith(("console closed", "waiting")))
        master, slave = guest_pty()
        link.unlink()
        link.symlink_to(os.ttyname(slave))
        assert wait_for(lambda: term.status == "", timeout=5)
        os.write(master, b"rebooted\r\n")
        assert wait_for(lambda: "rebooted" in screen_text(term))
    finally:
        term.stop()
        os.close(master)
        os.close(slave)


def closed_console(command, columns, lines):
    """The screen text and status of a console once its command has ended (or failed to start)."""
    closed = threading.Event()
    source = sources.CommandSource(command, columns, lines)
    term = console.Console(source, columns, lines, on_closed=closed.set)
    term.start()
    try:
        assert closed.wait(10)
        return screen_text(term), term.status
    finally:
        term.stop()


def test_command_source_runs_in_a_sized_pty_and_reports_exit():
    text, status = closed_console("sh -c 'stty size; echo $TERM; tty -s && echo tty'", 33, 7)
    assert "7 33" in text and "xterm-256color" in text and "tty" in text
    assert "console closed" in status


def test_a_command_that_cannot_start_closes_the_console_unless_restarted():
    _, status = closed_console("no-such-command-here --flag", 20, 4)
    assert status.startswith("cannot start no-such-command-here")


def test_command_source_restarts_when_asked():
    counter = []
    source = sources.CommandSource("echo run", 20, 4, restart=True)
    term = console.Console(source, 20, 4)
    original_open = source.open
    source.open = lambda: (counter.append(1), original_open())
    term.start()
    try:
        assert wait_for(lambda: len(counter) >= 2)
    finally:
        term.stop()


def test_serial_url_source_over_a_socket():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    term = console.Console(sources.SerialSource(f"socket://127.0.0.1:{port}", 9600), 40, 5)
    term.start()
    try:
        peer, _ = listener.accept()
        assert wait_for(lambda: term.status == "")  # pyserial discards input that beats open()
        peer.sendall(b"login: ")
        assert wait_for(lambda: "login:" in screen_text(term))
        term.key(ord("r"), keymap.Modifiers())
        assert peer.recv(10) == b"r"
        peer.close()
        assert wait_for(lambda: term.status != "")
        peer, _ = listener.accept()
        assert wait_for(lambda: term.status == "")
        peer.sendall(b"again")
        assert wait_for(lambda: "again" in screen_text(term))
        peer.close()
    finally:
        term.stop()
        listener.close()


def test_log_file_gets_the_raw_stream(tmp_path):
    path = tmp_path / "console.log"
    with open(path, "ab") as log_file:
        term = console.Console(FakeSource(), 20, 4, log_file=log_file)
        term.feed(b"\x1b[31mraw\x1b[0m")
    assert path.read_bytes() == b"\x1b[31mraw\x1b[0m"


def test_pacer_tells_at_once_except_in_a_flood():
    """Echo-sized output is told at once; past FLOOD_BYTES in one interval, at its end."""
    now = [100.0]
    pacer = console.Pacer(clock=lambda: now[0])
    assert pacer.timeout(None) is None
    assert pacer.tell_now(3)
    now[0] += 0.001
    assert pacer.tell_now(5) and pacer.tell_now(0) is False
    assert not pacer.tell_now(console.FLOOD_BYTES)
    assert pacer.timeout(None) == pytest.approx(console.FRAME_INTERVAL - 0.001)
    now[0] += 0.002
    assert not pacer.tell_now(400)
    now[0] += console.FRAME_INTERVAL
    assert pacer.timeout(None) == 0.0
    assert pacer.tell_now(0)
    assert pacer.timeout(5.0) == 5.0 and not pacer.tell_now(0)
    assert pacer.tell_now(10)
