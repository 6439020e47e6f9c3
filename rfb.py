"""The RFB protocol (RFC 6143) as plain data: bytes in, messages out; messages in, bytes out.

This module never touches a socket, a thread, a terminal or an image.  The server and proxy
do the I/O and hand the bytes here, the way h11 does HTTP:

* the handshake is a few pure functions, one per step of RFC 6143 §7.1–7.3, which the caller
  runs in a straight line on its own connection (`parse_client_version`, `security_offer`,
  `parse_security_choice`, `security_result`, `server_init`);
* after the handshake, `ClientReader` is fed whatever bytes arrive and hands back one
  complete client message at a time (§7.5), leaving a partial message buffered;
* the server's messages (§7.6) are built by small functions that return bytes;
* the security step's wire formats live here too: VNC Authentication's DES response (§7.2.2),
  which the proxy's client side (rfbclient.py) computes with the same function, and the
  server's side of VeNCrypt (rfbproto): we send version 0.2, the viewer answers with its
  version, we acknowledge, offer subtypes, read its choice, accept, and TLS starts on the
  same socket.  Which types to offer and whether a password matches is auth.py's policy;
* QEMU's extensions (rfbproto §QEMU Client Message and the pseudo-encodings -257, -258, -261):
  the Extended Key Event that carries a scancode beside the keysym, which the server invites
  with a pseudo-rectangle, and the LED State (also VMware's variant) and Pointer Type Change
  pseudo-rectangles that the proxy passes on from a guest's QEMU.

Every number that comes off the wire is checked before it is used.  A peer that breaks the
protocol gets a `ProtocolError` with a one-line reason; the caller closes that one connection.
Any other exception is a bug in our code.

Trade-offs: messages are frozen dataclasses with a class-level `struct.Struct`, named after
the RFC, which is slower than tuples but reads like the spec.  ClientCutText is the one message
whose body is streamed: a hostile length is discarded as it arrives instead of buffered, and
only the first `CUT_TEXT_LIMIT` bytes are kept (TigerVNC does the same).  No message has a
generic length field, so an unknown message type cannot be skipped: it is a protocol error.

The Extended Clipboard (rfbproto, pseudo-encoding 0xC0A1E5CE) reuses ClientCutText and
ServerCutText with a negative length: the body is a U32 of flags, format bits below and one
action above (caps, request, peek, notify, provide), then the action's data.  Caps lists the
largest text each side takes unasked; provide carries a zlib stream of (U32 size, data) per
format, text as NUL-terminated UTF-8 with CR LF line ends.  Only the text format is used here.
The same message serves both directions, so its reader (`parse_extended_clipboard`) and
writers live here and rfbclient.py uses them for the guest link.  The body is capped like
ClientCutText's, and decompression stops at `CUT_TEXT_LIMIT` bytes, so a zlib bomb costs
nothing; text cut by a cap is kept as far as it came.  A reader only takes the extended
form once its owner has said it offered it (`extended_clipboard`); before, it is an error,
as it always was.
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from dataclasses import dataclass

CUT_TEXT_LIMIT = 256 * 1024
MAX_SCREENS = 16
SCREEN_ID = 1  # libvncclient (Remmina, KRDC, Guacamole) discards a screen whose id is 0


class ProtocolError(Exception):
    """The peer broke the protocol; close its connection and carry on."""


class ClientMsg(enum.IntEnum):
    """Client-to-server message types, RFC 6143 §7.5 (251 is SetDesktopSize, rfbproto)."""

    SET_PIXEL_FORMAT = 0
    SET_ENCODINGS = 2
    FRAMEBUFFER_UPDATE_REQUEST = 3
    KEY_EVENT = 4
    POINTER_EVENT = 5
    CLIENT_CUT_TEXT = 6
    SET_DESKTOP_SIZE = 251
    QEMU = 255


class ServerMsg(enum.IntEnum):
    """Server-to-client message types, RFC 6143 §7.6."""

    FRAMEBUFFER_UPDATE = 0
    SET_COLOUR_MAP_ENTRIES = 1
    BELL = 2
    SERVER_CUT_TEXT = 3


class Encoding(enum.IntEnum):
    """Encodings and pseudo-encodings, RFC 6143 §7.7–7.8 and the rfbproto registry."""

    RAW = 0
    COPY_RECT = 1
    RRE = 2
    HEXTILE = 5
    ZLIB = 6
    TIGHT = 7
    ZRLE = 16
    DESKTOP_SIZE = -223
    LAST_RECT = -224
    CURSOR = -239
    EXTENDED_DESKTOP_SIZE = -308
    EXTENDED_CLIPBOARD = -0x3F5E1A32  # 0xC0A1E5CE as the signed number SetEncodings carries
    POINTER_TYPE_CHANGE = -257
    QEMU_EXTENDED_KEY_EVENT = -258
    LED_STATE = -261
    VMWARE_LED_STATE = 0x574D5668


class QemuSubtype(enum.IntEnum):
    """Subtypes of the QEMU client message (255), rfbproto §QEMU Client Message."""

    EXTENDED_KEY_EVENT = 0


class SecurityType(enum.IntEnum):
    """Security types, RFC 6143 §7.2 (19 is VeNCrypt, rfbproto)."""

    INVALID = 0
    NONE = 1
    VNC_AUTHENTICATION = 2
    VENCRYPT = 19


class VeNCryptSubtype(enum.IntEnum):
    """The VeNCrypt subtypes we speak: TLS with an X.509 certificate, then None or VncAuth."""

    X509_NONE = 260
    X509_VNC = 261


class ExtendedDesktopSizeStatus(enum.IntEnum):
    """The y field of an ExtendedDesktopSize rectangle (rfbproto §ExtendedDesktopSize)."""

    OK = 0
    PROHIBITED = 1
    OUT_OF_RESOURCES = 2
    INVALID_LAYOUT = 3


class ExtendedDesktopSizeReason(enum.IntEnum):
    """The x field of an ExtendedDesktopSize rectangle: why the layout changed."""

    SERVER = 0
    CLIENT = 1  # the answer to this client's SetDesktopSize
    OTHER_CLIENT = 2


# --- Handshake, RFC 6143 §7.1 ---------------------------------------------------------

VERSION_3_3 = (3, 3)
VERSION_3_7 = (3, 7)
VERSION_3_8 = (3, 8)
SERVER_VERSION = b"RFB 003.008\n"
VERSION_LENGTH = 12
VERSION_RE = re.compile(rb"RFB (\d{3})\.(\d{3})\n")


def parse_client_version(data: bytes) -> tuple[int, int]:
    """Map the client's 12-byte ProtocolVersion to the version both sides will speak.

    RFC 6143 §7.1.1 says any unknown minor should be treated as 3.3; the deployed servers
    (TigerVNC, libvncserver) treat 3.9 and above as 3.8, and so do we.
    """
    match = VERSION_RE.fullmatch(data)
    if not match:
        raise ProtocolError(f"bad protocol version string {data!r}")
    major, minor = int(match[1]), int(match[2])
    if major != 3 or minor < 3:
        raise ProtocolError(f"unsupported protocol version {major}.{minor}")
    if minor >= 8:
        return VERSION_3_8
    if minor == 7:
        return VERSION_3_7
    return VERSION_3_3


def _reason(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">I", len(data)) + data


def security_offer(version: tuple[int, int], types: list[int]) -> bytes:
    """The server's list of security types (3.7+) or its single chosen type (3.3), §7.1.2."""
    if version == VERSION_3_3:
        return struct.pack(">I", types[0])
    return bytes([len(types), *types])


