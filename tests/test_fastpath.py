"""terminal.py's shortcuts (Stream, Terminal.draw, Terminal.print_lines) against plain pyte.

The oracle is a plain `pyte.Screen` fed by pyte's own `ByteStream`, with one addition that
does not touch pyte's logic: like `terminal.Terminal`, it keeps the rows that a full-screen
scroll pushes off the top, in a bounded history.  Both are fed the same bytes in the same
reads (a read is the unit pyte decodes UTF-8 in), and afterwards every cell of the screen and
of the history (read back from its compact form), the cursor, its attributes, the modes, the
margins and the scroll count must be equal.  The inputs mix what the shortcuts take (runs
of CR LF lines, many longer than the screen plus the history, ASCII text, SGR and other CSI
sequences) with what must send them back to pyte: wide and combining characters, wrapping,
insert mode, origin mode, scroll regions, reverse screen, charsets in Latin-1 mode, and
sequences split across reads.

A small history (`scrollback=5` on a 20x6 screen) makes skipped lines common; one test uses
the real default with runs of thousands of lines.  The frame test checks the change tracking
that the shortcut rewrites in bulk: a viewer that only applies frames stays exact.
"""

import collections
import os
import random
import threading
import time
import tty

import pyte
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import console
import sources
import terminal
from harness import FakeSource, assert_frames_keep_a_viewer_exact, screen_text

COLUMNS, LINES, SCROLLBACK = 20, 6, 5
PRINTABLE = "".join(chr(code) for code in range(0x20, 0x7F))

TEXT = st.sampled_from([
    "abc", "hello world", "x" * 20, "x" * 25, "中文", "é", "e\u0301", "\x01", "\x7f", "\x00",
    "\t", "\x08", "\x07", "\x1b]0;title\x07", "\x1b[>c",
])
MOVES = st.sampled_from([
    "\r\n", "\n", "\r", "\x1b[H", "\x1b[3;4H", "\x1b[6;1H", "\x1b[5;1H", "\x1b[10B", "\x1bM",
    "\x1bD", "\x1bE", "\x1b7", "\x1b8",
])
EDITS = st.sampled_from([
    "\x1b[2J", "\x1b[K", "\x1b[2L", "\x1b[3M", "\x1b[5P", "\x1b[4@", "\x1b[S", "\x1bc", "\x1b#8",
])
MODES = st.sampled_from([
    "\x1b[2;4r", "\x1b[r", "\x1b[1;2r", "\x1b[?25l", "\x1b[?25h", "\x1b[?7l", "\x1b[?7h",
    "\x1b[4h", "\x1b[4l", "\x1b[20h", "\x1b[20l", "\x1b[?5h", "\x1b[?5l", "\x1b[?6h",
    "\x1b[?6l", "\x1b%@", "\x1b%G", "\x1b(0", "\x1b(B", "\x0e", "\x0f", "\x1b[?1h",
])
STYLES = st.sampled_from([
    "\x1b[1;31mred\x1b[0m", "\x1b[38;5;100m", "\x1b[m", "\x1b[;1m", "\x1b[0;44m", "\x1b[44m",
])


def run_of_lines(count, seed, width=COLUMNS, styled=True):
    """`count` CR LF lines of printable ASCII, some longer than the screen is wide, some with
    SGR sequences between their characters."""
    chooser = random.Random(seed)
    lines = []
    for _ in range(count):
        length = chooser.choice([0, 1, 5, width - 1, width, width + 3, 2 * width + 1,
                                 chooser.randrange(width)])
        line = [chooser.choice(PRINTABLE) for _ in range(length)]
        for _ in range(chooser.choice([0, 0, 1, 3]) if styled else 0):
            line.insert(chooser.randint(0, len(line)), "\x1b[%sm" % chooser.choice(SGR_PARAMS))
        lines.append("".join(line))
    return "".join(line + "\r\n" for line in lines)


SGR_PARAMS = ["", "0", "1;34", "38;5;100", "7", "44", ";1", "01;32", "0;38;2;10;20;30"]
RUNS = st.builds(run_of_lines, st.integers(1, 40), st.integers(0, 1000), st.just(COLUMNS),
                 st.booleans())
