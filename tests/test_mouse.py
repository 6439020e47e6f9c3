"""Mouse reporting: the bytes xterm would send, when the program asks and only then.

The expected bytes are written out by hand from xterm's ctlseqs ("Mouse Tracking"), never
computed with our own functions.  A console is fed the mode sequences a program sends and
given RFB pointer events (RFC 6143 §7.5.5: bit 0 left, 1 middle, 2 right, 3 and 4 the wheel);
what it queues for its source is what the program would read.  The end-to-end test with a real
program and a real viewer is in test_mouse_peers.py.
"""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import clipboard
import console
import display
import keymap
import render
import terminal
from harness import FakeSource, text_of

LEFT, MIDDLE, RIGHT = 1, 2, 4
COLUMNS, LINES = 40, 10


def modifiers(*keysyms):
    held = keymap.Modifiers()
    for keysym in keysyms:
        held.update(keysym, True)
    return held


NONE, SHIFT, CONTROL, ALT = modifiers(), modifiers(0xFFE1), modifiers(0xFFE3), modifiers(0xFFE9)


def new_console(*modes):
    term = console.Console(FakeSource(), COLUMNS, LINES)
    term.set_status("")
    term.feed(b"".join(b"\x1b[?%dh" % mode for mode in modes))
    return term


def events(term, *steps):
    """Give the console (button_mask, cell[, modifiers]) steps; what the program reads."""
    for mask, cell, *held in steps:
        term.pointer(mask, cell, held[0] if held else NONE)
    return bytes(term._outbox)


@pytest.mark.parametrize(("encoding", "press", "release"), [
    (None, b"\x1b[M\x20\x25\x23", b"\x1b[M\x23\x25\x23"),
    (terminal.MOUSE_SGR, b"\x1b[<0;5;3M", b"\x1b[<0;5;3m"),
    (terminal.MOUSE_URXVT, b"\x1b[32;5;3M", b"\x1b[35;5;3M"),
    (terminal.MOUSE_UTF8, b"\x1b[M\x20\x25\x23", b"\x1b[M\x23\x25\x23"),
])
def test_each_encoding_writes_a_left_click_as_xterm_does(encoding, press, release):
    assert terminal.mouse_report(encoding, 0, 4, 2) == press
    assert terminal.mouse_report(encoding, 0, 4, 2, release=True) == release


def test_far_cells_are_dropped_by_the_default_encoding_and_kept_by_the_others():
    assert terminal.mouse_report(None, 0, 223, 0) == b""
    assert terminal.mouse_report(None, 0, 221, 0) == b"\x1b[M\x20\xfe\x21"
    assert terminal.mouse_report(terminal.MOUSE_UTF8, 0, 299, 0) == "\x1b[M\x20\u014c\x21".encode()
    assert terminal.mouse_report(terminal.MOUSE_SGR, 0, 299, 149) == b"\x1b[<0;300;150M"


def test_nothing_is_reported_until_the_program_asks():
    term = new_console()
    assert not term.mouse_reporting
    assert events(term, (LEFT, (1, 1)), (0, (2, 2)), (console.WHEEL_UP, (2, 2))) == b""


def test_mode_1000_sends_presses_and_releases_but_no_motion():
    term = new_console(1000, 1006)
    assert term.mouse_reporting
    written = events(term, (0, (1, 1)), (LEFT, (4, 2)), (LEFT, (6, 2)), (0, (6, 2)),
                     (RIGHT, (0, 0)), (0, (0, 0)))
    assert written == (b"\x1b[<0;5;3M" b"\x1b[<0;7;3m" b"\x1b[<2;1;1M" b"\x1b[<2;1;1m")


def test_mode_1002_adds_motion_while_a_button_is_held():
    term = new_console(1002, 1006)
    written = events(term, (0, (1, 1)), (MIDDLE, (1, 1)), (MIDDLE, (2, 1)), (MIDDLE, (2, 1)),
                     (0, (2, 1)), (0, (3, 1)))
    assert written == b"\x1b[<1;2;2M" b"\x1b[<33;3;2M" b"\x1b[<1;3;2m"


