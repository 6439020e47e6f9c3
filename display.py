"""The seam the design rests on: a viewer session shows a *display* and never knows which.

A display is a picture that changes, plus where the viewer's input goes.  There are two: the
text console (`ConsoleDisplay`, below: console.py's terminal drawn by render.py) and the guest's
desktop (vncproxy.DesktopDisplay: a shadow of the guest's framebuffer).  `Display` states what a
viewer session (viewer.py) uses of either, as a `typing.Protocol`, so the interface is code that
a type checker and a test can hold both displays to, not prose that drifts:

    size                       (width, height) of the picture, in pixels
    changes(token, copy_rect)  what changed since `token`: a damage.Changes, or None
    plans                      an encoders.SharedPlans: the encoding work viewers share
    listeners                  callables to poke (from any thread) when something changed
    key(keysym, down, modifiers), pointer(button_mask, x, y, hand)   input, RFC 6143 §7.5
    paste(hand)                type the viewer's clipboard, because the person asked to
    clipboard(text)            the viewer's clipboard changed (the desktop hands it on)
    resize(width, height, answer)  a viewer's SetDesktopSize (rfbproto); `answer(status)` is
                               called, maybe later and from another thread, with the
                               ExtendedDesktopSize status for that viewer
    cursor                     the pointer's shape (an rfbclient.CursorShape), or None for ours
    cut_text                   (serial, text): the display's clipboard, new when serial changes
    bells                      a count of bells; a viewer rings when it has grown (§7.6.3)
    extended_keys              True if it takes QEMU Extended Key Events: extended_key(keysym,
                               keycode, down, modifiers)
    led_state                  the guest's lock-key LEDs (bits of rfbproto's -261), or None
    absolute_pointer           False while it wants relative motion: pointer_motion(...)

What both displays share is written once, in `SharedPicture`: one picture guarded by a lock,
its damage log (damage.py), and the plans.  Damage is tracked once per display in numbered
generations; each viewer keeps only the number it last saw, so viewers at different speeds
share one rendering and a slow one simply gets a bigger, merged update (RFB is pull-based:
changes coalesce until the viewer asks again, §7.5.3).  Viewers that use the same encoding and
pixel format share the analysis of each changed rectangle too, and only run it through their
own zlib streams (encoders.py).

Trade-off: the console renders lazily, when a viewer asks (`SharedPicture.catch_up`), while the
desktop draws eagerly, as the guest's updates arrive.  The console's changes are cheap to note
and dear to draw, and a flood is drawn at the viewers' pace; the guest's are already pixels.
For the same reason the console keeps no picture at all while nobody watches it.

The pointer on the console is xterm's: the left button selects (selection.py) and the release
copies to that viewer's clipboard, the middle button pastes it, the wheel scrolls; when the
program has asked for the mouse, only with Shift held.  A clipboard.Hand is what the display
needs of the viewer for that: its modifiers, the buttons it held before, and its clipboard.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import damage
import encoders
import keymap
import render
import rfb
import rfbclient
from clipboard import Hand


@runtime_checkable
class Display(Protocol):
    """What a viewer session needs of whatever it shows."""

    size: tuple[int, int]
    plans: encoders.SharedPlans
    listeners: set[Callable[[], None]]
    cursor: rfbclient.CursorShape | None
    cut_text: tuple[int, str]
    bells: int
    extended_keys: bool
    led_state: int | None
    absolute_pointer: bool

    def changes(self, token: int | None, copy_rect: bool = True) -> damage.Changes | None:
        """What a viewer that last saw generation `token` needs (all of it for None)."""

    def key(self, keysym: int, down: bool, modifiers: keymap.Modifiers) -> None:
        """A key went down or up; `modifiers` are the viewer's, after this key."""

    def pointer(self, button_mask: int, x: int, y: int, hand: Hand) -> None:
        """The pointer moved or a button changed, inside the picture."""

    def paste(self, hand: Hand) -> None:
        """Type the clipboard of the viewer whose `hand` this is: the person asked to paste."""

    def clipboard(self, text: str) -> None:
        """The viewer's clipboard changed (a copy on the viewer's machine)."""

    def resize(self, width: int, height: int, answer: Callable[[int], None]) -> None:
        """A viewer asks for a width x height picture; `answer` gets the status."""


LEFT, MIDDLE = 1 << 0, 1 << 1


class SharedPicture:
    """The part of a display both kinds share: the picture, its damage and who to tell.

    A subclass provides `image` (a PIL image of `size`), records its changes in `damage` while
    holding `lock`, and may override `catch_up` to bring the picture up to date on demand.
    """

    def __init__(self, size: tuple[int, int], listeners: set | None = None) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.damage = damage.DamageLog(size)
        self.plans = encoders.SharedPlans()
        self.listeners = set() if listeners is None else listeners
        self.cursor = None
        self.cut_text = (0, "")
        self.extended_keys = False
        self.led_state = None
        self.absolute_pointer = True

    def changes(self, token: int | None, copy_rect: bool = True) -> damage.Changes | None:
        with self.lock:
            self.catch_up()
            return self.damage.changes(token, self.image, copy_rect)

    def catch_up(self) -> None:
        """Draw what is pending into the picture; called with the lock held."""

    def notify(self) -> None:
        for listener in list(self.listeners):
            listener()