INPUT = st.lists(st.one_of(TEXT, MOVES, EDITS, MODES, MODES, STYLES, RUNS, RUNS), max_size=40)

FULL_SCREEN = "\r\n".join("%02d%s" % (row, "#" * (COLUMNS - 2)) for row in range(LINES))
SHORT_RUN = run_of_lines(3 * (LINES + SCROLLBACK), 7, width=8, styled=False)
# Each scenario breaks one condition of the shortcuts: they must step aside and let pyte work.
SCENARIOS = {
    "insert mode": ["abcdef\r\x1b[4hxy", SHORT_RUN],
    "autowrap off": ["\x1b[?7l", "x" * 30, "\r\n", SHORT_RUN, "y" * 45],
    "graphics charset": ["\x1b%@\x1b(0", "lqqk\r\nx  x\r\n" * 10],
    "shifted to G1": ["\x1b%@\x0e", "lqqk\r\nx  x\r\n" * 10, "\x0f", SHORT_RUN],
    "old bottom row": [FULL_SCREEN, "\x1b[H", SHORT_RUN],
    "scroll region": [FULL_SCREEN, "\x1b[2;4r\x1b[3;1H", SHORT_RUN, "\x1b[r", SHORT_RUN],
    "region at the bottom": [FULL_SCREEN, "\x1b[3;6r\x1b[6;1H", SHORT_RUN],
    "reverse screen": ["\x1b[?5h", SHORT_RUN, "\x1b[?5l", SHORT_RUN],
    "new line mode": ["\x1b[20h", SHORT_RUN, "abc\ndef\n"],
    "colours": ["\x1b[1;44m", SHORT_RUN, "\x1b[0m", SHORT_RUN],
    "cursor mid-line": [FULL_SCREEN, "\x1b[6;15H", SHORT_RUN],
    "cursor along a fresh row": [SHORT_RUN, "\x1b[6;15H", SHORT_RUN],
    "hidden cursor": ["\x1b[?25l", SHORT_RUN, "\x1b[?25h"],
}


class Reference(pyte.Screen):
    """Plain pyte, plus Terminal's history rule: the top row of a full-screen scroll is kept."""

    def __init__(self, columns, lines, scrollback):
        super().__init__(columns, lines)
        self.history = collections.deque(maxlen=scrollback)
        self.scrolled = 0

    def index(self):
        if self.cursor.y == self.lines - 1 and self.margins in (None, (0, self.lines - 1)):
            self.history.append(row_cells(self.buffer[0], self.columns))
            self.scrolled += 1
        super().index()


class Slow(terminal.Terminal):
    """terminal.Terminal without its shortcuts: pyte's draw, fed by pyte's own stream."""

    draw = pyte.Screen.draw


def row_cells(row, columns):
    return [row[x] for x in range(columns)]


def state(screen):
    """Everything the console shows or will act on, as plain values."""
    cursor = screen.cursor
    return {
        "screen": [row_cells(screen.buffer[y], screen.columns) for y in range(screen.lines)],
        "history": [row if isinstance(row, list) else row_cells(row, screen.columns)
                    for row in screen.history],
        "cursor": (cursor.x, cursor.y, cursor.hidden, cursor.attrs),
        "modes": (sorted(screen.mode), screen.margins, screen.charset, screen.scrolled),
    }


