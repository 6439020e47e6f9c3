"""Console output that is cheap to send and costly to take: it must not freeze the console,
hold up the viewers' keys or shutdown, or fill dom0's disk through our log."""

import logging
import math
import sys
import unicodedata

import pyte
from hypothesis import given, settings
from hypothesis import strategies as st

import console
import peers
import terminal
from harness import PIECES, FakeSource, screen_text


class FullSource(FakeSource):
    """A console program that never reads its input."""

    def write(self, data):
        return 0


def test_a_flood_of_unread_answers_is_logged_once(caplog):
    term = console.Console(FullSource(), 20, 4)
    term.write(b"x" * console.OUTBOX_LIMIT)
    with caplog.at_level(logging.WARNING, logger="vncterm.console"):
        term.feed(b"\x1b[6n\x1b[c" * 10000)
    dropped = [r for r in caplog.records if "not reading its input" in r.getMessage()]
    assert len(dropped) == 1


class Recorder(FakeSource):
    """A source that notes each write and whether the console lock was free for it."""

    def __init__(self, events):
        super().__init__()
        self.events = events
        self.term = None

    def write(self, data):
        self.events.append(("write", data, self.term.lock.locked()))
        return super().write(data)


def sliced_console(events, on_slice):
    """A console whose parse stops after every piece (a slice as short as it gets), calling
    on_slice(term, number) inside each slice."""
    source = Recorder(events)
    term = source.term = console.Console(source, 20, 4)
    parse = term.stream.parse
    slices = []

    def one_piece(text, position, deadline):
        slices.append(position)
        events.append(("slice", len(slices), term.lock.locked()))
        on_slice(term, len(slices))
        return parse(text, position, -math.inf)

    term.stream.parse = one_piece
    return term


def test_a_key_typed_during_a_slice_goes_out_before_the_next_with_the_lock_free():
    events = []
    term = sliced_console(events, lambda term, number: number == 1 and term.write(b"k"))
    term.feed(b"abc\x1b[1mdef\x1b[0mghi")
    assert events[:3] == [("slice", 1, True), ("write", b"k", False), ("slice", 2, True)]
    assert [event[0] for event in events].count("slice") == 5
    assert screen_text(term).startswith("abcdefghi")


@settings(max_examples=100, deadline=None)
@given(st.lists(PIECES | st.just("\x1b#8") | st.just("e\u0301\u0302"), max_size=30))
def test_parsing_in_slices_changes_nothing(pieces):
    data = "".join(pieces).encode()
    term = sliced_console([], lambda term, number: None)
    term.feed(data)
    whole = terminal.Terminal(20, 4)
    terminal.Stream(whole).feed(data)
    assert cells(term.terminal) == cells(whole)
    assert (term.terminal.cursor.x, term.terminal.cursor.y) == (whole.cursor.x, whole.cursor.y)


def test_stop_is_heard_between_slices():
    events = []

    def stop_in_the_second(term, number):
        if number == 2:
            term._stopping = True

    term = sliced_console(events, stop_in_the_second)
    term.feed(b"abc\x1b[1mdef\x1b[0mghi")
    assert [event[0] for event in events].count("slice") == 2
    assert screen_text(term).startswith("abc   ")


class CountingTerminal(terminal.Terminal):
    def __init__(self, *args):
        super().__init__(*args)
        self.fills = 0

    def alignment_display(self):
        self.fills += 1
        super().alignment_display()


def test_a_run_of_decalns_is_one_screen_fill_and_shows_what_pyte_shows():
    ours = CountingTerminal(20, 4)
    theirs = pyte.Screen(20, 4)
    data = b"\x1b[31mab\r\n\x1b[44mc" + b"\x1b#8" * 5000 + b"\x1b[Hx"
    terminal.Stream(ours).feed(data)
    pyte.ByteStream(theirs).feed(data)
    assert ours.fills == 1
    assert cells(ours) == cells(theirs)


def test_combining_marks_are_capped_per_cell():
    marks = "\u0301\u0302\u0303\u0304\u0305\u0306\u0307\u0308" * 1000
    term = console.Console(FakeSource(), 20, 4)
    term.feed(("a" + marks[:3] + "b").encode())
    term.feed(("c" + marks).encode())
    term.feed(marks.encode())
    term.feed(b"\r\n" + ("d" * 20).encode() + marks.encode())
    row, next_row = term.terminal.buffer[0], term.terminal.buffer[1]
    assert row[0].data == unicodedata.normalize("NFC", "a" + marks[:3])
    assert row[1].data == "b"
    assert len(row[2].data) <= 1 + terminal.MARKS_PER_CELL
    assert unicodedata.normalize("NFD", row[2].data).startswith("c\u0301")
    assert len(next_row[19].data) == 1 + terminal.MARKS_PER_CELL


def cells(screen):
    return [[screen.buffer[y][x] for x in range(screen.columns)] for y in range(screen.lines)]


BURST = r"""
import os, sys
burst = ("\x1b#8" * 20000 + "e" + "\u0301" * 30000 + "\x1b#8x" * 2000).encode()
os.write(1, burst)
open(sys.argv[1], "w").close()
while True:
    os.write(1, burst)
"""


def test_vncterm_stops_at_once_while_a_program_floods_costly_output(artifacts, start_vncterm):
    """A program that never stops printing DECALNs and combining marks: SIGTERM still ends
    vncterm cleanly (stop() asserts that it exits, with status 0, within its deadline)."""
    script, started = artifacts / "burst.py", artifacts / "started"
    script.write_text(BURST)
    server = start_vncterm(f"{sys.executable} {script} {started}")
    assert peers.wait_until(started.exists, timeout=60)
    server.stop(timeout=10)
