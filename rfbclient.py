"""The client side of RFB, sans-IO: what the proxy needs to talk to a guest's VNC server.

vncproxy.py connects to (or is reverse-connected by) the guest's Xvnc, x11vnc or installer,
and speaks RFB as the *client* (RFC 6143 §7.1-7.3, §7.5, §7.6).  Like rfb.py, this module only
turns bytes into events and events into bytes; vncproxy.py does the I/O.  The handshake is
read by `HandshakeReader`, one step at a time in the order the caller's straight-line code asks
for them; each step says how many more bytes it needs, so a blocking caller reads exactly those
and never past the handshake.  After ServerInit, `ServerReader` turns the stream into events.

The guest is untrusted.  Every size it announces is capped before anything is allocated
(`check_desktop_size`, name and reason lengths), and `ServerReader` checks every rectangle
against the current framebuffer before it uses a byte of it.  We ask the guest only for
encodings that are cheap and safe to decode in Python on a local link (Raw, CopyRect, the two
resize pseudo-encodings and Cursor; and QEMU's three input pseudo-encodings, which carry no
pixels), so each rectangle's length follows from its header and
Raw rows are handed out as they arrive: a huge update never sits in memory.  Counts that the
guest chooses (rectangles in an update) are walked in a loop, never by recursion.  An
ExtendedDesktopSize with a failure status is refused unless it answers our SetDesktopSize.

Where deployed servers bend the spec harmlessly, we bend with them: TightVNC 1.3 puts the
hotspot of its hidden-pointer cursor just outside the image, so a hotspot is clamped into the
cursor rather than refused.  The limits that protect us (the cursor's size) stay hard.

The clipboard: we list the Extended Clipboard among our encodings, and a server that speaks
it (TigerVNC's Xvnc) answers with its caps; from then on `ServerReader` reads its extended
ServerCutText into rfb.ExtendedClipboard events, with rfb.py's reader and limits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rfb import (
    CHALLENGE_LENGTH,
    RECT_HEADER,
    VERSION_3_3,
    VERSION_3_7,
    VERSION_3_8,
    VERSION_LENGTH,
    VERSION_RE,
    CappedBody,
    ClientMsg,
    Encoding,
    ExtendedDesktopSizeReason,
    ExtendedDesktopSizeStatus,
    PixelFormat,
    ProtocolError,
    QemuSubtype,
    Screen,
    SecurityType,
    ServerMsg,
    cut_text_length,
    parse_extended_clipboard,
)

MAX_DESKTOP_SIDE = 8192
MAX_DESKTOP_PIXELS = 4096 * 4096
MAX_NAME = 4096
MAX_REASON = 1024
MAX_CURSOR_SIDE = 256

# What a step of ServerReader returns when it consumed bytes that make no event (an empty
# rectangle): the reader loops on to the next step instead of recursing, because one update
# may hold 65,535 of them.
_NO_EVENT = object()


def parse_server_version(data: bytes) -> tuple[int, int]:
    """Map a server's ProtocolVersion to the version a client answers (docs/protocol.md)."""
    match = VERSION_RE.fullmatch(data)
    if not match:
        raise ProtocolError(f"bad protocol version string {data!r}")
    major, minor = int(match[1]), int(match[2])
    if (major, minor) < (3, 3):
        raise ProtocolError(f"unsupported protocol version {major}.{minor}")
    if major > 3 or minor >= 8:
        return VERSION_3_8
    return VERSION_3_7 if minor == 7 else VERSION_3_3


def version_bytes(version: tuple[int, int]) -> bytes:
    return b"RFB %03d.%03d\n" % version


def check_desktop_size(width: int, height: int) -> None:
    if not (1 <= width <= MAX_DESKTOP_SIDE and 1 <= height <= MAX_DESKTOP_SIDE):
        raise ProtocolError(f"desktop size {width}x{height} is out of range")
    if width * height > MAX_DESKTOP_PIXELS:
        raise ProtocolError(f"desktop size {width}x{height} is too large")


# --- The handshake, as the client, §7.1-7.3 -----------------------------------------------------


