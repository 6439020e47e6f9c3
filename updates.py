"""One viewer's updates, sans-IO: what to send from a display, and when to stop sending.

The viewer session (viewer.py) owns the socket; this module decides the bytes.  It has two
parts, so that flow control can be tested without a socket and without a thread.

`Updates` serves one viewer from one display, and the session makes a new one on every VT
switch (`switched`).  It remembers what this viewer has of the display: the damage token of its
last frame (damage.py), the cursor shape it was sent, the bells and clipboard it has seen.  It
remembers what the viewer asked for and was told, which carries over a switch: an outstanding
FramebufferUpdateRequest (RFC 6143 §7.5.3) and whether it was non-incremental, the framebuffer
size the viewer has, and the ExtendedDesktopSize announcement and replies (rfbproto §7.8.2).
While the viewer's own SetDesktopSize waits for the display's answer, a new size is held back,
so that the size it asked for reaches it as the answer (reason "client"), not as news.  It
remembers what the viewer was told of QEMU's input extensions: whether it was invited to send
scancodes (-258; RFB has no way to take that back, so the session copes with scancodes on any
display) and which pointer type it uses (-257); LED State (-261, or VMware's) is re-sent per
display.
`next_frame` answers an outstanding request: the size pseudo-rectangles in an update of their
own, then one FramebufferUpdate (§7.6.1) with the cursor (-239), a CopyRect for a scroll
(§7.7.2) and the changed area in the viewer's encoding, cropped to a viewer that could not
follow a resize.

`Outbox` holds what the socket has not taken yet, for the whole connection.  RFB is
pull-based, so a frame is only built on request, and only while less than `SOFT_OUTBOX` bytes
wait: a slow viewer gets fewer, bigger updates and a stalled one gets none.  A frame is
encoded in horizontal bands of about `BAND_PIXELS`, each band as the queue drains, so what one
viewer holds queued is about `SOFT_OUTBOX` plus one band whatever the desktop's size (16 M
pixels in Raw is 64 MiB; one band is 1 MiB).  So a viewer that reads is never dropped for a
big desktop, and `HARD_OUTBOX` only catches one that lets messages that need no request (bells,
clipboard) pile up, and `WRITE_STALL_TIMEOUT` one that does not read at all.

Trade-offs.  The FramebufferUpdate header comes first and states its rectangle count.  Raw,
Hextile, Zlib and ZRLE make one rectangle of each band, so the count is known before any band
is encoded.  Tight makes as many as a band's content needs, so a Tight frame of more than
one band has the header say 0xFFFF and a LastRect end the update, where the viewer listed
LastRect (TigerVNC, TightVNC, noVNC do); a frame of one band, and any frame for a Tight viewer
without LastRect, is encoded whole before its header, as one piece in the queue.  A frame in
progress is finished before anything else is queued (a bell waits for its end, and so does a
VT switch), because the header promised its rectangles; the bands come from the picture the
display handed over for that frame, so a late band is never newer than its frame.
"""

from __future__ import annotations

import time

from PIL import Image

import clipboard
import damage
import rfb
from rfb import Encoding

SOFT_OUTBOX = 256 * 1024
HARD_OUTBOX = 8 * 1024 * 1024
WRITE_STALL_TIMEOUT = 30.0
BAND_PIXELS = 256 * 1024  # 1 MiB of Raw at 32 bits per pixel
BAND_ROWS_MULTIPLE = 16  # whole Hextile tiles in every band but the last
UNCOUNTED = 0xFFFF  # a FramebufferUpdate's rectangle count when a LastRect ends it
DOT_CURSOR = (1, 1, 3, 3, b"\xff\xff\xff\x00" * 9, b"\xe0\xe0\xe0")


class ViewerGone(Exception):
    """The viewer closed its connection or stopped reading; nothing to report."""


class Outbox:
    """The bytes queued for one viewer, and the frame being encoded into it band by band."""

    def __init__(self, clock=time.monotonic) -> None:
        self.data = bytearray()
        self.frame = None
        self.after_frame = bytearray()
        self.clock = clock
        self.last_write = clock()

    def __len__(self) -> int:
        return len(self.data)

    def add(self, message: bytes) -> None:
        """Queue a whole message, after the frame in progress if there is one."""
        if self.frame is not None:
            self.after_frame += message
        else:
            self._append(message)

    def _append(self, data: bytes) -> None:
        """The stall clock starts when bytes start to wait."""
        if data and not self.data:
            self.last_write = self.clock()
        self.data += data

    def fill(self, updates: Updates) -> None:
        """Queue the frame in progress, then new frames, while less than SOFT_OUTBOX waits."""
        while len(self.data) <= SOFT_OUTBOX:
            if self.frame is None:
                self.frame = updates.next_frame()
                if self.frame is None:
                    return
            chunk = next(self.frame, None)
            if chunk is None:
                self.frame = None
                self._append(self.after_frame)
                self.after_frame = bytearray()
            else:
                self._append(chunk)

    def head(self, size: int) -> bytearray:
        """The first `size` bytes waiting; the same until `sent` says they have gone."""
        return self.data[:size]

    def sent(self, count: int) -> None:
        """The socket took `count` bytes from the head."""
        if count:
            del self.data[:count]
            self.last_write = self.clock()

    def check(self) -> None:
        """Raise ViewerGone for a viewer that does not read."""
        if self.data and self.clock() - self.last_write > WRITE_STALL_TIMEOUT:
            raise ViewerGone(f"not reading for {WRITE_STALL_TIMEOUT:.0f} s")
        queued = len(self.data) + len(self.after_frame)
        if queued > HARD_OUTBOX:
            raise ViewerGone(f"{queued} bytes queued and not read")