def split(data, sizes):
    """data cut into reads of the given sizes (cycled), so sequences and UTF-8 straddle reads."""
    reads, position = [], 0
    for size in sizes * (len(data) // max(1, sum(sizes)) + 1):
        if position >= len(data):
            break
        reads.append(data[position : position + size])
        position += size
    if position < len(data):
        reads.append(data[position:])
    return reads


def feed_all(pieces, sizes, columns=COLUMNS, lines=LINES, scrollback=SCROLLBACK):
    """Our terminal through our stream, then plain pyte and our slow terminal through pyte's.

    After each read, our dirty rows must be the slow terminal's; then both are cleared, as
    Console.take_frame does.  After every other read our scrollback compacts the rows that
    scrolled off, as the console's reader does when output pauses, so its history holds both
    compact and pending rows.
    """
    ours, theirs, slow = screens = [
        terminal.Terminal(columns, lines, scrollback=scrollback),
        Reference(columns, lines, scrollback), Slow(columns, lines, scrollback=scrollback)]
    streams = [terminal.Stream(ours), pyte.ByteStream(theirs), pyte.ByteStream(slow)]
    for number, chunk in enumerate(split("".join(pieces).encode(), sizes)):
        for stream in streams:
            stream.feed(chunk)
        assert ours.dirty == slow.dirty
        ours.dirty.clear()
        slow.dirty.clear()
        if number % 2:
            ours.history.compact_pending()
    return screens


@settings(max_examples=1000, deadline=None)
@given(INPUT, st.lists(st.integers(1, 200), min_size=1, max_size=5))
def test_stream_and_terminal_match_plain_pyte(pieces, sizes):
    ours, theirs, _ = feed_all(pieces, sizes)
    assert state(ours) == state(theirs)


@pytest.mark.parametrize("pieces", SCENARIOS.values(), ids=SCENARIOS.keys())
@pytest.mark.parametrize("size", [1, 7, 4096])
def test_shortcuts_step_aside(pieces, size):
    ours, theirs, _ = feed_all(pieces, [size])
    assert state(ours) == state(theirs)


def test_a_one_line_screen():
    ours, theirs, _ = feed_all([SHORT_RUN, "abc"], [7], lines=1)
    assert state(ours) == state(theirs)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.builds(run_of_lines, st.integers(1, 3000), st.integers(0, 1000), st.just(80),
                          st.booleans()), min_size=1, max_size=3),
       st.sampled_from([[4096], [65536], [1000, 7], [1 << 20]]))
def test_long_runs_with_the_real_scrollback(runs, sizes):
    pieces = ["\x1b[32m"] + [piece for run in runs for piece in (run, "tail\x1b[0m")]
    ours, theirs, _ = feed_all(pieces, sizes, columns=80, lines=25,
                               scrollback=terminal.SCROLLBACK_LINES)
    assert state(ours) == state(theirs)


def test_a_long_run_is_counted_not_drawn():
    lines = 10000
    text = "".join("line %d\r\n" % i for i in range(lines)).encode()
    term = terminal.Terminal(80, 25)
    made = []
    original = term._rows
    term._rows = lambda *args: made.append(1) or original(*args)
    terminal.Stream(term).feed(text)
    assert term.scrolled == lines - 24
    assert len(made) <= 24 + terminal.SCROLLBACK_LINES
    assert "".join(cell.data for cell in term.history[-1].values()) == "line %d" % (lines - 25)


@settings(max_examples=200, deadline=None)
@given(INPUT, st.integers(min_value=1, max_value=5))
def test_frames_keep_a_viewer_exact(pieces, every):
    assert_frames_keep_a_viewer_exact(console.Console(FakeSource(), COLUMNS, LINES), pieces, every)


def test_sequences_pyte_cannot_handle_are_ignored():
    term = console.Console(FakeSource(), COLUMNS, LINES)
    term.feed(b"a\x1b[1;2;3Ab\x1b[?1;2rc")
    term.feed(b"\x1b[?6h\x1b[2dd")
    assert screen_text(term).startswith("abc") and "d" in screen_text(term)


def test_pty_reads_are_drained_in_one_go():
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    source = sources.FdSource()
    source.fd = master
    data = b"x" * (sources.READ_LIMIT * 2)
    writer = threading.Thread(target=os.write, args=(slave, data))
    writer.start()
    time.sleep(0.3)
    received = source.read()
    assert len(received) > 4096
    while len(received) < len(data):
        received += source.read() or b""
    writer.join()
    os.close(slave)
    while (chunk := source.read()) is None:
        time.sleep(0.01)
    assert chunk == b""
    source.close()
