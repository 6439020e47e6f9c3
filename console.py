"""The text console: a byte source feeding a pyte terminal, with change tracking for viewers.

A console has one *source* of bytes: an existing pty or tty (`PtySource`, e.g. the one Xen's
xenconsoled names in xenstore), a serial port or pyserial URL (`SerialSource`), or a command
spawned in a new pty (`CommandSource`, also the embedded default of the user's shell).  One
reader thread per console waits on the source and on a wake-up pipe with `selectors`, feeds
what arrives into pyte under the console lock, and pokes every listener (the viewer threads).

Sources come and go: a guest reboots, a serial cable is pulled, a command exits.  The reader
thread then shows a status line on the bottom row, keeps every viewer connected, and reopens
the source once a second for as long as it stays away.  A command is restarted only when asked
to; otherwise `on_closed` tells the server, which exits once the last viewer has left.

Change tracking is the part the performance depends on.  pyte keeps a set of dirty lines but
marks every line dirty when the screen scrolls.  `Terminal` overrides `index` so that a scroll
of the whole screen moves the dirty set up instead and counts the scroll; the renderer turns
the count into one CopyRect.  Lines that scroll off the top go into a bounded scrollback that
Shift+PageUp/PageDown and the mouse wheel page through.  Nothing is rendered here: the display
calls `take_frame()` when a viewer wants pixels and gets the scroll count, the rows that
changed and their cells, all read under the lock in one go.

Speed.  Stock pyte parses about 1 MB/s: it makes a new `Char` for every character drawn and
sends every byte of an escape sequence through a generator.  A guest that floods its console
(a boot log, `cat` of a big file) must not cost more than the terminal emulator of an X
desktop, so three shortcuts sit in front of pyte, each doing exactly what pyte would:

* `Stream` finds, with one regular expression, the runs that floods are made of: whole lines
  of printable ASCII ending in CR LF, other text, CSI sequences (`ESC [ ... m`) and single
  control characters, and calls the terminal directly; anything else goes to pyte's parser.
* `Terminal.draw` writes printable ASCII a line-piece at a time from a cache of `Char`s.
* `Terminal.print_lines` takes a run of whole lines.  Once the cursor sits on the bottom row of
  a full-screen scroll region, each line is drawn into a fresh bottom row and scrolled up, so
  the whole run is one shift of the screen and the scrollback.  Only the last screenful plus
  the scrollback can still be seen: older lines of the run are counted, never drawn.  A flood
  of log lines costs a scan, not a parse.

FdSource reads everything the pty has (up to `READ_LIMIT`) before the terminal parses it, so
that a flood arrives in big runs; a keystroke's echo still goes through at once.  Viewers are
told about new output at once, except in a flood: once more than `FLOOD_BYTES` arrived within
one `FRAME_INTERVAL`, the rest of that interval's output is told at its end (`Pacer`).  A pty
hands a flood over in reads of a few hundred bytes; telling every viewer about each would
wake every viewer thread thousands of times a second to render frames nobody can read, and
take the CPU from the parser.  Typing and its echo stay far below the threshold and are never
delayed.  The display renders a new frame only after such a notice (`told`), so all viewers
that ask in between get the same frame and share its encoding.
tests/test_fastpath.py checks all of this against a plain `pyte.Screen`.

Writes to the source (keys, paste, pyte's answers to terminal queries) never block a viewer
thread: what the source cannot take at once waits in a bounded outbox that the reader thread
flushes when the source becomes writable.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import functools
import itertools
import logging
import math
import os
import re
import selectors
import shlex
import signal
import struct
import subprocess
import termios
import threading
import time
import tty
import unicodedata
from dataclasses import dataclass, field

import pyte
from pyte import charsets
from pyte import modes as pyte_modes
from pyte.screens import StaticDefaultDict, wcwidth

import keymap
import lograte

log = logging.getLogger("vncterm.console")

SCROLLBACK_LINES = 1000
OUTBOX_LIMIT = 1024 * 1024  # room for a few pastes of rfb.CUT_TEXT_LIMIT
REOPEN_DELAY = 1.0
WHEEL_LINES = 3
WHEEL_UP, WHEEL_DOWN = 1 << 3, 1 << 4
PAGE_UP, PAGE_DOWN = 0xFF55, 0xFF56
DECCKM = 1 << 5  # pyte keeps private mode n as n << 5 but names no constant for mode 1
DECAWM, DECSCNM, IRM = pyte_modes.DECAWM, pyte_modes.DECSCNM, pyte_modes.IRM
READ_LIMIT = 256 * 1024
FRAME_INTERVAL = 1 / 60
FLOOD_BYTES = 1024
SLICE_SECONDS = 0.01
PARSER_RUN_LIMIT = 64 * 1024  # characters of one escape sequence (an OSC title, say) we keep
STYLE_CACHE_LIMIT = 256
MARKS_PER_CELL = 5


# --- Sources -----------------------------------------------------------------------------


class FdSource:
    """A source backed by one non-blocking file descriptor (a pty)."""

    fd: int | None = None
    restarts = True

    def fileno(self) -> int | None:
        return self.fd

    def read(self) -> bytes | None:
        """What is there (up to READ_LIMIT): None if nothing yet, b"" once the other end hung up."""
        chunks, size = [], 0
        while size < READ_LIMIT:
            data = self._read_once()
            if not data:
                if data == b"" and not chunks:
                    return b""
                break
            chunks.append(data)
            size += len(data)
        return b"".join(chunks) or None

    def _read_once(self) -> bytes | None:
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return None
        except OSError as error:
            if error.errno == errno.EIO:
                return b""
            raise

    def write(self, data: bytes) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class PtySource(FdSource):
    """An existing pty or tty, such as the guest console xenconsoled hands out."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = path

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        if os.isatty(self.fd):
            tty.setraw(self.fd, termios.TCSANOW)