def security_refusal(version: tuple[int, int], reason: str) -> bytes:
    """Refuse the connection before security: an empty offer followed by the reason."""
    if version == VERSION_3_3:
        return struct.pack(">I", SecurityType.INVALID) + _reason(reason)
    return b"\0" + _reason(reason)


def parse_security_choice(data: bytes, offered: list[int]) -> int:
    """The one byte a 3.7/3.8 client sends back: it must be a type we offered."""
    if data[0] not in offered:
        raise ProtocolError(f"client chose security type {data[0]}, which was not offered")
    return data[0]


def security_result(version: tuple[int, int], ok: bool, reason: str = "") -> bytes:
    """SecurityResult, §7.1.3; the reason string exists only in 3.8."""
    if ok:
        return struct.pack(">I", 0)
    if version == VERSION_3_8:
        return struct.pack(">I", 1) + _reason(reason)
    return struct.pack(">I", 1)


def needs_security_result(version: tuple[int, int], security_type: int) -> bool:
    """Before 3.8, security type None is followed by no SecurityResult at all."""
    return version == VERSION_3_8 or security_type != SecurityType.NONE


# --- VNC Authentication, §7.2.2 -------------------------------------------------------------

CHALLENGE_LENGTH = 16


def vnc_auth_response(challenge: bytes, password: bytes) -> bytes:
    """The response that proves a password: the challenge DES-encrypted with it as the key.

    The key is the password cut or NUL-padded to 8 bytes, each byte with its bits reversed (VNC
    takes the low bit as DES's first).  Both sides use this: the server to check a viewer, the
    proxy to answer a guest.  DES comes from pycryptodome, imported here so that only users of
    VNC authentication need it: a hand-written DES would be code nobody audits, and
    `cryptography` offers DES only as TripleDES with a repeated key.
    """
    from Crypto.Cipher import DES

    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in password[:8].ljust(8, b"\0"))
    return DES.new(key, DES.MODE_ECB).encrypt(challenge)