class Updates:
    """What one viewer is owed from one display: a fresh one on every VT switch."""

    def __init__(self, display, encoder, size: tuple[int, int], link=None) -> None:
        self.display = display
        self.clipboard = link or clipboard.viewer_link()  # the display's cut text, in its form
        self.encoder = encoder
        self.size = size
        self.token = None
        self.requested = False
        self.full = False
        self.announced = False
        self.resize_reply = None
        self.awaiting_resize = False
        self.cursor_sent = None
        self.seen_bells = display.bells
        self.seen_cut_text = display.cut_text[0]
        self.keys_invited = False
        self.led_sent = None
        self.pointer_absolute = None  # not told: the viewer sends positions

    def switched(self, display) -> Updates:
        """Updates from `display`, keeping what the viewer asked for and was told."""
        new = Updates(display, self.encoder, self.size, self.clipboard)
        new.requested, new.full = self.requested, self.full
        new.announced, new.resize_reply = self.announced, self.resize_reply
        new.keys_invited, new.pointer_absolute = self.keys_invited, self.pointer_absolute
        return new

    @property
    def can_resize(self) -> bool:
        return self.encoder.supports(Encoding.EXTENDED_DESKTOP_SIZE) or self.encoder.supports(
            Encoding.DESKTOP_SIZE)

    # What the viewer says, §7.5.

    def request(self, incremental: bool) -> None:
        """A FramebufferUpdateRequest; requests before the answer fold into one."""
        self.requested = True
        self.full = self.full or not incremental

    def ask_resize(self) -> None:
        """A SetDesktopSize went to the display: hold size changes back until its answer, so
        that a new size it brings goes out as that answer (reason "client")."""
        self.awaiting_resize = True

    def answer_resize(self, status: int) -> None:
        """The display's answer to this viewer's SetDesktopSize, for the next update."""
        self.awaiting_resize = False
        self.resize_reply = status

    # What the viewer gets, §7.6.

    def notifications(self) -> bytes:
        """Bell and clipboard from the display: they need no update request."""
        messages = b""
        if self.display.bells != self.seen_bells:
            self.seen_bells = self.display.bells
            messages += rfb.bell()
        serial, text = self.display.cut_text
        if serial != self.seen_cut_text:
            self.seen_cut_text = serial
            messages += self.clipboard.give(text)
        return messages

    def next_frame(self):
        """The answer to the outstanding request as an iterator of byte chunks, or None."""
        if not self.requested:
            return None
        pseudo = self.size_rects()
        announcement = rfb.framebuffer_update(pseudo) if pseudo else b""
        token = None if self.full else self.token
        copy_rect = self.display.size == self.size and self.encoder.supports(Encoding.COPY_RECT)
        changes = self.display.changes(token, copy_rect)
        notes = self.cursor_rect() + self.input_rects()
        if changes is None and not notes:
            return iter([announcement]) if announcement else None
        if changes is not None:
            self.token = changes.token
        self.requested = False
        self.full = False
        return self._frame(announcement, notes, changes)

    def _frame(self, announcement: bytes, rects: list[bytes], changes):
        """The header and the rectangles known up front, then each band as it is encoded."""
        encoder = self.encoder.pinned()
        bands = []
        if changes is not None:
            width, height = self.size
            if changes.scroll:
                rects.append(encoder.copy_rect(
                    0, 0, width, height - changes.scroll, 0, changes.scroll))
            bands = [(x, y, image, box) for x, y, image in self.fitted(changes)
                     for box in band_boxes(*image.size)]
        shared = (self.display.plans, changes.token if changes else None)
        counted = encoder.one_rect_per_image
        last_rect = not counted and len(bands) > 1 and encoder.supports(Encoding.LAST_RECT)
        if not counted and not last_rect:
            rects += [rect for band in bands for rect in encode(encoder, band, shared)]
            bands = []
        count = UNCOUNTED if last_rect else len(rects) + len(bands)
        yield announcement + rfb.framebuffer_update_header(count) + b"".join(rects)
        for band in bands:
            yield b"".join(encode(encoder, band, shared))
        if last_rect:
            yield rfb.last_rect()

    def size_rects(self) -> list[bytes]:
        """Size announcements, which go in an update of their own (rfbproto §7.1)."""
        width, height = self.display.size
        extended = self.encoder.supports(Encoding.EXTENDED_DESKTOP_SIZE)
        if self.size != (width, height) and self.can_resize and not self.awaiting_resize:
            self.size = (width, height)
            self.full = True
            self.announced = True
            if extended and self.resize_reply == rfb.ExtendedDesktopSizeStatus.OK:
                self.resize_reply = None
                return [rfb.extended_desktop_size(width, height, 1, 0)]
            if extended:
                return [rfb.extended_desktop_size(width, height, 0, 0)]
            return [rfb.desktop_size(width, height)]
        width, height = self.size
        if extended and not self.announced:
            self.announced = True
            return [rfb.extended_desktop_size(width, height, 0, 0)]
        if extended and self.resize_reply is not None:
            status, self.resize_reply = self.resize_reply, None
            return [rfb.extended_desktop_size(width, height, 1, status)]
        return []

    def cursor_rect(self) -> list[bytes]:
        """The display's pointer shape, for a viewer that draws it itself (Cursor, -239)."""
        cursor = self.display.cursor
        if not self.encoder.supports(Encoding.CURSOR) or self.cursor_sent is (cursor or DOT_CURSOR):
            return []
        self.cursor_sent = cursor or DOT_CURSOR
        hot_x, hot_y, width, height, pixels, mask = (
            (cursor.hotspot_x, cursor.hotspot_y, cursor.width, cursor.height, cursor.pixels,
             cursor.mask) if cursor else DOT_CURSOR)
        image = Image.frombytes("RGB", (width, height), pixels, "raw", "BGRX")
        header = rfb.rect_header(hot_x, hot_y, width, height, Encoding.CURSOR)
        return [header + self.encoder.converter.convert(image) + mask]

    def input_rects(self) -> list[bytes]:
        """QEMU's input pseudo-rectangles, each only to a viewer that listed it: the invitation
        to send scancodes (once, and only from a display that takes them), the display's
        lock-key LEDs when they differ from what the viewer has, and the pointer's type when
        the viewer was told another."""
        display, supports, rects = self.display, self.encoder.supports, []
        if (display.extended_keys and not self.keys_invited
                and supports(Encoding.QEMU_EXTENDED_KEY_EVENT)):
            self.keys_invited = True
            rects.append(rfb.qemu_extended_key_event())
        if display.led_state is not None and display.led_state != self.led_sent:
            if supports(Encoding.LED_STATE):
                rects.append(rfb.led_state(display.led_state))
            elif supports(Encoding.VMWARE_LED_STATE):
                rects.append(rfb.vmware_led_state(display.led_state))
            self.led_sent = display.led_state
        if (supports(Encoding.POINTER_TYPE_CHANGE)
                and display.absolute_pointer != self.pointer_absolute):
            self.pointer_absolute = display.absolute_pointer
            rects.append(rfb.pointer_type_change(self.pointer_absolute, *self.size))
        return rects

    def fitted(self, changes: damage.Changes) -> list:
        """The changed tiles, cropped to a viewer that could not follow a resize; black where
        the display has nothing."""
        if self.display.size == self.size:
            return changes.tiles
        width, height = self.size
        fitted = []
        for x, y, tile in changes.tiles:
            area = damage.clip((x, y, *tile.size), width, height)
            if area:
                fitted.append((x, y, tile.crop((0, 0, area[2], area[3]))))
        if changes.full:
            shown_width, shown_height = self.display.size
            for area in ((shown_width, 0, width - shown_width, height),
                         (0, shown_height, min(shown_width, width), height - shown_height)):
                area = damage.clip(area, width, height)
                if area:
                    fitted.append((area[0], area[1], Image.new("RGB", area[2:])))
        return fitted


def encode(encoder, band, shared) -> list[bytes]:
    """One band's rectangles: (x, y, image, box) is the box of an image placed at (x, y)."""
    x, y, image, (left, top, right, bottom) = band
    if (right - left, bottom - top) != image.size:
        image = image.crop((left, top, right, bottom))
    return encoder.encode(x + left, y + top, image, shared)


def band_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Boxes of horizontal bands of about BAND_PIXELS that cover a width x height image."""
    rows = max(BAND_ROWS_MULTIPLE,
               BAND_PIXELS // width // BAND_ROWS_MULTIPLE * BAND_ROWS_MULTIPLE)
    return [(0, top, width, min(top + rows, height)) for top in range(0, height, rows)]