class Watchers(set):
    """A display's listeners, one per viewer, that tell the display when the last has left.

    Viewer sessions join with `add` and leave with `discard` (viewer.py).
    """

    def __init__(self, last_left: Callable[[], None]) -> None:
        super().__init__()
        self.last_left = last_left

    def discard(self, listener) -> None:
        super().discard(listener)
        if not self:
            self.last_left()


class ConsoleDisplay(SharedPicture):
    """The text console as a display: renders lazily, once for all viewers, and only while
    someone watches.

    A frame is rendered when a viewer asks and the console has told of changes since the last
    one (console.Console.told), so a flood is rendered at the console's pace, not once per
    viewer request, and viewers asking in between share one frame and its encoding.  The
    console pokes the listeners itself, so they are the console's own set.

    A host serves many consoles that nobody watches, so the picture is made when a viewer
    first asks for it and dropped, with the damage log and the shared plans, when the last
    viewer leaves (about 1 MB for 80x25 cells).  A viewer that comes back gets a picture
    redrawn whole from the terminal.

    A resize asks the console for the cells that fit in the pixels asked for; a frame of
    another size replaces the renderer, and every viewer gets the new size and all of it.
    """

    def __init__(self, console, glyphs: render.Glyphs) -> None:
        self.console = console
        self.glyphs = glyphs
        self.renderer: render.Renderer | None = None
        cell_width, cell_height = glyphs.cell
        size = (console.columns * cell_width, console.lines * cell_height)
        console.listeners = Watchers(self.release)
        super().__init__(size, console.listeners)
        self._rendered = -1

    @property
    def image(self):
        return self.renderer.image

    @property
    def bells(self) -> int:
        return self.console.bells

    def catch_up(self) -> None:
        if self.renderer is None:
            self._new_renderer(self.console.columns, self.console.lines)
            self.console.repaint()
            self._rendered = -1
        if self.console.told != self._rendered:
            self._rendered = self.console.told
            frame = self.console.take_frame()
            if frame.size != (self.renderer.columns, self.renderer.lines):
                self._new_renderer(*frame.size)
            if frame.scroll or frame.rows:
                scroll, rects = self.renderer.apply(frame)
                if scroll or rects:
                    self.damage.record(scroll, rects)

    def _new_renderer(self, columns: int, lines: int) -> None:
        """A blank picture of columns x lines cells; every viewer gets all of a new size."""
        self.renderer = render.Renderer(self.glyphs, columns, lines)
        if self.renderer.size != self.size:
            self.size = self.renderer.size
            self.damage.reset(self.size)

    def snapshot(self):
        """A copy of the picture now (for a thumbnail), kept only while a viewer watches."""
        with self.lock:
            self.catch_up()
            image = self.image.copy()
        self.release()
        return image

    def release(self) -> None:
        """Drop the picture and all that was drawn for it, unless a viewer watches."""
        with self.lock:
            if self.listeners or self.renderer is None:
                return
            self.renderer = None
            self.damage.reset(self.size)
            self.plans = encoders.SharedPlans()

    def key(self, keysym: int, down: bool, modifiers: keymap.Modifiers) -> None:
        if down and keysym not in keymap.MODIFIER_KEYSYMS:
            self.console.key(keysym, modifiers)

    def pointer(self, button_mask: int, x: int, y: int, hand: Hand) -> None:
        cell_width, cell_height = self.glyphs.cell
        columns, lines = self.size[0] // cell_width, self.size[1] // cell_height
        cell = (min(x // cell_width, columns - 1), min(y // cell_height, lines - 1))
        if not self.console.mouse_reporting or hand.modifiers.shift:
            self.select(button_mask, cell, hand)
        self.console.pointer(button_mask, cell, hand.modifiers)

    def select(self, button_mask: int, cell: tuple[int, int], hand: Hand) -> None:
        """xterm's buttons: left selects and copies on release, middle pastes."""
        pressed, released = button_mask & ~hand.buttons, hand.buttons & ~button_mask
        column, row = cell
        if button_mask & LEFT or released & LEFT:
            # A viewer may send no motion between press and release (TigerVNC merges it): the
            # release's position ends the selection.
            self.console.select(row, column, press=bool(pressed & LEFT))
        if released & LEFT and (text := self.console.end_selection()):
            hand.clipboard.copy(text)
        if pressed & MIDDLE:
            self.paste(hand)

    def paste(self, hand: Hand) -> None:
        self.console.paste(hand.clipboard.received)

    def clipboard(self, text: str) -> None:
        """Kept by the viewer until pasted: nothing to do here."""

    def resize(self, width: int, height: int, answer: Callable[[int], None]) -> None:
        cell_width, cell_height = self.glyphs.cell
        if not self.console.resize(width // cell_width, height // cell_height):
            answer(rfb.ExtendedDesktopSizeStatus.PROHIBITED)
            return
        with self.lock:
            self.catch_up()
        answer(rfb.ExtendedDesktopSizeStatus.OK)