# --- VeNCrypt, rfbproto §VeNCrypt (the server's side) ---------------------------------------

VENCRYPT_VERSION = b"\x00\x02"
VENCRYPT_OK, VENCRYPT_FAILED = b"\x00", b"\x01"
VENCRYPT_SUBTYPE_ACCEPTED = b"\x01"


def vencrypt_version_ack(reply: bytes) -> bytes:
    """Our answer to the viewer's 2-byte VeNCrypt version: only 0.2 is spoken."""
    return VENCRYPT_OK if reply == VENCRYPT_VERSION else VENCRYPT_FAILED


def vencrypt_subtypes(subtypes: list[int]) -> bytes:
    """The subtypes we offer: a count byte, then each as a U32."""
    return struct.pack(f">B{len(subtypes)}I", len(subtypes), *subtypes)


def parse_vencrypt_choice(data: bytes, offered: list[int]) -> int:
    """The viewer's 4-byte subtype: it must be one we offered."""
    (chosen,) = struct.unpack(">I", data)
    if chosen not in offered:
        raise ProtocolError(f"viewer chose VeNCrypt subtype {chosen}, which was not offered")
    return chosen


# --- Pixel format, §7.4 -----------------------------------------------------------------


@dataclass(frozen=True)
class PixelFormat:
    """PIXEL_FORMAT, RFC 6143 §7.4: how one pixel's colour is packed into bytes."""

    bits_per_pixel: int
    depth: int
    big_endian: bool
    true_colour: bool
    red_max: int
    green_max: int
    blue_max: int
    red_shift: int
    green_shift: int
    blue_shift: int

    STRUCT = struct.Struct(">BBBBHHHBBB3x")

    @classmethod
    def from_bytes(cls, data: bytes) -> PixelFormat:
        bpp, depth, big, true, rmax, gmax, bmax, rs, gs, bs = cls.STRUCT.unpack(data)
        return cls(bpp, depth, big != 0, true != 0, rmax, gmax, bmax, rs, gs, bs)

    def to_bytes(self) -> bytes:
        return self.STRUCT.pack(
            self.bits_per_pixel, self.depth, self.big_endian, self.true_colour,
            self.red_max, self.green_max, self.blue_max,
            self.red_shift, self.green_shift, self.blue_shift,
        )

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    @property
    def channels(self) -> tuple[tuple[int, int], ...]:
        """(max, shift) for red, green and blue."""
        return (
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        )

    def check(self) -> None:
        """Refuse anything but a sane true-colour format (TigerVNC's PixelFormat::isSane)."""
        if self.bits_per_pixel not in (8, 16, 32):
            raise ProtocolError(f"unsupported bits-per-pixel {self.bits_per_pixel}")
        if not self.true_colour:
            raise ProtocolError("colour-map pixel formats are not supported")
        if not 0 < self.depth <= self.bits_per_pixel:
            raise ProtocolError(f"depth {self.depth} does not fit {self.bits_per_pixel} bpp")
        masks = []
        for maximum, shift in self.channels:
            bits = maximum.bit_length()
            if maximum == 0 or maximum & (maximum + 1) or maximum > 255:
                raise ProtocolError(f"colour maximum {maximum} is not 2^n-1 in 1..255")
            if bits + shift > self.bits_per_pixel:
                raise ProtocolError(f"colour channel at shift {shift} overflows the pixel")
            masks.append(maximum << shift)
        if sum(m.bit_count() for m in masks) > self.depth:
            raise ProtocolError("colour channels need more bits than the depth")
        if masks[0] & masks[1] or masks[0] & masks[2] or masks[1] & masks[2]:
            raise ProtocolError("colour channels overlap")


