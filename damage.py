"""Damage tracking shared by every display: what changed, numbered, asked for per viewer.

A display (the text console, the guest desktop) keeps one picture and one `DamageLog`.  Each
time its picture changes it records the change under a new generation number: an optional
vertical scroll of the whole picture (which a viewer can replay with one CopyRect) and the
rectangles repainted afterwards.  A viewer remembers only the generation it last received.
When it asks for an update, `DamageLog.changes` folds every change since that generation into
one scroll and a merged list of rectangles, and crops those rectangles out of the picture,
all while the display holds its lock, so the viewer thread can encode them afterwards
without racing the next change.

So rendering and decoding happen once per change for all viewers, a slow viewer gets one
bigger update instead of a backlog (RFB is pull-based), and a viewer that fell further
behind than the log remembers, or just connected, simply gets the whole picture.
"""

from __future__ import annotations

import collections
import weakref
from dataclasses import dataclass

HISTORY = 256


def clip(rect, width, height):
    """The part of (x, y, w, h) inside a width x height picture, or None."""
    x, y, w, h = rect
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width), min(y + h, height)
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def merge(rects):
    """Join vertically touching rectangles when the union wastes little area."""
    merged = []
    for x, y, w, h in sorted(rects, key=lambda r: (r[1], r[0])):
        if merged:
            px, py, pw, ph = merged[-1]
            ux0, ux1 = min(px, x), max(px + pw, x + w)
            uy1 = max(py + ph, y + h)
            if y <= py + ph and (ux1 - ux0) * (uy1 - py) <= 1.25 * (pw * ph + w * h):
                merged[-1] = (ux0, py, ux1 - ux0, uy1 - py)
                continue
        merged.append((x, y, w, h))
    return merged


@dataclass
class Changes:
    """Scroll the viewer's picture up by `scroll` pixels, then paint `tiles`.

    `tiles` are (x, y, image) pieces cut from the display's picture.  `full` means they cover
    the whole picture and nothing may be copied from what the viewer has.  Pass `token` back
    next time.
    """

    token: int
    scroll: int
    tiles: list
    full: bool


class DamageLog:
    """Numbered generations of damage to one picture."""

    def __init__(self, size) -> None:
        self.size = size
        self.generation = 0
        self._events = collections.deque(maxlen=HISTORY)
        self._whole = (None, lambda: None)

    def record(self, scroll: int, rects: list) -> None:
        self.generation += 1
        self._events.append((self.generation, scroll, rects))

    def reset(self, size) -> None:
        """The picture was replaced (resized): every viewer needs all of it."""
        self.size = size
        self.generation += 1
        self._events.clear()

    def changes(self, token, image, copy_rect: bool = True) -> Changes | None:
        """What a viewer at `token` needs (None if nothing); call with the display locked."""
        if token == self.generation:
            return None
        since = self._since(token)
        width, height = self.size
        if since is None or (since[0] and not copy_rect):
            return Changes(self.generation, 0, [(0, 0, self._copy(image))], True)
        scroll, rects = since
        tiles = [(x, y, image.crop((x, y, x + w, y + h))) for x, y, w, h in merge(rects)]
        return Changes(self.generation, scroll, tiles, False)

    def _copy(self, image):
        """The whole picture of this generation: one copy for all the viewers that ask while
        another still holds it (a 16 M pixel desktop is 64 MiB a copy; nobody writes to one)."""
        generation, held = self._whole
        copy = held()
        if generation != self.generation or copy is None or copy.size != image.size:
            copy = image.copy()
            self._whole = (self.generation, weakref.ref(copy))
        return copy

    def _since(self, token):
        """(scroll, rects) that bring a viewer from `token` to now, or None if unknown."""
        if token is None or not self._events or token < self._events[0][0] - 1:
            return None
        width, height = self.size
        scroll, rects = 0, []
        for generation, step, new in self._events:
            if generation <= token:
                continue
            if step:
                scroll += step
                moved = (clip((x, y - step, w, h), width, height) for x, y, w, h in rects)
                rects = [r for r in moved if r]
            rects.extend(new)
        if scroll >= height:
            return None
        return scroll, rects