class CommandSource(FdSource):
    """A command run in a new pty of its own, with TERM set and the window size of the console."""

    def __init__(self, command: str, columns: int, lines: int, restart: bool = False) -> None:
        self.argv = shlex.split(command)
        self.name = command
        self.size = (columns, lines)
        self.restarts = restart
        self.process: subprocess.Popen | None = None

    def open(self) -> None:
        master, slave = os.openpty()
        columns, lines = self.size
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(columns), LINES=str(lines))
        try:
            self.process = subprocess.Popen(
                self.argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                start_new_session=True, preexec_fn=_take_controlling_terminal,
            )
        except OSError:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.fd = master

    def close(self) -> None:
        super().close()
        if self.process is not None:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGHUP)
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None


def _take_controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class SerialSource:
    """A serial port or anything pyserial's serial_for_url opens (socket://, rfc2217://)."""

    restarts = True

    def __init__(self, url: str, baud: int) -> None:
        self.url = url
        self.name = url
        self.baud = baud
        self.port = None

    def open(self) -> None:
        import serial

        try:
            self.port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0)
        except (serial.SerialException, ValueError) as error:
            raise OSError(str(error)) from error

    def fileno(self) -> int | None:
        try:
            return self.port.fileno()
        except (AttributeError, NotImplementedError):
            return None

    def read(self) -> bytes | None:
        import serial

        try:
            return self.port.read(max(1, self.port.in_waiting)) or None
        except (serial.SerialException, OSError):
            return b""

    def write(self, data: bytes) -> int:
        import serial

        try:
            return self.port.write(data) or 0
        except (serial.SerialException, OSError):
            return 0

    def close(self) -> None:
        if self.port is not None:
            self.port.close()
            self.port = None


# --- Terminal --------------------------------------------------------------------------