# The format we announce in ServerInit: 32/24 true colour, little-endian, red at bit 16.
DEFAULT_PIXEL_FORMAT = PixelFormat(32, 24, False, True, 255, 255, 255, 16, 8, 0)


def parse_client_init(data: bytes) -> bool:
    """ClientInit, §7.3.1: True if the client is willing to share the desktop."""
    return data[0] != 0


def server_init(width: int, height: int, pixel_format: PixelFormat, name: str) -> bytes:
    """ServerInit, §7.3.2."""
    encoded = name.encode()
    return (
        struct.pack(">HH", width, height)
        + pixel_format.to_bytes()
        + struct.pack(">I", len(encoded))
        + encoded
    )


# --- Client-to-server messages, §7.5 ---------------------------------------------------


@dataclass(frozen=True)
class SetPixelFormat:
    """§7.5.1: the format for all updates started after this message."""

    pixel_format: PixelFormat


@dataclass(frozen=True)
class SetEncodings:
    """§7.5.2: the encodings the client accepts, most preferred first."""

    encodings: tuple[int, ...]


@dataclass(frozen=True)
class FramebufferUpdateRequest:
    """§7.5.3: the client wants (the changes to) this rectangle."""

    incremental: bool
    x: int
    y: int
    width: int
    height: int

    STRUCT = struct.Struct(">BHHHH")


@dataclass(frozen=True)
class KeyEvent:
    """§7.5.4: a key pressed or released, as an X keysym."""

    down: bool
    keysym: int

    STRUCT = struct.Struct(">B2xI")


@dataclass(frozen=True)
class QemuExtendedKeyEvent:
    """rfbproto §QEMU Extended Key Event: a key as an XT scancode, with its keysym (maybe 0).

    `keycode` is the set-1 make code, an 0xE0-prefixed key as 0x80 | its second byte.
    """

    down: bool
    keysym: int
    keycode: int

    STRUCT = struct.Struct(">BHII")


@dataclass(frozen=True)
class PointerEvent:
    """§7.5.5: pointer position and the state of buttons 1-8 (bit 0 = left)."""

    button_mask: int
    x: int
    y: int

    STRUCT = struct.Struct(">BHH")


@dataclass(frozen=True)
class ClientCutText:
    """§7.5.6: clipboard text (Latin-1); `text` holds at most CUT_TEXT_LIMIT bytes."""

    text: bytes


class Clipboard(enum.IntFlag):
    """The Extended Clipboard's flags: formats in the low bits, actions in the high byte."""

    TEXT = 1 << 0
    CAPS = 1 << 24
    REQUEST = 1 << 25
    PEEK = 1 << 26
    NOTIFY = 1 << 27
    PROVIDE = 1 << 28


CLIPBOARD_FORMATS = 0xFFFF
CLIPBOARD_ACTIONS = (Clipboard.CAPS, Clipboard.REQUEST, Clipboard.PEEK, Clipboard.NOTIFY,
                     Clipboard.PROVIDE)


@dataclass(frozen=True)
class ExtendedClipboard:
    """An Extended Clipboard message, either way: its `action`, the `formats` it names, and
    for caps the largest size of each format (in format-bit order), for provide the text
    (None when the text format is not in it)."""

    action: Clipboard
    formats: int
    sizes: tuple[int, ...] = ()
    text: str | None = None


@dataclass(frozen=True)
class Screen:
    """One SCREEN of an ExtendedDesktopSize layout (rfbproto §ExtendedDesktopSize)."""

    id: int
    x: int
    y: int
    width: int
    height: int
    flags: int

    STRUCT = struct.Struct(">IHHHHI")


@dataclass(frozen=True)
class SetDesktopSize:
    """rfbproto §SetDesktopSize: the client asks for a new framebuffer layout."""

    width: int
    height: int
    screens: tuple[Screen, ...]