@dataclass(frozen=True)
class SecurityResult:
    """§7.1.3: did the server accept us; `reason` only for a failure under RFB 3.8."""

    ok: bool
    reason: str | None = None


@dataclass(frozen=True)
class ServerInit:
    """§7.3.2, its sizes checked against our caps."""

    width: int
    height: int
    pixel_format: PixelFormat
    name: str


SERVER_INIT_HEADER = struct.Struct(">HH16sI")


class HandshakeReader:
    """The server's side of the handshake, read one step at a time as its bytes arrive.

    The caller runs the handshake in a straight line (gtk-vnc's shape) and asks for the step it
    expects next: `version()`, `security_types(version)`, `challenge()`,
    `security_result(version)`, `server_init()`.  A step returns None while its bytes are
    incomplete, and `needed` then says how many more bytes it needs at least, so a blocking
    caller reads exactly that many and never reads past the handshake.  A step consumes only its
    own bytes; whatever follows stays buffered for the next one.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.needed = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def version(self) -> tuple[int, int] | None:
        """ProtocolVersion, §7.1.1: the version we answer with."""
        if not self._have(VERSION_LENGTH):
            return None
        return parse_server_version(self._take(VERSION_LENGTH))

    def security_types(self, version: tuple[int, int]) -> list[int] | None:
        """§7.1.2: the types offered (3.7+), or the one type chosen (3.3); a refusal raises."""
        if version == VERSION_3_3:
            if not self._have(4):
                return None
            size, types = 4, [int.from_bytes(self._buffer[:4], "big")]
        else:
            if not self._have(1):
                return None
            size = 1 + self._buffer[0]
            if not self._have(size):
                return None
            types = list(self._buffer[1:size])
        if types in ([], [SecurityType.INVALID]):
            reason = self._reason(size)
            if reason is None:
                return None
            raise ProtocolError(f"guest refused the connection: {reason!r}")
        del self._buffer[:size]
        return types

    def challenge(self) -> bytes | None:
        """VNC Authentication's challenge, §7.2.2."""
        return self._take(CHALLENGE_LENGTH) if self._have(CHALLENGE_LENGTH) else None

    def security_result(self, version: tuple[int, int]) -> SecurityResult | None:
        """SecurityResult, §7.1.3, with the failure's reason string under 3.8."""
        if not self._have(4):
            return None
        if self._buffer[:4] == b"\0\0\0\0":
            del self._buffer[:4]
            return SecurityResult(True)
        if version != VERSION_3_8:
            del self._buffer[:4]
            return SecurityResult(False)
        reason = self._reason(4)
        return None if reason is None else SecurityResult(False, reason)

    def server_init(self) -> ServerInit | None:
        """ServerInit, §7.3.2; a size or name beyond our caps is refused before it is read."""
        if not self._have(SERVER_INIT_HEADER.size):
            return None
        width, height, pixel_format, name_length = SERVER_INIT_HEADER.unpack(
            self._buffer[:SERVER_INIT_HEADER.size])
        check_desktop_size(width, height)
        if name_length > MAX_NAME:
            raise ProtocolError(f"desktop name of {name_length} bytes")
        size = SERVER_INIT_HEADER.size + name_length
        if not self._have(size):
            return None
        name = bytes(self._buffer[SERVER_INIT_HEADER.size:size]).decode("utf-8", "replace")
        del self._buffer[:size]
        return ServerInit(width, height, PixelFormat.from_bytes(pixel_format), name)

    def _have(self, size: int) -> bool:
        """True if `size` bytes are buffered; otherwise note how many more are needed."""
        self.needed = max(0, size - len(self._buffer))
        return self.needed == 0

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _reason(self, offset: int) -> str | None:
        """The reason string that starts at `offset`, and everything before it consumed."""
        if not self._have(offset + 4):
            return None
        (length,) = struct.unpack_from(">I", self._buffer, offset)
        if length > MAX_REASON:
            raise ProtocolError(f"reason string of {length} bytes")
        end = offset + 4 + length
        if not self._have(end):
            return None
        reason = bytes(self._buffer[offset + 4:end]).decode("utf-8", "replace")
        del self._buffer[:end]
        return reason


