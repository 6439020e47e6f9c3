"""scrollback.py: a row read back is the row that was stored, and a stored row is small.

tests/test_fastpath.py compares a whole terminal's history with plain pyte's; here single rows
go through `compact` and `expand` with every kind of cell a pyte row can hold (wide characters
and the empty cell after them, combining marks, every attribute, a reverse-video blank, the
wrapped mark), and a boot log's worth of coloured lines must fit in a fraction of what pyte's
dicts took.
"""

import sys

from hypothesis import given
from hypothesis import strategies as st
from pyte.screens import Char, StaticDefaultDict

import scrollback
import terminal

COLUMNS = 12
DATA = st.sampled_from([" ", "a", "Z", "中", "", "e\u0301", "é", "\x00"])
COLOURS = st.sampled_from(["default", "red", "brightgreen", "ff8000", "0a0b0c"])
CELLS = st.builds(Char, DATA, COLOURS, COLOURS, st.booleans(), st.booleans(), st.booleans(),
                  st.booleans(), st.booleans(), st.booleans())
BLANKS = st.sampled_from([Char(" "), Char(" ", reverse=True)])
ROWS = st.tuples(BLANKS, st.dictionaries(st.integers(0, COLUMNS + 2), CELLS, max_size=20),
                 st.sampled_from([None, False, True]))


def make_row(blank, cells, wrapped):
    row = StaticDefaultDict(blank)
    row.update(cells)
    if wrapped is not None:
        row.wrapped = wrapped
    return row


def cells_of(row):
    return [row[x] for x in range(COLUMNS)], getattr(row, "wrapped", False)


@given(ROWS)
def test_a_row_reads_back_cell_for_cell(blank_and_cells):
    row = make_row(*blank_and_cells)
    assert cells_of(scrollback.expand(scrollback.compact(row))) == cells_of(row)


@given(st.lists(ROWS, max_size=12), st.integers(1, 5), st.sampled_from([0, 1, None]))
def test_the_scrollback_keeps_the_newest_rows_in_order(rows, maxlen, compacted):
    rows = [make_row(*row) for row in rows]
    history = scrollback.Scrollback(maxlen)
    history.extend(rows[: len(rows) // 2])
    history.compact_pending(1)
    for row in rows[len(rows) // 2 :]:
        history.append(row)
        history.compact_pending(compacted)
    kept = [cells_of(row) for row in rows[-maxlen:]] if rows else []
    assert len(history) == len(kept)
    assert [cells_of(row) for row in history] == kept
    assert [cells_of(history[index]) for index in range(-len(kept), 0)] == kept
    history.compact_pending()
    assert history.pending == 0
    assert [cells_of(row) for row in history] == kept


def boot_log(count):
    colours = ["\x1b[0;32m", "\x1b[0;31m", "\x1b[1;33m", "\x1b[0;1;39m"]
    lines = []
    for number in range(count):
        status = colours[number % len(colours)] + " OK " + "\x1b[0m"
        lines.append(f"[{status}] Started service number {number} of the system.")
    return "".join(line + "\r\n" for line in lines).encode()


def deep_size(root):
    """Bytes of every object reachable from root through containers, each counted once."""
    seen, stack, total = set(), [root], 0
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack += item.keys()
            stack += item.values()
        elif isinstance(item, (list, tuple, set)):
            stack += item
        elif isinstance(item, scrollback.Scrollback):
            stack.append(item._lines)
        elif hasattr(item, "__iter__") and not isinstance(item, (str, bytes)):
            stack += list(item)
    return total


def test_a_full_scrollback_of_coloured_log_lines_is_small():
    term = terminal.Terminal(80, 25)
    terminal.Stream(term).feed(boot_log(1200))
    term.history.compact_pending()
    assert len(term.history) == terminal.SCROLLBACK_LINES
    assert deep_size(term.history) < 250 * terminal.SCROLLBACK_LINES  # pyte rows: 2,305