def _parse_set_pixel_format(header: bytes, body: bytes) -> SetPixelFormat:
    pixel_format = PixelFormat.from_bytes(header[3:19])
    pixel_format.check()
    return SetPixelFormat(pixel_format)


def _parse_set_encodings(header: bytes, body: bytes) -> SetEncodings:
    return SetEncodings(struct.unpack(f">{len(body) // 4}i", body))


def _parse_update_request(header: bytes, body: bytes) -> FramebufferUpdateRequest:
    incremental, x, y, width, height = FramebufferUpdateRequest.STRUCT.unpack(header)
    return FramebufferUpdateRequest(incremental != 0, x, y, width, height)


def _parse_key_event(header: bytes, body: bytes) -> KeyEvent:
    down, keysym = KeyEvent.STRUCT.unpack(header)
    return KeyEvent(down != 0, keysym)


def _parse_qemu_message(header: bytes, body: bytes) -> QemuExtendedKeyEvent:
    subtype, down, keysym, keycode = QemuExtendedKeyEvent.STRUCT.unpack(header)
    if subtype != QemuSubtype.EXTENDED_KEY_EVENT:
        raise ProtocolError(f"unknown QEMU client message subtype {subtype}")
    return QemuExtendedKeyEvent(down != 0, keysym, keycode)


def _parse_pointer_event(header: bytes, body: bytes) -> PointerEvent:
    return PointerEvent(*PointerEvent.STRUCT.unpack(header))


def _parse_set_desktop_size(header: bytes, body: bytes) -> SetDesktopSize:
    width, height, count = struct.unpack(">xHHB", header[:6])
    screens = tuple(
        Screen(*Screen.STRUCT.unpack_from(body, 16 * i)) for i in range(count)
    )
    return SetDesktopSize(width, height, screens)


def _encodings_length(header: bytes) -> int:
    return 4 * struct.unpack(">xH", header)[0]


def _screens_length(header: bytes) -> int:
    count = header[5]
    if not 1 <= count <= MAX_SCREENS:
        raise ProtocolError(f"SetDesktopSize with {count} screens")
    return 16 * count


# type: (header length after the type byte, body length from the header, parser)
_CLIENT_MESSAGES = {
    ClientMsg.SET_PIXEL_FORMAT: (19, None, _parse_set_pixel_format),
    ClientMsg.SET_ENCODINGS: (3, _encodings_length, _parse_set_encodings),
    ClientMsg.FRAMEBUFFER_UPDATE_REQUEST: (9, None, _parse_update_request),
    ClientMsg.KEY_EVENT: (7, None, _parse_key_event),
    ClientMsg.POINTER_EVENT: (5, None, _parse_pointer_event),
    ClientMsg.SET_DESKTOP_SIZE: (7, _screens_length, _parse_set_desktop_size),
    ClientMsg.QEMU: (11, None, _parse_qemu_message),
}
CUT_TEXT_HEADER = struct.Struct(">3xI")


class CappedBody:
    """A length-prefixed body consumed as it arrives, keeping at most CUT_TEXT_LIMIT bytes."""

    def __init__(self, length: int) -> None:
        self.kept = bytearray()
        self.remaining = length

    def consume(self, buffer: bytearray) -> bytes | None:
        """Take what `buffer` holds of the body; the kept bytes once the body is complete."""
        taken = buffer[: self.remaining]
        del buffer[: len(taken)]
        self.remaining -= len(taken)
        self.kept += taken[: CUT_TEXT_LIMIT - len(self.kept)]
        return None if self.remaining else bytes(self.kept)


def cut_text_length(header: bytes, extended_clipboard: bool, name: str) -> tuple[int, bool]:
    """The body length of a cut text message and whether it is an Extended Clipboard one."""
    (length,) = CUT_TEXT_HEADER.unpack(header)
    if length < 0x80000000:
        return length, False
    if not extended_clipboard:
        raise ProtocolError(f"{name} length {length:#x}: extended clipboard not offered")
    length = 0x100000000 - length
    if length < 4:
        raise ProtocolError(f"extended {name} of {length} bytes: no room for its flags")
    return length, True