# --- Client-to-server messages, §7.5 ------------------------------------------------------------


def security_choice(security_type: int) -> bytes:
    """The type we chose, §7.1.2 (3.7 and later; a 3.3 server chose for us)."""
    return bytes([security_type])


def client_init(shared: bool) -> bytes:
    """ClientInit, §7.3.1: whether other clients may stay connected."""
    return bytes([shared])


def set_pixel_format(pixel_format: PixelFormat) -> bytes:
    return struct.pack(">B3x", ClientMsg.SET_PIXEL_FORMAT) + pixel_format.to_bytes()


def set_encodings(encodings: list[int]) -> bytes:
    count = len(encodings)
    return struct.pack(f">BxH{count}i", ClientMsg.SET_ENCODINGS, count, *encodings)


def framebuffer_update_request(incremental: bool, width: int, height: int) -> bytes:
    return struct.pack(">BBHHHH", ClientMsg.FRAMEBUFFER_UPDATE_REQUEST, incremental, 0, 0,
                       width, height)


def key_event(down: bool, keysym: int) -> bytes:
    return struct.pack(">BB2xI", ClientMsg.KEY_EVENT, down, keysym)


def qemu_extended_key_event(down: bool, keysym: int, keycode: int) -> bytes:
    """rfbproto §QEMU Extended Key Event, for a server that sent the -258 pseudo-rectangle."""
    return struct.pack(">BBHII", ClientMsg.QEMU, QemuSubtype.EXTENDED_KEY_EVENT, down, keysym,
                       keycode)


def pointer_event(button_mask: int, x: int, y: int) -> bytes:
    return struct.pack(">BBHH", ClientMsg.POINTER_EVENT, button_mask, x, y)


def set_desktop_size(width: int, height: int, screen: Screen) -> bytes:
    """SetDesktopSize (rfbproto): one screen, `screen`'s id and flags, covering width x height."""
    return struct.pack(">BxHHBx", ClientMsg.SET_DESKTOP_SIZE, width, height, 1) + (
        Screen.STRUCT.pack(screen.id, 0, 0, width, height, screen.flags))


def client_cut_text(text: bytes) -> bytes:
    return struct.pack(">B3xI", ClientMsg.CLIENT_CUT_TEXT, len(text)) + text


def client_clipboard(body: bytes) -> bytes:
    """An Extended Clipboard message (from rfb.clipboard_caps and friends) as ClientCutText."""
    return bytes([ClientMsg.CLIENT_CUT_TEXT]) + body


@dataclass(frozen=True)
class RawRows:
    """Some whole rows of a Raw rectangle, 4 bytes per pixel in the format we set."""

    x: int
    y: int
    width: int
    data: bytes


@dataclass(frozen=True)
class CopyRect:
    """Copy the (width x height) area at (src_x, src_y) to (x, y)."""

    x: int
    y: int
    width: int
    height: int
    src_x: int
    src_y: int


@dataclass(frozen=True)
class DesktopResize:
    """DesktopSize or ExtendedDesktopSize: the framebuffer is now width x height.

    An ExtendedDesktopSize also gives the server's first `screen`, which a SetDesktopSize
    names, and, when it answers ours, the `answer`: its status (the size stays when it is not
    OK).  A plain DesktopSize has neither.
    """

    width: int
    height: int
    screen: Screen | None = None
    answer: int | None = None


@dataclass(frozen=True)
class CursorShape:
    """The Cursor pseudo-encoding: a pointer image, its visibility mask and its hotspot."""

    hotspot_x: int
    hotspot_y: int
    width: int
    height: int
    pixels: bytes
    mask: bytes


@dataclass(frozen=True)
class ExtendedKeysAccepted:
    """The QEMU Extended Key Event pseudo-rectangle (-258): the server takes scancodes."""


@dataclass(frozen=True)
class LedState:
    """The LED State pseudo-rectangle (-261): bit 0 Scroll, 1 Num, 2 Caps Lock."""

    state: int


@dataclass(frozen=True)
class PointerTypeChange:
    """The Pointer Type Change pseudo-rectangle (-257): absolute or relative pointer events."""

    absolute: bool