def test_mode_1003_reports_motion_without_buttons_as_button_3():
    term = new_console(1003, 1006)
    assert events(term, (0, (1, 1)), (0, (2, 1))) == b"\x1b[<35;2;2M" b"\x1b[<35;3;2M"


def test_the_wheel_goes_to_the_program_instead_of_the_scrollback():
    term = new_console(1000, 1006)
    term.feed(b"\r\n".join(b"line %d" % i for i in range(30)))
    term.take_frame()
    written = events(term, (console.WHEEL_UP, (3, 3)), (0, (3, 3)),
                     (console.WHEEL_DOWN, (3, 3)), (0, (3, 3)))
    assert written == b"\x1b[<64;4;4M" b"\x1b[<65;4;4M"
    assert not term.take_frame().rows, "the view did not move into the scrollback"


def test_control_and_alt_are_reported_and_shift_keeps_the_pointer():
    term = new_console(1000, 1006)
    written = events(term, (LEFT, (0, 0), CONTROL), (0, (0, 0), CONTROL),
                     (LEFT, (0, 0), ALT), (0, (0, 0), ALT),
                     (LEFT, (0, 0), SHIFT), (0, (0, 0), SHIFT))
    assert written == b"\x1b[<16;1;1M\x1b[<16;1;1m\x1b[<8;1;1M\x1b[<8;1;1m"


def test_with_shift_the_wheel_pages_the_scrollback_even_when_reporting():
    term = new_console(1000)
    term.feed(b"\r\n".join(b"line %d" % i for i in range(30)))
    term.take_frame()
    events(term, (console.WHEEL_UP, (0, 0), SHIFT))
    assert term._outbox == b""
    assert text_of(term.take_frame().rows[LINES - 1]).rstrip() == "line %d" % (29 - 3)


def test_mode_9_sends_presses_only_without_modifiers():
    term = new_console(9)
    assert events(term, (LEFT, (0, 0), CONTROL), (0, (0, 0), CONTROL)) == b"\x1b[M\x20\x21\x21"


def test_turning_the_mode_off_gives_the_pointer_back():
    term = new_console(1002, 1006)
    term.feed(b"\x1b[?1002l")
    assert not term.mouse_reporting
    assert events(term, (LEFT, (0, 0)), (0, (0, 0))) == b""


def test_the_most_telling_mode_and_encoding_win():
    term = new_console(1000, 1003, 1005, 1006)
    assert term.terminal.mouse_modes == (terminal.MOUSE_ANY_MOTION, terminal.MOUSE_SGR)


def test_the_console_display_turns_pixels_into_cells():
    term = new_console(1000, 1006)
    shown = display.ConsoleDisplay(term, render.Glyphs(render.load_font(None)[0]))
    cell_width, cell_height = shown.glyphs.cell
    hand = clipboard.Hand(NONE, clipboard.viewer_link())
    shown.pointer(LEFT, 3 * cell_width + 1, 2 * cell_height + cell_height - 1, hand)
    shown.pointer(0, *shown.size, hand)
    assert bytes(term._outbox) == b"\x1b[<0;4;3M\x1b[<0;%d;%dm" % (COLUMNS, LINES)


SGR_REPORTS = re.compile(rb"(?:\x1b\[<\d+;\d+;\d+[Mm])*")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([9, 1000, 1002, 1003]),
       st.lists(st.tuples(st.integers(0, 255), st.integers(0, COLUMNS - 1),
                          st.integers(0, LINES - 1), st.sampled_from([NONE, SHIFT, CONTROL, ALT])),
                max_size=30))
def test_any_pointer_events_make_only_whole_reports_inside_the_screen(tracking, steps):
    term = new_console(tracking, 1006)
    for mask, column, row, held in steps:
        term.pointer(mask, (column, row), held)
    written = bytes(term._outbox)
    assert SGR_REPORTS.fullmatch(written)
    for column, row in re.findall(rb"\x1b\[<\d+;(\d+);(\d+)", written):
        assert 1 <= int(column) <= COLUMNS and 1 <= int(row) <= LINES
