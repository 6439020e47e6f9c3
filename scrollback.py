"""The scrollback: rows that scrolled off the top of the terminal, each kept compact.

What.  `Scrollback` is the terminal's bounded history (terminal.py appends to it whenever a
row leaves the top of the screen); console.py reads it back, a row at a time, when a viewer
scrolls into it.  It answers `len`, indexing and iteration with rows as pyte makes them (a
`StaticDefaultDict` of column to `Char`), so its readers cannot tell it from the plain deque
of rows it replaces.

Why.  A pyte row is a dict of up to one `Char` per column: about 2 KB for a line of log
output.  A console keeps 1,000 of them, and a host serving fifty domains keeps fifty consoles,
nearly all unwatched and nearly all of that history never looked at again.  So a row is
stored as four things: its text (one string, one character per cell), its runs of attributes
(the attributes, then the column where they stop, alternating; the last run stops where the
text does, so its end is left out), the attributes of the blank it is padded with, and whether
the text wrapped past its end (for copying, selection.py).  Trailing blank cells are not stored,
and a row keeps the width it was made with (a console can be resized; its scrollback is not
rewrapped, as in xterm).  A row whose cells are not one character each (the empty cell after a
wide character, a cell with combining marks) keeps its text as a tuple of the cells' strings
instead.  Attribute tuples and runs are shared by every line and every console that uses them,
and lines styled alike have equal runs (every plain line, every "[  OK  ]" line of a boot log),
so a line of coloured log output costs about 170 bytes, not 2 KB.

When.  A flood pushes thousands of rows a second through the scrollback, nearly all of them
out again soon, and compacting each as it arrived (a few microseconds a row) took the parse of
`seq 1 200000` from 5 to 0.3 MB/s.  So rows go in as pyte made them and stay `pending` until
the console's reader calls `compact_pending`, which it does twice a second at most
(console.py): a busy console holds at most `maxlen` pending rows, a quiet one none.
Reading a row back builds its `Char`s again, only for the rows a viewer scrolls back to, a
screenful at a time.  tests/test_fastpath.py compares the rows read back with plain pyte's,
cell by cell and colours included.
"""

from __future__ import annotations

import collections
import itertools
import operator

from pyte.screens import Char, StaticDefaultDict

DATA = operator.itemgetter(0)
ATTRIBUTES = operator.itemgetter(*range(1, len(Char._fields)))  # every field but data
SHARED_LIMIT = 4096


class Scrollback:
    """A bounded history of rows, the newest last: the oldest compact, the newest `pending`
    still as pyte made them until `compact_pending()`."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.pending = 0
        self._lines: collections.deque = collections.deque(maxlen=maxlen)

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> StaticDefaultDict:
        return _row(self._lines[index])

    def __iter__(self):
        return map(_row, self._lines)

    def append(self, row: StaticDefaultDict) -> None:
        self.extend([row])

    def extend(self, rows) -> None:
        rows = list(rows)
        self._lines.extend(rows)
        self.pending = min(self.pending + len(rows), len(self._lines))

    def compact_pending(self, count: int | None = None) -> None:
        """Compact the oldest `count` rows still pending (all of them for None)."""
        lines, first = self._lines, len(self._lines) - self.pending
        done = self.pending if count is None else min(count, self.pending)
        for index in range(first, first + done):
            lines[index] = compact(lines[index])
        self.pending -= done


def compact(row: StaticDefaultDict) -> tuple:
    """The row's cells up to the last one stored, as (text, runs of attributes, blank's
    attributes, wrapped); a row keeps the width it was made with, whatever the terminal's is
    now."""
    blank = row.default
    cells = [row[x] for x in range(max(row, default=-1) + 1)]
    while cells and cells[-1] == blank:
        cells.pop()
    strings = list(map(DATA, cells))
    text = "".join(strings)
    if len(text) != len(cells) or "" in strings:
        text = tuple(strings)
    runs, end = [], 0
    for attributes, group in itertools.groupby(cells, ATTRIBUTES):
        end += sum(1 for _ in group)
        runs += (shared(attributes), end)
    return text, shared(tuple(runs[:-1])), shared(ATTRIBUTES(blank)), wrapped(row)


def wrapped(row: StaticDefaultDict) -> bool:
    """Did the text run past the row's end (terminal.py marks it; unmarked rows did not)?"""
    return getattr(row, "wrapped", False)


def _row(line) -> StaticDefaultDict:
    return expand(line) if isinstance(line, tuple) else line


def expand(line: tuple) -> StaticDefaultDict:
    """The row a compact line was made from, with a fresh Char in each stored cell."""
    text, runs, blank, was_wrapped = line
    row = StaticDefaultDict(Char(" ", *blank))
    if was_wrapped:
        row.wrapped = True
    x = 0
    for index in range(0, len(runs), 2):
        attributes = runs[index]
        end = runs[index + 1] if index + 1 < len(runs) else len(text)
        for data in text[x:end]:
            row[x] = Char(data, *attributes)
            x += 1
    return row


_shared: dict = {}


def shared(value: tuple) -> tuple:
    """One tuple for equal attributes or runs, across lines and consoles (up to a bound,
    since a guest can make millions of truecolour pairs)."""
    if len(_shared) >= SHARED_LIMIT:
        return _shared.get(value, value)
    return _shared.setdefault(value, value)