@dataclass(frozen=True)
class UpdateEnd:
    """The last rectangle of a FramebufferUpdate has been read."""


@dataclass(frozen=True)
class Bell:
    """§7.6.3."""


@dataclass(frozen=True)
class ServerCutText:
    """§7.6.4; `text` holds at most CUT_TEXT_LIMIT bytes."""

    text: bytes


class ServerReader:
    """Turns the bytes a guest server sends after ServerInit into events, checked.

    We ask the server for a 4-byte pixel format and for Raw, CopyRect, DesktopSize,
    ExtendedDesktopSize and Cursor only, and for QEMU's Extended Key Event, LED State and
    Pointer Type Change pseudo-rectangles, so the size of every rectangle follows from its
    header.  Each rectangle is checked against the current framebuffer before a byte of it is
    used.  Raw pixels come out a few whole rows at a time, as they arrive, so a huge rectangle
    never sits in memory; server cut text beyond the cap is discarded as it streams in.
    We list the Extended Clipboard in ENCODINGS, so its messages are read from the start.
    """

    ENCODINGS = (Encoding.COPY_RECT, Encoding.RAW, Encoding.EXTENDED_DESKTOP_SIZE,
                 Encoding.DESKTOP_SIZE, Encoding.CURSOR, Encoding.EXTENDED_CLIPBOARD,
                 Encoding.QEMU_EXTENDED_KEY_EVENT, Encoding.LED_STATE,
                 Encoding.POINTER_TYPE_CHANGE)
    BYTES_PER_PIXEL = 4
    _RECT_READERS = {
        Encoding.RAW: "_raw_rect",
        Encoding.COPY_RECT: "_copy_rect",
        Encoding.DESKTOP_SIZE: "_desktop_size",
        Encoding.EXTENDED_DESKTOP_SIZE: "_extended_desktop_size",
        Encoding.CURSOR: "_cursor",
        Encoding.QEMU_EXTENDED_KEY_EVENT: "_extended_keys",
        Encoding.LED_STATE: "_led_state",
        Encoding.POINTER_TYPE_CHANGE: "_pointer_type_change",
    }

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._buffer = bytearray()
        self._rects_left = 0
        self._update_done = False
        self._raw: list | None = None
        self._cut_text: CappedBody | None = None
        self._extended = False

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def mid_message(self) -> bool:
        """True while a message has started but not finished."""
        return bool(self._buffer or self._rects_left or self._cut_text)

    def next_event(self):
        """The next event, or None if more bytes are needed."""
        while (event := self._step()) is _NO_EVENT:
            pass
        return event

    def _step(self):
        """Read one event, or None for "need more bytes", or _NO_EVENT for "read on"."""
        if self._update_done:
            self._update_done = False
            return UpdateEnd()
        if self._raw is not None:
            return self._raw_rows()
        if self._cut_text is not None:
            return self._cut_text_event()
        if self._rects_left:
            return self._rect()
        if not self._buffer:
            return None
        kind = self._buffer[0]
        if kind == ServerMsg.FRAMEBUFFER_UPDATE:
            return self._update_header()
        if kind == ServerMsg.BELL:
            del self._buffer[:1]
            return Bell()
        if kind == ServerMsg.SERVER_CUT_TEXT:
            return self._start_cut_text()
        raise ProtocolError(f"unexpected server message type {kind}")

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _update_header(self):
        if len(self._buffer) < 4:
            return None
        (count,) = struct.unpack(">2xH", self._take(4))
        if count == 0:
            return UpdateEnd()
        self._rects_left = count
        return self._rect()

    def _finish_rect(self) -> None:
        self._rects_left -= 1
        self._update_done = self._rects_left == 0

    def _rect(self):
        if len(self._buffer) < 12:
            return None
        x, y, width, height, encoding = RECT_HEADER.unpack(self._buffer[:12])
        reader = self._RECT_READERS.get(encoding)
        if reader is None:
            raise ProtocolError(f"rectangle in encoding {encoding}, which was not requested")
        return getattr(self, reader)(x, y, width, height)

    def _check_inside(self, x: int, y: int, width: int, height: int) -> None:
        if x + width > self.width or y + height > self.height:
            raise ProtocolError(
                f"rectangle {width}x{height}+{x}+{y} outside the {self.width}x{self.height} "
                "framebuffer")

    def _raw_rect(self, x, y, width, height):
        self._check_inside(x, y, width, height)
        del self._buffer[:12]
        if width == 0 or height == 0:
            self._finish_rect()
            return _NO_EVENT
        self._raw = [x, y, width, height]
        return self._raw_rows()

    def _raw_rows(self):
        x, y, width, rows_left = self._raw
        row_bytes = width * self.BYTES_PER_PIXEL
        rows = min(rows_left, len(self._buffer) // row_bytes)
        if rows == 0:
            return None
        self._raw[1] += rows
        self._raw[3] -= rows
        if self._raw[3] == 0:
            self._raw = None
            self._finish_rect()
        return RawRows(x, y, width, self._take(rows * row_bytes))

    def _copy_rect(self, x, y, width, height):
        if len(self._buffer) < 16:
            return None
        src_x, src_y = struct.unpack(">HH", self._buffer[12:16])
        self._check_inside(x, y, width, height)
        self._check_inside(src_x, src_y, width, height)
        del self._buffer[:16]
        self._finish_rect()
        return CopyRect(x, y, width, height, src_x, src_y)

    def _desktop_size(self, x, y, width, height):
        del self._buffer[:12]
        return self._desktop_size_checked(width, height)

    def _extended_desktop_size(self, x, y, width, height):
        if len(self._buffer) < 16:
            return None
        count = self._buffer[12]
        if count == 0:
            raise ProtocolError("ExtendedDesktopSize with no screens")
        if len(self._buffer) < 16 + 16 * count:
            return None
        screen = Screen(*Screen.STRUCT.unpack_from(self._buffer, 16))
        del self._buffer[: 16 + 16 * count]
        answer = y if x == ExtendedDesktopSizeReason.CLIENT else None
        if y != ExtendedDesktopSizeStatus.OK:
            if answer is None:
                raise ProtocolError(f"ExtendedDesktopSize with status {y}, unasked for")
            width, height = self.width, self.height
        return self._desktop_size_checked(width, height, screen, answer)

    def _desktop_size_checked(self, width, height, screen=None, answer=None):
        check_desktop_size(width, height)
        self._finish_rect()
        self.width, self.height = width, height
        return DesktopResize(width, height, screen, answer)

    def _cursor(self, x, y, width, height):
        if width > MAX_CURSOR_SIDE or height > MAX_CURSOR_SIDE:
            raise ProtocolError(f"cursor of {width}x{height}")
        if width and height:
            # Xtightvnc hides the pointer with a 1x2 cursor whose hotspot is (0,2).
            x, y = min(x, width - 1), min(y, height - 1)
        pixels_size = width * height * self.BYTES_PER_PIXEL
        mask_size = (width + 7) // 8 * height
        if len(self._buffer) < 12 + pixels_size + mask_size:
            return None
        del self._buffer[:12]
        pixels, mask = self._take(pixels_size), self._take(mask_size)
        self._finish_rect()
        return CursorShape(x, y, width, height, pixels, mask)

    def _extended_keys(self, x, y, width, height):
        del self._buffer[:12]
        self._finish_rect()
        return ExtendedKeysAccepted()

    def _led_state(self, x, y, width, height):
        if len(self._buffer) < 13:
            return None
        state = self._take(13)[12]
        self._finish_rect()
        return LedState(state & 7)

    def _pointer_type_change(self, x, y, width, height):
        del self._buffer[:12]
        self._finish_rect()
        return PointerTypeChange(x != 0)

    def _start_cut_text(self):
        if len(self._buffer) < 8:
            return None
        length, self._extended = cut_text_length(
            bytes(self._buffer[1:8]), True, "ServerCutText")
        del self._buffer[:8]
        self._cut_text = CappedBody(length)
        return self._cut_text_event()

    def _cut_text_event(self):
        text = self._cut_text.consume(self._buffer)
        if text is None:
            return None
        self._cut_text = None
        return parse_extended_clipboard(text) if self._extended else ServerCutText(text)