def parse_extended_clipboard(body: bytes) -> ExtendedClipboard:
    """An Extended Clipboard body (flags and data), possibly cut short by CUT_TEXT_LIMIT."""
    (flags,) = struct.unpack(">I", body[:4])
    formats = flags & CLIPBOARD_FORMATS
    action = next((action for action in CLIPBOARD_ACTIONS if flags & action), None)
    if action is None:
        raise ProtocolError(f"extended clipboard flags {flags:#x} name no action")
    if action == Clipboard.CAPS:
        count = bin(formats).count("1")
        if len(body) < 4 + 4 * count:
            raise ProtocolError(f"extended clipboard caps for {count} formats lack their sizes")
        sizes = struct.unpack(f">{count}I", body[4 : 4 + 4 * count])
        return ExtendedClipboard(Clipboard(flags & ~CLIPBOARD_FORMATS), formats, sizes)
    if action == Clipboard.PROVIDE:
        return ExtendedClipboard(action, formats, text=_provided_text(body[4:], formats))
    return ExtendedClipboard(action, formats)


def _provided_text(compressed: bytes, formats: int) -> str | None:
    """The text of a provide message's zlib stream, which holds (size, data) per format."""
    if not formats & Clipboard.TEXT:
        return None
    try:
        data = zlib.decompressobj().decompress(compressed, 4 + CUT_TEXT_LIMIT)
    except zlib.error as error:
        raise ProtocolError(f"extended clipboard provide: bad zlib stream ({error})") from None
    if len(data) < 4:
        raise ProtocolError("extended clipboard provide: text size missing")
    (size,) = struct.unpack(">I", data[:4])
    text = data[4 : 4 + size].split(b"\0", 1)[0]
    return text.decode("utf-8", "replace").replace("\r\n", "\n")


def extended_clipboard_body(flags: int, data: bytes = b"") -> bytes:
    """The length field (negative) and body of an Extended Clipboard message."""
    body = struct.pack(">I", flags) + data
    return struct.pack(">3xi", -len(body)) + body


def clipboard_caps(actions: int, text_limit: int) -> bytes:
    """Caps: the actions we take and the largest text we take unasked (after the type byte)."""
    return extended_clipboard_body(Clipboard.CAPS | actions | Clipboard.TEXT,
                                   struct.pack(">I", text_limit))


def clipboard_action(action: Clipboard, formats: int = Clipboard.TEXT) -> bytes:
    """Request, peek or notify: flags only (after the type byte)."""
    return extended_clipboard_body(action | formats)


def clipboard_provide(text: str) -> bytes:
    """Provide `text` (after the type byte): NUL-terminated UTF-8 with CR LF, compressed."""
    data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode() + b"\0"
    stream = zlib.compress(struct.pack(">I", len(data)) + data)
    return extended_clipboard_body(Clipboard.PROVIDE | Clipboard.TEXT, stream)


def latin1(text: str) -> bytes:
    """Text as the plain cut text messages carry it: Latin-1, `?` for what it cannot hold."""
    return text.encode("latin-1", "replace")


