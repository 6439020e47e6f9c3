"""The text console: a source's bytes parsed into a terminal, with a view for the viewers.

A `Console` joins three things: a source of bytes (sources.py, or xen.py's domain console),
the terminal they are parsed into (terminal.py), and the viewers' displays, which it tells
about changes and hands what changed.

The reader thread.  One thread per console waits with `selectors` on the source and on a
`netio.Wakeup` that other threads poke, parses what the source has under the console lock,
and tells every listener (the viewer threads).  Sources come and go: a guest reboots, a serial
cable is pulled, a command exits.  The thread then shows a status line on the bottom row,
keeps every viewer connected, and reopens the source once a second for as long as it stays
away.  A command is restarted only when asked to; otherwise `on_closed` tells the server,
which exits once the last viewer has left.

Slices.  A read can be up to 256 KiB, and some output is cheap to send but slow to parse.
The reader never parses a read in one go: it parses for at most `SLICE_SECONDS` under the
lock, then lets go of it, sends the keys typed meanwhile, tells the viewers if the pacer says
so, and stops if stop() was called.  So a viewer waits at most a slice to read the screen, and
shutdown waits at most a slice, whatever the guest prints.

Telling the viewers.  Viewers are told about new output at once, except in a flood: once more
than `FLOOD_BYTES` arrived within one `FRAME_INTERVAL`, the rest of that interval's output is
told at its end (`Pacer`).  A pty hands a flood over in reads of a few hundred bytes; telling
every viewer about each would wake every viewer thread thousands of times a second to render
frames nobody can read, and take the CPU from the parser.  Typing and its echo stay far below
the threshold and are never delayed.  The display renders a new frame only after such a notice
(`told`), so all viewers that ask in between get the same frame and share its encoding.

The view.  Nothing is rendered here: the display calls `take_frame()` when a viewer wants
pixels and gets the scroll count, the rows that changed and their cells, all read under the
lock in one go.  Shift+PageUp/PageDown and the mouse wheel move the view into the terminal's
scrollback; any key that types something brings it back to the bottom.  The bottom row shows
the source's status, or a notice, while there is one.

Memory.  A host runs a console per domain, nearly all of them quiet and unwatched, so a quiet
console holds only its terminal: the reader frees each read before it waits again, the
threads share malloc's arenas (`share_malloc_arenas`), and the display drops its picture when
its last viewer leaves (display.py).  Rows that scrolled off are compacted (scrollback.py) at
most every `COMPACT_INTERVAL`, `COMPACT_ROWS` at a time under the lock: a flood pushes most
rows out of the scrollback before their turn comes, so it costs a few percent of the parse,
and a console that falls quiet is compacted within the interval.  Then a quiet reader waits
on its selector with no timeout: it never wakes.

The pointer.  When the program turns on xterm's mouse tracking (terminal.py), buttons, wheel
and motion go to it as xterm would send them: presses, releases except in mode 9, motion with
a button held in mode 1002 and any motion in mode 1003, Alt and Ctrl in the button number.
Shift is never reported: with Shift held the pointer stays vncterm's, for the selection, and
`mouse_reporting` is how other code asks which it is.  Otherwise the wheel pages the
scrollback.  The console has one pointer, as an xterm does, so viewers that point at once
share it.

Resizing.  A console whose source can take a new size (a command's pty: sources.py) can be
resized by a viewer, between `MIN_SIZE` and `MAX_SIZE` cells; the terminal keeps its text
(terminal.py) and the next frame is all of the new size.  Other sources (a guest's console,
a serial line) cannot tell their far end, so `resize` refuses.

Writes to the source (keys, paste, the terminal's answers to queries) never block a viewer
thread: what the source cannot take at once waits in a bounded outbox that the reader thread
flushes when the source becomes writable.  A program that never reads its input loses what
does not fit, with one warning per minute, not one per answer (lograte.py).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import selectors
import threading
import time
from dataclasses import dataclass, field

import pyte

import clipboard
import keymap
import lograte
import netio
import selection
import terminal

log = logging.getLogger("vncterm.console")

OUTBOX_LIMIT = 1024 * 1024  # room for a few pastes of rfb.CUT_TEXT_LIMIT
REOPEN_DELAY = 1.0
WHEEL_LINES = 3
WHEEL_UP, WHEEL_DOWN, WHEEL_LEFT, WHEEL_RIGHT = 1 << 3, 1 << 4, 1 << 5, 1 << 6
MOUSE_BUTTONS = ((1 << 0, 0), (1 << 1, 1), (1 << 2, 2))  # RFB's mask bits: xterm's buttons
MOUSE_WHEELS = ((WHEEL_UP, 64), (WHEEL_DOWN, 65), (WHEEL_LEFT, 66), (WHEEL_RIGHT, 67))
MIN_SIZE, MAX_SIZE = (20, 5), (400, 150)  # columns, lines a viewer may resize a console to
PAGE_UP, PAGE_DOWN = 0xFF55, 0xFF56
DECCKM = 1 << 5  # pyte keeps private mode n as n << 5 but names no constant for mode 1
BRACKETED_PASTE = 2004 << 5
FRAME_INTERVAL = 1 / 60
FLOOD_BYTES = 1024
SLICE_SECONDS = 0.01
POLL_INTERVAL = 0.1
COMPACT_INTERVAL = 0.5
COMPACT_ROWS = 100  # about 1.5 ms under the lock
M_ARENA_MAX = -8  # glibc's mallopt() parameter number
MALLOC_ARENAS = 2


@dataclass
class Frame:
    """What changed on the console since the last frame, ready to render.

    First scroll the previous picture up by `scroll` rows, then repaint `rows`, a map from
    row number to that row's cells (pyte Chars).  `cursor` is the (column, row) to show as a
    cursor, or None.  `size` is the console's (columns, lines): when it changed, every row is
    in the frame and nothing scrolls.
    """

    scroll: int
    rows: dict[int, list] = field(default_factory=dict)
    cursor: tuple[int, int] | None = None
    size: tuple[int, int] = (0, 0)


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


@functools.cache
def share_malloc_arenas() -> None:
    """Have every thread of the process share MALLOC_ARENAS of glibc's malloc arenas.

    glibc gives each thread that allocates its own arena (up to eight per core), and an arena
    keeps what a thread freed: a reader thread's reads and their parsing leave about 0.8 MB
    behind per console.  Python allocates under the GIL, so threads seldom wait for a shared
    arena (zlib and Pillow allocate outside it, briefly).  Without glibc this does nothing.
    """
    if GLIBC is not None:
        GLIBC.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def return_free_memory() -> None:
    """Give what malloc holds free back to the system (glibc keeps it for reuse otherwise):
    called after each compaction, so the pending rows a burst of output left do not stay
    resident once they are compact.  It takes about 0.1 ms."""
    if GLIBC is not None:
        GLIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


GLIBC = _glibc()


class Console:
    """A source, the terminal it feeds, and the viewers to tell when something changed."""

    def __init__(self, source, columns: int, lines: int, log_file=None, on_closed=None) -> None:
        self.source = source
        self.columns, self.lines = columns, lines
        self.lock = threading.Lock()
        self.terminal = terminal.Terminal(columns, lines)
        self.terminal.answer = self.write
        self.stream = terminal.Stream(self.terminal)
        self.status = f"waiting for {source.name}"
        self.notice = ""
        self.log_file = log_file
        self.on_closed = on_closed
        self.listeners: set = set()
        self.told = 0
        self._notices = itertools.count(1)
        self._view_offset = 0
        self._scrolled = 0  # lines scrolled off the screen before the last frame
        self.selection = selection.Selection()
        self._full = True
        self._cursor = None
        self._buttons = 0
        self._pointer_cell = None
        self._outbox = bytearray()
        self._write_lock = threading.Lock()
        self._dropped = lograte.RateLimitedLog(
            log, logging.WARNING, "console is not reading its input: %d bytes dropped")
        self._stopping = False
        self._compacted = float("-inf")
        self._wakeup: netio.Wakeup | None = None
        self._thread = threading.Thread(target=self._run, name="console-reader", daemon=True)

    def start(self) -> None:
        """Start the reader thread (a console that is only fed by hand needs none)."""
        share_malloc_arenas()
        self._wakeup = netio.Wakeup()
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join()
        self.source.close()
        self._wakeup.close()

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
            selector.register(self._wakeup, selectors.EVENT_READ)
            fd = self.source.fileno()
            if fd is not None:
                selector.register(fd, selectors.EVENT_READ)
            self._register_watch(selector)
            while not self._stopping:
                if fd is not None:
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._outbox else 0)
                    selector.modify(fd, events)
                ready = selector.select(pacer.timeout(self._quiet_timeout(fd is None)))
                if any(key.fileobj is self._wakeup for key, _ in ready):
                    self._wakeup.drain()
                self._flush()
                if not self._take_input(pacer):
                    return
                self._compact_scrollback()

    def _quiet_timeout(self, polled: bool) -> float | None:
        """How long the reader waits while there is nothing to tell: for ever, unless the
        source has no fd to wait on or the scrollback has rows to compact."""
        if polled:
            return POLL_INTERVAL
        if self.terminal.history.pending:
            return max(0.0, self._compacted + COMPACT_INTERVAL - time.monotonic())
        return None

    def _compact_scrollback(self) -> None:
        """Compact the rows that scrolled off, if COMPACT_INTERVAL has passed since the last
        time, a slice at a time; then give the memory they took back."""
        history, now = self.terminal.history, time.monotonic()
        if not history.pending or now < self._compacted + COMPACT_INTERVAL:
            return
        self._compacted = now
        while history.pending and not self._stopping:
            with self.lock:
                history.compact_pending(COMPACT_ROWS)
        return_free_memory()

    def _take_input(self, pacer: Pacer) -> bool:
        """Parse what the source has, if anything; False once it hung up.

        A method of its own so that the read (up to sources.READ_LIMIT) is freed before the
        reader waits again, not held by a local for as long as the console stays quiet.
        """
        data = self.source.read()
        if data == b"":
            return False
        if data:
            self._parse(data, pacer)
        elif pacer.tell_now(0):
            self._notify()
        return True

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if stop() is called or the source's watch fires."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._wakeup, selectors.EVENT_READ)
            self._register_watch(selector)
            if any(key.fileobj is self._wakeup for key, _ in selector.select(seconds)):
                self._wakeup.drain()

    def _register_watch(self, selector) -> None:
        """A source may offer watch_fileno(): an fd that says "look at me again" (xen.py)."""
        watch = getattr(self.source, "watch_fileno", None)
        fd = watch() if watch else None
        if fd is not None:
            selector.register(fd, selectors.EVENT_READ)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.poke()

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

    @property
    def mouse_reporting(self) -> bool:
        """Has the program asked for the pointer (xterm's mouse tracking)?"""
        with self.lock:
            return self.terminal.mouse_modes[0] is not None

    def pointer(self, button_mask: int, cell: tuple[int, int],
                modifiers: keymap.Modifiers) -> None:
        """The pointer over cell (column, row) with the RFB buttons of button_mask down."""
        previous, self._buttons = self._buttons, button_mask
        moved, self._pointer_cell = cell != self._pointer_cell, cell
        with self.lock:
            tracking, encoding = self.terminal.mouse_modes
        if tracking is not None and not modifiers.shift:
            reports = mouse_reports(tracking, encoding, previous, button_mask, cell, moved,
                                    modifiers)
            if reports:
                self.write(reports)
        elif button_mask & WHEEL_UP:
            self.scroll_view(WHEEL_LINES)
        elif button_mask & WHEEL_DOWN:
            self.scroll_view(-WHEEL_LINES)

    def paste(self, text: str) -> None:
        """Type a viewer's clipboard: UTF-8, Return for line ends, bracketed if asked for."""
        with self.lock:
            bracketed = BRACKETED_PASTE in self.terminal.mode
        if text:
            self.scroll_view(-self._view_offset)
            self.write(clipboard.pasted(text, bracketed))

    # The selection (selection.py), in absolute lines.

    def select(self, row: int, column: int, press: bool) -> None:
        """Start (`press`) or extend the selection at a cell of the view."""
        with self.lock:
            position = (self._first_line() + row, column)
            if press:
                self.selection.press(position)
            elif not self.selection.drag(position):
                return
            self._full = True
        self._notify()

    def end_selection(self) -> str:
        """The button went up: the selected text, "" if nothing is selected."""
        with self.lock:
            self.selection.release()
            return self.selection.text(self._line_text, self._wrapped)

    def _first_line(self) -> int:
        """The absolute line shown on the view's top row."""
        return self._scrolled + self.terminal.scrolled - self._view_offset

    def _line(self, line: int):
        """The cells of an absolute line: in the scrollback, on the screen, or gone (None)."""
        history, top = self.terminal.history, self._scrolled + self.terminal.scrolled
        if line >= top:
            return self.terminal.buffer[line - top] if line - top < self.lines else None
        index = line - top + len(history)
        return history[index] if index >= 0 else None

    def _wrapped(self, line: int) -> bool:
        return getattr(self._line(line), "wrapped", False)

    def _line_text(self, line: int) -> list[str]:
        cells = self._line(line)
        if cells is None:
            return [" "] * self.columns
        return [cells[x].data for x in range(self.columns)]

    def resize(self, columns: int, lines: int) -> bool:
        """Make the console columns x lines, within MIN_SIZE and MAX_SIZE, and tell the
        source; False if the source cannot be resized."""
        if not hasattr(self.source, "resize"):
            return False
        columns = max(MIN_SIZE[0], min(columns, MAX_SIZE[0]))
        lines = max(MIN_SIZE[1], min(lines, MAX_SIZE[1]))
        with self.lock:
            if (columns, lines) == (self.columns, self.lines):
                return True
            self.terminal.resize(lines, columns)
            self.columns, self.lines = columns, lines
            self._view_offset = 0
            self._cursor = None
            self._full = True
            self.selection.clear()  # its lines moved: the scrollback took some
            self.source.resize(columns, lines)
        log.info("console resized to %dx%d", columns, lines)
        self._notify()
        return True

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
            self._scrolled += scroll
            rows, terminal.dirty = terminal.dirty & set(range(self.lines)), set()
            if self._view_offset:
                self._view_offset = min(self._view_offset + scroll, len(terminal.history))
            if self._full or self._view_offset or scroll >= self.lines:
                self._full = False
                scroll, rows = 0, set(range(self.lines))
            elif scroll and self._banner:
                rows |= {self.lines - 1 - scroll, self.lines - 1}
            cursor = self._cursor_cell()
            if cursor != self._cursor or scroll:
                if self._cursor is not None and self._cursor[1] >= scroll:
                    rows.add(self._cursor[1] - scroll)
                if cursor is not None:
                    rows.add(cursor[1])
                self._cursor = cursor
            frame = Frame(scroll, cursor=cursor, size=(self.columns, self.lines))
            for row in rows:
                frame.rows[row] = self._cells(row)
            return frame

    def repaint(self) -> None:
        """Make the next frame hold every row: its display has dropped its picture."""
        with self.lock:
            self._full = True

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
        cells = [line[x] for x in range(self.columns)]
        span = self.selection.span(self._line_text)
        if span is not None:
            self._highlight(cells, self._first_line() + row, span)
        return cells

    def _highlight(self, cells: list, line: int, span) -> None:
        """Show the part of `line` inside the selection in reverse video."""
        (first, start), (last, end) = span
        if not first <= line <= last:
            return
        left = start if line == first else 0
        right = end if line == last else self.columns
        for x in range(left, right):
            cells[x] = cells[x]._replace(reverse=not cells[x].reverse)


def mouse_reports(tracking: int, encoding: int | None, previous: int, button_mask: int,
                  cell: tuple[int, int], moved: bool, modifiers: keymap.Modifiers) -> bytes:
    """What xterm sends when the RFB buttons go from `previous` to `button_mask` at cell.

    Motion first (it happened before the buttons changed), then each button that went down
    or up; the wheel only goes down.  Mode 9 sends presses alone, without modifiers.
    """
    column, row = cell
    extra = 0 if tracking == terminal.MOUSE_X10 else 8 * modifiers.alt + 16 * modifiers.control
    held = [number for bit, number in MOUSE_BUTTONS if previous & bit]
    reports = []
    if moved and (tracking == terminal.MOUSE_ANY_MOTION
                  or tracking == terminal.MOUSE_BUTTON_MOTION and held):
        button = (held[0] if held else terminal.MOUSE_RELEASE) + terminal.MOUSE_MOTION
        reports.append(terminal.mouse_report(encoding, button + extra, column, row))
    for bit, number in MOUSE_BUTTONS + MOUSE_WHEELS:
        if button_mask & bit and not previous & bit:
            reports.append(terminal.mouse_report(encoding, number + extra, column, row))
        elif (previous & bit and not button_mask & bit and number < 64
              and tracking != terminal.MOUSE_X10):
            reports.append(terminal.mouse_report(encoding, number + extra, column, row, True))
    return b"".join(reports)