class Terminal(pyte.Screen):
    """A pyte screen that reports whole-screen scrolls and draws plain text in bulk."""

    def __init__(self, columns: int, lines: int, scrollback: int = SCROLLBACK_LINES) -> None:
        super().__init__(columns, lines)
        self.history: collections.deque = collections.deque(maxlen=scrollback)
        self.scrolled = 0
        self.bells = 0
        self.answer = None
        self._styles: dict = {}
        self._renditions: dict = {}

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

    def draw(self, data: str) -> None:
        """pyte's draw; printable ASCII goes in a line-piece at a time."""
        cursor = self.cursor
        if not data.isascii():
            super().draw(self._without_excess_marks(data))
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

        pyte combines each mark with the cell before the cursor by normalizing the whole
        cell, so a cell's cost grows with its marks and a stream of marks costs their count
        squared.  xterm keeps at most five (`combiningChars`) and drops the rest; so do we.
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
        result = self._renditions.get(key)
        if result is None:
            super().select_graphic_rendition(*attrs)
            if len(self._renditions) >= STYLE_CACHE_LIMIT:
                self._renditions.clear()
            result = self._renditions[key] = self.cursor.attrs
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
        chars = self._styles.get(attrs)
        if chars is None:
            if len(self._styles) >= STYLE_CACHE_LIMIT:
                self._styles.clear()
            chars = self._styles[attrs] = StyledChars(attrs)
        return chars

    def bell(self, *args) -> None:
        self.bells += 1

    def write_process_input(self, data: str) -> None:
        if self.answer is not None:
            self.answer(data.encode())


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
    Elsewhere `_pieces` takes other text (`draw`), a CSI sequence of digits and semicolons, or
    one control character.  Whatever neither matches (other escapes, OSC, C1 codes, a
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


@dataclass
class Frame:
    """What changed on the console since the last frame, ready to render.

    First scroll the previous picture up by `scroll` rows, then repaint `rows`, a map from
    row number to that row's cells (pyte Chars).  `cursor` is the (column, row) to show as a
    cursor, or None.
    """

    scroll: int
    rows: dict[int, list] = field(default_factory=dict)
    cursor: tuple[int, int] | None = None


class Pacer:
    """When the reader tells viewers about new output: at once, except in a flood, where the
    output beyond FLOOD_BYTES in one FRAME_INTERVAL is told when the interval ends."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.started = float("-inf")
        self.bytes = 0
        self.untold = False

    def timeout(self, idle: float | None) -> float | None:
        """How long the reader may wait for input: until the interval ends, if output is untold."""
        if not self.untold:
            return idle
        return max(0.0, self.started + FRAME_INTERVAL - self.clock())

    def tell_now(self, size: int) -> bool:
        """Note `size` bytes of new output (maybe none); should the viewers be told now?"""
        now = self.clock()
        ended = now - self.started >= FRAME_INTERVAL
        if ended:
            self.started, self.bytes = now, 0
        self.bytes += size
        self.untold = self.untold or size > 0
        if self.untold and (ended or self.bytes <= FLOOD_BYTES):
            self.untold = False
            return True
        return False


class Console:
    """A source, the terminal it feeds, and the viewers to tell when something changed."""

    def __init__(self, source, columns: int, lines: int, log_file=None, on_closed=None) -> None:
        self.source = source
        self.columns, self.lines = columns, lines
        self.lock = threading.Lock()
        self.terminal = Terminal(columns, lines)
        self.terminal.answer = self.write
        self.stream = Stream(self.terminal)
        self.status = f"waiting for {source.name}"
        self.notice = ""
        self.log_file = log_file
        self.on_closed = on_closed
        self.listeners: set = set()
        self.told = 0
        self._notices = itertools.count(1)
        self._view_offset = 0
        self._full = True
        self._cursor = None
        self._outbox = bytearray()
        self._write_lock = threading.Lock()
        self._dropped = lograte.RateLimitedLog(
            log, logging.WARNING, "console is not reading its input: %d bytes dropped")
        self._stopping = False
        self._wake_r = self._wake_w = None
        self._thread = threading.Thread(target=self._run, name="console-reader", daemon=True)

    def start(self) -> None:
        """Start the reader thread (a console that is only fed by hand needs none)."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join()
        self.source.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # The reader thread.

    def _run(self) -> None:
        while not self._stopping:
            try:
                self.source.open()
            except OSError as error:
                reason = error.strerror or error
                if not self.source.restarts:
                    log.error("cannot start %s: %s", self.source.name, reason)
                    self._closed(f"cannot start {self.source.name}: {reason}")
                    return
                self.set_status(f"waiting for {self.source.name}: {reason}")
                self._sleep(REOPEN_DELAY)
                continue
            log.info("console %s opened", self.source.name)
            self.set_status("")
            self._pump()
            self.source.close()
            if self._stopping:
                break
            log.info("console %s closed", self.source.name)
            if not self.source.restarts:
                self._closed(f"console closed: {self.source.name}")
                return
            self.set_status(f"console closed: {self.source.name}")
            self._sleep(REOPEN_DELAY)

    def _closed(self, status: str) -> None:
        """The source is gone for good: show why, and tell the server."""
        self.set_status(status)
        if self.on_closed:
            self.on_closed()

    def _pump(self) -> None:
        """Move bytes between the source and the terminal until the source closes."""
        pacer = Pacer()
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            fd = self.source.fileno()
            if fd is not None:
                selector.register(fd, selectors.EVENT_READ)
            self._register_watch(selector)
            while not self._stopping:
                if fd is not None:
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._outbox else 0)
                    selector.modify(fd, events)
                timeout = pacer.timeout(None if fd is not None else 0.1)
                ready = selector.select(timeout)
                if any(key.fd == self._wake_r for key, _ in ready):
                    os.read(self._wake_r, 4096)
                self._flush()
                data = self.source.read()
                if data == b"":
                    return
                if data:
                    self._parse(data, pacer)
                elif pacer.tell_now(0):
                    self._notify()

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if stop() is called or the source's watch fires."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            self._register_watch(selector)
            if any(key.fd == self._wake_r for key, _ in selector.select(seconds)):
                os.read(self._wake_r, 4096)

    def _register_watch(self, selector) -> None:
        """A source may offer watch_fileno(): an fd that says "look at me again" (xen.py)."""
        watch = getattr(self.source, "watch_fileno", None)
        fd = watch() if watch else None
        if fd is not None:
            selector.register(fd, selectors.EVENT_READ)

    def _wake(self) -> None:
        if self._wake_w is None:
            return
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass

    def feed(self, data: bytes) -> None:
        """Parse bytes from the source and tell the viewers."""
        self._parse(data, Pacer())
        self._notify()

    def _parse(self, data: bytes, pacer: Pacer) -> None:
        """Parse a read in slices of at most SLICE_SECONDS under the lock.

        Between slices the lock is free, so viewers can take frames and read the modes,
        their keys go out to the source, the viewers are told as the pacer says, and stop()
        is heard: a read that is slow to parse delays the console, never freezes it.
        """
        if self.log_file is not None:
            self.log_file.write(data)
            self.log_file.flush()
        text, position, untold = self.stream.decode(data), 0, len(data)
        while True:
            with self.lock:
                position = self.stream.parse(text, position, time.monotonic() + SLICE_SECONDS)
            if pacer.tell_now(untold):
                self._notify()
            untold = 0
            if position == len(text) or self._stopping:
                return
            self._flush()
            time.sleep(0)  # a thread waiting for the lock gets it now, not after the read

    def _notify(self) -> None:
        """Tell the viewers that the screen changed; `told` counts these (from any thread)."""
        self.told = next(self._notices)
        for listener in list(self.listeners):
            listener()

    def set_status(self, status: str) -> None:
        """The source's state, shown on the bottom row while not empty."""
        with self.lock:
            if status != self.status:
                self.status = status
                self._full = True
        self._notify()

    def set_notice(self, notice: str) -> None:
        """A hint shown on the bottom row while the source has no status to show."""
        with self.lock:
            if notice != self.notice:
                self.notice = notice
                self._full = True
        self._notify()

    # Writing to the source.

    def write(self, data: bytes) -> None:
        """Send bytes to the program on the console; never blocks."""
        with self._write_lock:
            if len(self._outbox) + len(data) > OUTBOX_LIMIT:
                self._dropped(len(data))
                return
            self._outbox += data
        self._wake()

    def _flush(self) -> None:
        with self._write_lock:
            if self._outbox:
                written = self.source.write(bytes(self._outbox))
                del self._outbox[:written]

    # Input from viewers.

    def key(self, keysym: int, modifiers: keymap.Modifiers) -> None:
        """A key press from a viewer (modifiers already updated)."""
        if modifiers.shift and keysym in (PAGE_UP, PAGE_DOWN):
            self.scroll_view(self.lines - 1 if keysym == PAGE_UP else 1 - self.lines)
            return
        with self.lock:
            application_cursor = DECCKM in self.terminal.mode
        data = keymap.key_bytes(keysym, modifiers, application_cursor)
        if data:
            self.scroll_view(-self._view_offset)
            self.write(data)

    def pointer(self, button_mask: int) -> None:
        if button_mask & WHEEL_UP:
            self.scroll_view(WHEEL_LINES)
        elif button_mask & WHEEL_DOWN:
            self.scroll_view(-WHEEL_LINES)

    def paste(self, text: bytes) -> None:
        """Clipboard text from a viewer: Latin-1 with LF, typed as UTF-8 with CR."""
        self.write(text.decode("latin-1").replace("\r\n", "\r").replace("\n", "\r").encode())

    def scroll_view(self, lines: int) -> None:
        """Move the view into the scrollback (positive) or back towards the bottom."""
        with self.lock:
            offset = max(0, min(self._view_offset + lines, len(self.terminal.history)))
            if offset == self._view_offset:
                return
            self._view_offset = offset
            self._full = True
        self._notify()

    # Reading the screen.

    @property
    def bells(self) -> int:
        return self.terminal.bells

    def take_frame(self) -> Frame:
        """Everything that changed since the previous call, read consistently."""
        with self.lock:
            terminal = self.terminal
            scroll, terminal.scrolled = terminal.scrolled, 0
            rows, terminal.dirty = terminal.dirty & set(range(self.lines)), set()
            if self._view_offset:
                self._view_offset = min(self._view_offset + scroll, len(terminal.history))
            if self._full or self._view_offset or scroll >= self.lines:
                self._full = False
                scroll, rows = 0, set(range(self.lines))
            elif scroll and self._banner:
                rows |= {self.lines - 1 - scroll, self.lines - 1}
            cursor = self._cursor_cell()
            if cursor != self._cursor:
                if self._cursor is not None and self._cursor[1] >= scroll:
                    rows.add(self._cursor[1] - scroll)
                if cursor is not None:
                    rows.add(cursor[1])
                self._cursor = cursor
            frame = Frame(scroll, cursor=cursor)
            for row in rows:
                frame.rows[row] = self._cells(row)
            return frame

    def _cursor_cell(self) -> tuple[int, int] | None:
        cursor = self.terminal.cursor
        row = cursor.y + self._view_offset
        if cursor.hidden or row >= self.lines or (self._banner and row == self.lines - 1):
            return None
        return min(cursor.x, self.columns - 1), row

    @property
    def _banner(self) -> str:
        return self.status or self.notice

    def _cells(self, row: int) -> list:
        if self._banner and row == self.lines - 1:
            text = f" {self._banner} ".center(self.columns)[: self.columns]
            return [pyte.screens.Char(c, reverse=True) for c in text]
        history = self.terminal.history
        if row < self._view_offset:
            line = history[len(history) - self._view_offset + row]
        else:
            line = self.terminal.buffer[row - self._view_offset]
        return [line[x] for x in range(self.columns)]