class ClientReader:
    """Turns the bytes a viewer sends after ServerInit into client messages.

    Feed it with `feed(data)`; then call `next_message()` until it returns None, which means
    "need more bytes".  A partial message stays buffered; nothing is consumed twice.  Set
    `extended_clipboard` once the Extended Clipboard was offered to the viewer.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._cut_text: CappedBody | None = None
        self._extended = False
        self.extended_clipboard = False

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self):
        """Return the next complete message, or None if more bytes are needed."""
        if self._cut_text is not None:
            return self._cut_text_message()
        if not self._buffer:
            return None
        kind = self._buffer[0]
        if kind == ClientMsg.CLIENT_CUT_TEXT:
            return self._start_cut_text()
        if kind not in _CLIENT_MESSAGES:
            raise ProtocolError(f"unknown client message type {kind}")
        header_length, body_length, parse = _CLIENT_MESSAGES[kind]
        if len(self._buffer) < 1 + header_length:
            return None
        header = bytes(self._buffer[1 : 1 + header_length])
        length = body_length(header) if body_length else 0
        end = 1 + header_length + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[1 + header_length : end])
        del self._buffer[:end]
        return parse(header, body)

    def _start_cut_text(self):
        if len(self._buffer) < 8:
            return None
        length, self._extended = cut_text_length(
            bytes(self._buffer[1:8]), self.extended_clipboard, "ClientCutText")
        del self._buffer[:8]
        self._cut_text = CappedBody(length)
        return self._cut_text_message()

    def _cut_text_message(self):
        text = self._cut_text.consume(self._buffer)
        if text is None:
            return None
        self._cut_text = None
        return parse_extended_clipboard(text) if self._extended else ClientCutText(text)


# --- Server-to-client messages, §7.6 ---------------------------------------------------

RECT_HEADER = struct.Struct(">HHHHi")


def framebuffer_update(rects: list[bytes]) -> bytes:
    """FramebufferUpdate, §7.6.1: a header and already encoded rectangles."""
    return struct.pack(">BxH", ServerMsg.FRAMEBUFFER_UPDATE, len(rects)) + b"".join(rects)


def framebuffer_update_header(count: int) -> bytes:
    """A FramebufferUpdate's header alone, §7.6.1, for `count` rectangles sent after it
    (0xFFFF: as many as come before a LastRect, for a viewer that listed LastRect)."""
    return struct.pack(">BxH", ServerMsg.FRAMEBUFFER_UPDATE, count)


def last_rect() -> bytes:
    """The LastRect pseudo-rectangle (-224): the update that said 0xFFFF rectangles ends here."""
    return rect_header(0, 0, 0, 0, Encoding.LAST_RECT)


def rect_header(x: int, y: int, width: int, height: int, encoding: int) -> bytes:
    return RECT_HEADER.pack(x, y, width, height, encoding)


def copy_rect(x: int, y: int, width: int, height: int, src_x: int, src_y: int) -> bytes:
    """A CopyRect rectangle, §7.7.2: copy (src_x, src_y) of the client's framebuffer here."""
    header = rect_header(x, y, width, height, Encoding.COPY_RECT)
    return header + struct.pack(">HH", src_x, src_y)


def desktop_size(width: int, height: int) -> bytes:
    """A DesktopSize pseudo-rectangle, §7.8.2."""
    return rect_header(0, 0, width, height, Encoding.DESKTOP_SIZE)


def extended_desktop_size(width: int, height: int, reason: int, status: int) -> bytes:
    """An ExtendedDesktopSize pseudo-rectangle with one screen covering the framebuffer."""
    screen = Screen.STRUCT.pack(SCREEN_ID, 0, 0, width, height, 0)
    return (
        rect_header(reason, status, width, height, Encoding.EXTENDED_DESKTOP_SIZE)
        + struct.pack(">B3x", 1)
        + screen
    )


def qemu_extended_key_event() -> bytes:
    """The QEMU Extended Key Event pseudo-rectangle (-258): from now on, send me scancodes."""
    return rect_header(0, 0, 0, 0, Encoding.QEMU_EXTENDED_KEY_EVENT)


def led_state(state: int) -> bytes:
    """The LED State pseudo-rectangle (-261): bit 0 Scroll, 1 Num, 2 Caps Lock."""
    return rect_header(0, 0, 0, 0, Encoding.LED_STATE) + struct.pack(">B", state)


def vmware_led_state(state: int) -> bytes:
    """VMware's LED State pseudo-rectangle: the same bits as -261, in a U32."""
    return rect_header(0, 0, 0, 0, Encoding.VMWARE_LED_STATE) + struct.pack(">I", state)


POINTER_RELATIVE_ORIGIN = 0x7FFF  # a relative pointer event's (x, y) for no motion


def pointer_type_change(absolute: bool, width: int, height: int) -> bytes:
    """The Pointer Type Change pseudo-rectangle (-257): x = 1 for absolute pointer events,
    0 for relative ones (each coordinate then a motion offset by 0x7FFF)."""
    return rect_header(int(absolute), 0, width, height, Encoding.POINTER_TYPE_CHANGE)


def bell() -> bytes:
    """Bell, §7.6.3."""
    return bytes([ServerMsg.BELL])


def server_cut_text(text: bytes) -> bytes:
    """ServerCutText, §7.6.4."""
    return struct.pack(">B3xI", ServerMsg.SERVER_CUT_TEXT, len(text)) + text


def server_clipboard(body: bytes) -> bytes:
    """An Extended Clipboard message (from clipboard_caps and friends) as ServerCutText."""
    return bytes([ServerMsg.SERVER_CUT_TEXT]) + body
