"""xterm's selection on the text console: what the left button marks, and the text it copies.

A press starts a selection, a drag extends it, the release ends it and copies its text to the
clipboard of the viewer that made it (console.py and display.py do the copying).  Like xterm,
a second press on the same cell soon after the first selects by word, a third by line, and a
fourth starts over.  The selection is shown highlighted (reverse video) until the next press
or until something clears it.

Positions are (line, column) with *absolute* line numbers: line n is the n-th line the
terminal ever had, counting the lines scrolled into the scrollback, so a selection stays on
its text while output scrolls and works in the scrollback the same way as on the screen.  The
console maps a viewer's row to such a line and back.

The text: each line's selected cells in order, a wide character once (pyte keeps it in its
first cell and leaves the second empty), blanks at the end of each line dropped, lines joined
with newlines, except that a line the text wrapped from (terminal.py marks it) is joined to
its continuation directly, blanks and all, as xterm does.
"""

from __future__ import annotations

import time

CHARACTERS, WORDS, LINES = "characters", "words", "lines"
UNITS = (CHARACTERS, WORDS, LINES)
MULTI_CLICK_SECONDS = 0.4  # xterm's multiClickTime is 250 ms; a remote viewer adds its delay


def is_word(character: str) -> bool:
    """xterm's default word characters: letters, digits and the underscore."""
    return character.isalnum() or character == "_"


class Selection:
    """The marked span of the console, if any, and the clicks that made it."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.anchor: tuple[int, int] | None = None
        self.extent: tuple[int, int] | None = None
        self.unit = CHARACTERS
        self.dragging = False
        self._clicks = 0
        self._last_click: tuple[float, tuple[int, int]] | None = None

    def press(self, position: tuple[int, int]) -> None:
        now = self.clock()
        last = self._last_click
        repeated = last is not None and last[1] == position and now - last[0] <= MULTI_CLICK_SECONDS
        self._clicks = self._clicks + 1 if repeated else 1
        self._last_click = (now, position)
        self.unit = UNITS[(self._clicks - 1) % len(UNITS)]
        self.anchor = self.extent = position
        self.dragging = True

    def drag(self, position: tuple[int, int]) -> bool:
        """Move the free end; True when that changed the selection."""
        if not self.dragging or position == self.extent:
            return False
        self.extent = position
        return True

    def release(self) -> None:
        self.dragging = False

    def clear(self) -> None:
        self.anchor = self.extent = None
        self.dragging = False

    def span(self, line_text) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The selected cells from (line, column) up to, not including, (line, column), or
        None; `line_text(line)` gives a line's characters, one per cell."""
        if self.anchor is None:
            return None
        start, end = sorted((self.anchor, self.extent))
        if self.unit == LINES:
            return (start[0], 0), (end[0] + 1, 0)
        if self.unit == WORDS:
            return word_start(line_text(start[0]), start), word_end(line_text(end[0]), end)
        if start == end:
            return None  # a click, not a drag
        return start, (end[0], end[1] + 1)

    def text(self, line_text, wrapped=lambda line: False) -> str:
        """The selected text, as it goes to a clipboard; `wrapped(line)` says whether a line
        continues on the next."""
        span = self.span(line_text)
        if span is None:
            return ""
        (first, start), (last, end) = span
        if end == 0 and last > first:
            last, end = last - 1, None
        pieces = []
        for line in range(first, last + 1):
            characters = line_text(line)
            left = start if line == first else 0
            right = end if line == last else None
            piece = "".join(characters[left:right])
            if line < last and wrapped(line):
                pieces.append(piece)
            else:
                pieces.append(piece.rstrip(" ") + ("\n" if line < last else ""))
        return "".join(pieces)


def word_start(characters: list[str], position: tuple[int, int]) -> tuple[int, int]:
    line, column = position
    if column < len(characters) and is_word(characters[column]):
        while column > 0 and is_word(characters[column - 1]):
            column -= 1
    return line, column


def word_end(characters: list[str], position: tuple[int, int]) -> tuple[int, int]:
    line, column = position
    column += 1
    if column <= len(characters) and is_word(characters[column - 1]):
        while column < len(characters) and is_word(characters[column]):
            column += 1
    return line, min(column, len(characters))
