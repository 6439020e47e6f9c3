"""The terminal: pyte's screen and stream, with shortcuts for floods and limits for hostile output.

What.  `Terminal` is a `pyte.Screen` and `Stream` a `pyte.ByteStream`; console.py feeds the
guest's bytes through the one into the other.  Everything here does what pyte would do, only
faster, except where pyte would let cheap bytes cost unbounded time; those limits are listed
at the end.  tests/test_fastpath.py checks all of it against a plain `pyte.Screen`, on every
pyte release that requirements.txt allows.

Change tracking.  pyte keeps a set of dirty lines but marks every line dirty when the screen
scrolls.  `Terminal.index` makes a scroll of the whole screen move the dirty set up instead,
and counts the scroll, which the renderer turns into one CopyRect.  Lines that scroll off the
top go into a bounded `history`, the scrollback, which keeps them compact (scrollback.py).
A line that the text ran past the end of (autowrap) is marked `wrapped`, an attribute of
pyte's line, so that copying (selection.py) joins it to its continuation; a line feed that is
not an autowrap, and erasing the line, take the mark away.

Speed.  Stock pyte parses about 1 MB/s: it makes a new `Char` for every character drawn and
sends every byte of an escape sequence through a generator.  A guest that floods its console
(a boot log, `cat` of a big file) must not cost more than the terminal emulator of an X
desktop, so three shortcuts sit in front of pyte:

* `Stream` finds, with one regular expression, the runs that floods are made of: whole lines
  of printable ASCII ending in CR LF, other text, CSI sequences (`ESC [ ... m`) and single
  control characters, and calls the terminal directly; anything else goes to pyte's parser.
* `Terminal.draw` writes printable ASCII a line-piece at a time from a cache of `Char`s that
  every terminal of the process shares.
* `Terminal.print_lines` takes a run of whole lines.  Once the cursor sits on the bottom row of
  a full-screen scroll region, each line is drawn into a fresh bottom row and scrolled up, so
  the whole run is one shift of the screen and the scrollback.  Only the last screenful plus
  the scrollback can still be seen: older lines of the run are counted, never drawn.  A flood
  of log lines costs a scan, not a parse.

Hostile output.  Some sequences are three bytes that pyte answers with thousands of cell
writes, and a guest can send them without end.  A run of DECALNs (`ESC # 8`, "fill the
screen with E") is one fill, since a second fill changes nothing, and a fill makes each
distinct cell once.  pyte joins a combining mark to the cell before the cursor by normalizing
the whole cell, so a stream of marks costs their count squared; like xterm, a cell keeps at
most `MARKS_PER_CELL` and the rest are dropped.  Whatever a read costs, `Stream.parse` can stop
at a deadline between pieces and go on later, so console.py parses in short slices and never
holds its lock for long.

Mouse.  A program asks for the pointer with xterm's private modes: 9 (presses only), 1000
(presses and releases), 1002 (and motion while a button is held) and 1003 (all motion), and
picks how events are written with 1005 (UTF-8), 1006 (SGR) or 1015 (urxvt); pyte keeps every
private mode it is sent, so `Terminal.mouse_modes` reads them from its mode set, and
`mouse_report` writes one event as xterm does (console.py decides which events there are).

Resizing.  When the screen gets shorter, pyte's `resize` deletes lines inside its scroll
region, which mixes up the rows, and leaves the cursor below the screen.  `Terminal.resize`
cuts rows below the cursor from the bottom instead, and from the top only what it must to
keep the cursor's row, into the scrollback, as xterm does.

pyte internals used: `Screen.buffer`, `dirty`, `cursor`, `mode`, `margins`, the charsets and
`default_char`; `Stream`'s parser generator (`_parser_fsm`, `_taking_plain_text`), its
`csi`/`basic` tables and `_text_pattern`.  That is why requirements.txt pins pyte's version.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import unicodedata

import pyte
from pyte import charsets
from pyte import modes as pyte_modes
from pyte.screens import StaticDefaultDict, wcwidth

from scrollback import Scrollback

log = logging.getLogger("vncterm.terminal")

SCROLLBACK_LINES = 1000
DECAWM, DECSCNM, IRM = pyte_modes.DECAWM, pyte_modes.DECSCNM, pyte_modes.IRM
PARSER_RUN_LIMIT = 64 * 1024  # characters of one escape sequence (an OSC title, say) we keep
STYLE_CACHE_LIMIT = 256
# Shared by every terminal of the process: the Chars of a style, and what an SGR does to a style.
STYLES: dict = {}
RENDITIONS: dict = {}
MARKS_PER_CELL = 5  # xterm's combiningChars: 2 by default, 5 at most
MOUSE_X10, MOUSE_NORMAL, MOUSE_BUTTON_MOTION, MOUSE_ANY_MOTION = 9, 1000, 1002, 1003
MOUSE_UTF8, MOUSE_SGR, MOUSE_URXVT = 1005, 1006, 1015
MOUSE_RELEASE = 3  # the button number of a release, except in SGR, which names the button
MOUSE_MOTION = 32  # added to the button number of a motion event
X10_LIMIT = 255 - 32  # the largest column or row one byte can carry


class Terminal(pyte.Screen):
    """A pyte screen that reports whole-screen scrolls, draws plain text in bulk and bounds
    what costly sequences cost."""

    def __init__(self, columns: int, lines: int, scrollback: int = SCROLLBACK_LINES) -> None:
        super().__init__(columns, lines)
        self.history = Scrollback(scrollback)
        self.scrolled = 0
        self.bells = 0
        self.answer = None
        self._drawing = False

    def index(self) -> None:
        top, bottom = self.margins or (0, self.lines - 1)
        if self.cursor.y != bottom or top != 0 or bottom != self.lines - 1:
            super().index()
            return
        buffer = self.buffer
        self.history.append(buffer[0])
        for y in range(bottom):
            buffer[y] = buffer[y + 1]
        buffer.pop(bottom, None)
        self.scrolled += 1
        self.dirty = {y - 1 for y in self.dirty if y} | {bottom}

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        """pyte's resize, cutting rows from the bottom and, to keep the cursor's row, the top."""
        lines, columns = lines or self.lines, columns or self.columns
        if (lines, columns) == (self.lines, self.columns):
            return
        buffer, cut = self.buffer, max(0, self.cursor.y + 1 - lines)
        if cut:
            self.history.extend(buffer[y] for y in range(cut))
            for y in range(self.lines - cut):
                buffer[y] = buffer[y + cut]
            self.cursor.y -= cut
        for y in range(lines, self.lines):
            buffer.pop(y, None)
        if columns < self.columns:
            for line in buffer.values():
                for x in range(columns, self.columns):
                    line.pop(x, None)
        self.lines, self.columns = lines, columns
        self.dirty.update(range(lines))
        self.set_margins()
        self.ensure_hbounds()

    @property
    def mouse_modes(self) -> tuple[int | None, int | None]:
        """The mouse tracking mode the program turned on, and the encoding it asked for:
        the most telling of each that is set, or None."""
        tracking = next((mode for mode in (MOUSE_ANY_MOTION, MOUSE_BUTTON_MOTION, MOUSE_NORMAL,
                                           MOUSE_X10) if mode << 5 in self.mode), None)
        encoding = next((mode for mode in (MOUSE_SGR, MOUSE_URXVT, MOUSE_UTF8)
                         if mode << 5 in self.mode), None)
        return tracking, encoding

    def draw(self, data: str) -> None:
        """pyte's draw, noting the lines it wraps."""
        self._drawing = True
        try:
            self._draw(data)
        finally:
            self._drawing = False

    def linefeed(self) -> None:
        """pyte's; called from draw it is an autowrap, which marks the line left behind."""
        self.buffer[self.cursor.y].wrapped = self._drawing
        super().linefeed()

    def erase_in_display(self, how: int = 0, *args, **kwargs) -> None:
        super().erase_in_display(how, *args, **kwargs)
        erased = {0: range(self.cursor.y, self.lines), 1: range(self.cursor.y + 1)}.get(
            how, range(self.lines))
        for y in erased:
            self.buffer[y].wrapped = False

    def _draw(self, data: str) -> None:
        """pyte's draw; printable ASCII goes in a line-piece at a time."""
        cursor = self.cursor
        if not data.isascii():
            super().draw(self._without_excess_marks(data) if MARK.search(data) else data)
            return
        if not (self._plain_text_mode() and cursor.x <= self.columns
                and DECAWM in self.mode and data.isprintable()):
            super().draw(data)
            return
        chars = self._chars()
        while data:
            if cursor.x == self.columns:
                self.dirty.add(cursor.y)
                self.carriage_return()
                self.linefeed()
            room = self.columns - cursor.x
            piece, data = data[:room], data[room:]
            self.buffer[cursor.y].update(enumerate(map(chars.__getitem__, piece), cursor.x))
            cursor.x += len(piece)
        self.dirty.add(cursor.y)

    def _without_excess_marks(self, data: str) -> str:
        """data less the combining marks that would stack more than MARKS_PER_CELL on a cell.

        A dropped mark does nothing at all, as in xterm; pyte would first wrap a cursor that
        waits past the last column.
        """
        stacked = self._marks_before_cursor()
        kept = []
        for char in data:
            if unicodedata.combining(char) and wcwidth(char) == 0:
                stacked += 1
                if stacked > MARKS_PER_CELL:
                    continue
            else:
                stacked = 0
            kept.append(char)
        return "".join(kept)

    def _marks_before_cursor(self) -> int:
        """How many code points the cell that a combining mark would join has after its first."""
        x, y = self.cursor.x, self.cursor.y
        if x:
            cell = self.buffer[y][min(x, self.columns) - 1]
        elif y:
            cell = self.buffer[y - 1][self.columns - 1]
        else:
            return 0
        return max(0, len(cell.data) - 1)

    def alignment_display(self) -> None:
        """pyte's DECALN (every cell's character becomes E), with each new cell made once."""
        self.dirty.update(range(self.lines))
        aligned = AlignedChars()
        columns = range(self.columns)
        for y in range(self.lines):
            row = self.buffer[y]
            row.update(enumerate(map(aligned.__getitem__, map(row.__getitem__, columns))))

    def select_graphic_rendition(self, *attrs: int) -> None:
        """pyte's SGR, remembered: the result depends only on these arguments."""
        key = (self.cursor.attrs, attrs, DECSCNM in self.mode)
        result = RENDITIONS.get(key)
        if result is None:
            super().select_graphic_rendition(*attrs)
            if len(RENDITIONS) >= STYLE_CACHE_LIMIT:
                RENDITIONS.clear()
            result = RENDITIONS[key] = self.cursor.attrs
        self.cursor.attrs = result

    def print_lines(self, lines: list[str]) -> None:
        """Each line (printable ASCII and SGR sequences) followed by CR LF."""
        for number, line in enumerate(lines):
            if self._scrolls_plainly():
                self._scroll_in(lines[number:])
                return
            for index, piece in enumerate(SGR.split(line)):
                if index % 2:
                    self.select_graphic_rendition(*csi_numbers(piece))
                elif piece:
                    self.draw(piece)
            self.carriage_return()
            self.linefeed()

    def _scrolls_plainly(self) -> bool:
        """Would a line printed now go into fresh bottom rows that then scroll up?

        True after a line feed on the bottom row of a full-screen scroll region: the cursor is
        at the start of the bottom row, which is empty and already dirty.  Printing a line
        there (wrapping if it is long) and a line feed leaves the same state.
        """
        bottom = self.lines - 1
        return (self.cursor.x == 0 and self.cursor.y == bottom and bottom > 0
                and self.margins in (None, (0, bottom))
                and bottom not in self.buffer and bottom in self.dirty
                and DECAWM in self.mode and self._plain_text_mode())

    def _scroll_in(self, lines: list[str]) -> None:
        """What printing each line into fresh bottom rows and scrolling would do, in one shift.

        A line takes one row per `columns` characters, at least one.  Rows scrolled off the
        top go to the history, which keeps only its last `maxlen`: of a long run, only the
        lines that end up on the screen or in the history become rows; of the others only
        the SGR sequences are applied, for the attributes they leave behind.
        """
        bottom, buffer = self.lines - 1, self.buffer
        visible = SGR.sub("", "\n".join(lines)).split("\n")
        if max(map(len, visible)) <= self.columns:
            heights = [1] * len(lines)
        else:
            heights = [max(1, -(-len(text) // self.columns)) for text in visible]
        first, needed = len(lines), bottom + self.history.maxlen
        while first and needed > 0:
            first -= 1
            needed -= heights[first]
        for params in SGR.findall("".join(lines[:first])):
            self.select_graphic_rendition(*csi_numbers(params))
        rows = [buffer[y] for y in range(bottom)]
        blank = self.default_char
        for line in lines[first:]:
            rows += self._rows(line, blank)
        self.history.extend(rows[:-bottom])
        for y in range(bottom):
            buffer[y] = rows[y - bottom]
        count = sum(heights)
        self.scrolled += count
        self.dirty = {y - count for y in self.dirty if y >= count} | set(
            range(max(0, bottom - count), self.lines))

    def _rows(self, line: str, blank) -> list:
        """The rows (as the buffer makes them) a line fills from column 0, wrapping."""
        row, rows, x = StaticDefaultDict(blank), [], 0
        for index, piece in enumerate(SGR.split(line)):
            if index % 2:
                self.select_graphic_rendition(*csi_numbers(piece))
                continue
            chars = self._chars()
            while piece:
                if x == self.columns:
                    row.wrapped = True
                    rows.append(row)
                    row, x = StaticDefaultDict(blank), 0
                part, piece = piece[: self.columns - x], piece[self.columns - x :]
                row.update(enumerate(map(chars.__getitem__, part), x))
                x += len(part)
        rows.append(row)
        return rows

    def _plain_text_mode(self) -> bool:
        """Do printable ASCII characters simply overwrite cells: no insert mode, no charset?"""
        charset = self.g1_charset if self.charset else self.g0_charset
        return charset is charsets.LAT1_MAP and IRM not in self.mode

    def _chars(self) -> StyledChars:
        """The cursor's attributes applied to characters, each made once."""
        attrs = self.cursor.attrs
        chars = STYLES.get(attrs)
        if chars is None:
            if len(STYLES) >= STYLE_CACHE_LIMIT:
                STYLES.clear()
            chars = STYLES[attrs] = StyledChars(attrs)
        return chars

    def bell(self, *args) -> None:
        self.bells += 1

    def write_process_input(self, data: str) -> None:
        if self.answer is not None:
            self.answer(data.encode())


def mouse_report(encoding: int | None, button: int, column: int, row: int,
                 release: bool = False) -> bytes:
    """One mouse event as xterm writes it; button is xterm's number with the modifier and
    motion bits added, column and row count from 0.

    A release is button 3 (`MOUSE_RELEASE`) except in SGR, which keeps the button and ends
    in "m".  The default encoding holds a coordinate in one byte: xterm sends nothing for a
    cell beyond `X10_LIMIT`, and neither do we.
    """
    x, y = column + 1, row + 1
    if encoding == MOUSE_SGR:
        return b"\x1b[<%d;%d;%d%s" % (button, x, y, b"m" if release else b"M")
    if release:
        button = button & ~3 | MOUSE_RELEASE
    if encoding == MOUSE_URXVT:
        return b"\x1b[%d;%d;%dM" % (button + 32, x, y)
    if encoding == MOUSE_UTF8:
        return ("\x1b[M" + chr(button + 32) + chr(x + 32) + chr(y + 32)).encode()
    if x > X10_LIMIT or y > X10_LIMIT:
        return b""
    return b"\x1b[M" + bytes((button + 32, x + 32, y + 32))


class StyledChars(dict):
    """Characters with one set of attributes: the pyte Char for each, made on first use."""

    def __init__(self, attrs) -> None:
        super().__init__()
        self.attrs = attrs

    def __missing__(self, data: str):
        char = self[data] = self.attrs._replace(data=data)
        return char


class AlignedChars(dict):
    """Each cell with its character replaced by E (DECALN), made once per distinct cell."""

    def __missing__(self, cell):
        aligned = self[cell] = cell._replace(data="E")
        return aligned


def mark_pattern() -> re.Pattern:
    """One character with a combining class: what pyte stacks on the cell before the cursor."""
    marks = (chr(code) for code in range(0x300, 0x20000) if unicodedata.combining(chr(code)))
    return re.compile("[%s]" % "".join(map(re.escape, marks)))


MARK = mark_pattern()
SGR = re.compile(r"\x1b\[([0-9;]*)m")
LINES = re.compile(r"(?:[ -~]*(?:\x1b\[[0-9;]*m[ -~]*)*\r\n)+")


@functools.lru_cache(maxsize=1024)
def csi_numbers(params: str) -> tuple[int, ...]:
    """A CSI sequence's parameters as pyte reads them: empty is 0, at most 9999."""
    return tuple(min(int(number or 0), 9999) for number in params.split(";"))


class Stream(pyte.ByteStream):
    """pyte's byte stream, with the runs that floods are made of sent straight to the terminal.

    In the parser's ground state, at the start of a line, `LINES` takes a run of whole lines of
    printable ASCII and SGR sequences, each ending in CR LF (`Terminal.print_lines`).
    Elsewhere `_pieces` takes other text (`draw`), a CSI sequence of digits and semicolons,
    one control character, or a run of DECALNs (one `alignment_display`, which is idempotent).
    Whatever neither matches (other escapes, OSC, C1 codes, a
    sequence split across reads) goes to pyte's parser one character at a time, as pyte itself
    does.  Trying `LINES` only where a line starts keeps the scan linear.  A sequence pyte
    cannot handle is ignored (pyte raises TypeError for `ESC [ 1;2;3 A`, AssertionError for
    some in origin mode) and the cursor put back on the screen: pyte would lose the rest of the
    read, and the exception would stop the console.  An escape sequence that never ends (an
    OSC string, a CSI parameter list) is dropped after `PARSER_RUN_LIMIT` characters, because
    pyte would collect it without limit.
    """

    _pieces = re.compile(
        r"(?P<text>%s)" % pyte.Stream._text_pattern.pattern
        + r"|\x1b\[(?P<private>\??)(?P<params>[0-9;]*)(?P<final>[@-~])"
        + r"|(?P<control>[\x07-\x0d])"
        + r"|(?P<alignment>(?:\x1b#8)+)")

    def attach(self, screen) -> None:
        self._parser_run = 0
        super().attach(screen)
        self._csi = {final: getattr(screen, name) for final, name in self.csi.items()}
        self._controls = {char: getattr(screen, name) for char, name in self.basic.items()}

    def feed(self, data: bytes) -> None:
        self.parse(self.decode(data))

    def decode(self, data: bytes) -> str:
        """A read as text, the way pyte decodes it (UTF-8 split across reads is kept)."""
        return self.utf8_decoder.decode(data) if self.use_utf8 else data.decode("latin-1")

    def parse(self, text: str, position: int = 0, deadline: float = math.inf) -> int:
        """Parse text from position on, stopping early once time.monotonic() passes deadline.

        Returns where it stopped (len(text) when it got through); the next call goes on
        from there.  The deadline is checked between pieces, after at least one.
        """
        end = len(text)
        while position < end:
            position = self._parse_piece(text, position)
            if time.monotonic() >= deadline:
                break
        return position

    def _parse_piece(self, text: str, position: int) -> int:
        """Parse the piece of text that starts at position; where the next one starts."""
        if not self._taking_plain_text:
            self._taking_plain_text = self._send_to_parser(text[position])
            return position + 1
        if position == 0 or text[position - 1] == "\n":
            run = LINES.match(text, position)
            if run:
                self.listener.print_lines(run[0].split("\r\n")[:-1])
                return run.end()
        piece = self._pieces.match(text, position)
        if piece is None:
            self._taking_plain_text = self._send_to_parser(text[position])
            return position + 1
        kind = piece.lastgroup
        if kind == "text":
            self.listener.draw(piece["text"])
        elif kind == "control":
            self._controls[piece["control"]]()
        elif kind == "alignment":
            self.listener.alignment_display()
        else:
            self._csi_sequence(piece["private"], piece["params"], piece["final"])
        return piece.end()

    def _csi_sequence(self, private: str, params: str, final: str) -> None:
        handler = self._csi.get(final, self.listener.debug)
        try:
            if private:
                handler(*csi_numbers(params), private=True)
            else:
                handler(*csi_numbers(params))
        except Exception:
            log.debug("ignored CSI %s%s%s", private, params, final, exc_info=True)
            self._recover()

    def _send_to_parser(self, char: str) -> bool | None:
        """One character to pyte's parser (pyte 0.8.0 has no such method of its own)."""
        self._parser_run += 1
        if self._parser_run > PARSER_RUN_LIMIT:
            log.debug("dropped an escape sequence longer than %d characters", PARSER_RUN_LIMIT)
            self._reset_parser()
            return self._taking_plain_text
        try:
            taking_plain_text = self._parser.send(char)
        except Exception:
            log.debug("ignored an escape sequence ending in %r", char, exc_info=True)
            self._reset_parser()
            self._recover()
            return self._taking_plain_text
        if taking_plain_text:
            self._parser_run = 0
        return taking_plain_text

    def _reset_parser(self) -> None:
        """A fresh parser in the ground state: pyte's generator dies with its exception."""
        self._parser = self._parser_fsm()
        self._taking_plain_text = next(self._parser)
        self._parser_run = 0

    def _recover(self) -> None:
        """Put the cursor back on the screen after a handler that failed half-way."""
        self.listener.ensure_vbounds()
        self.listener.ensure_hbounds()
