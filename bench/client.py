"""client.py: the benchmark's own RFB viewer, which times every update by its last byte.

What.  `Viewer` is a small RFB 3.8 client (security None) written from RFC 6143 for the
benchmark.  It reads vncterm and TigerVNC's Xvnc the same way, so the two servers' figures
can stand next to each other: it asks both for the same pixel format (32 bpp, RFC 6143 §7.4)
and the same encodings (`VIEWER_ENCODINGS`: Tight, CopyRect, compression level 2, the pointer
shape sent apart as the Cursor pseudo-encoding, as TigerVNC's viewer does, but no JPEG, so
that pictures are exact).

How.  Every chunk read from the socket is noted with the time it arrived; an `Update` is
stamped with the arrival of its last byte (§7.6.1), carries its size on the wire, and says
whether it changed any pixel.  The viewer asks for the next incremental update as soon as one
has arrived (§7.5.3), so a request is always outstanding, as real viewers do.  It decodes Raw,
CopyRect (§7.7.2) and Tight into a Pillow image; with `decode=False` it only walks the framing
of Raw, CopyRect, Hextile, Zlib, ZRLE and Tight, without touching pixels or zlib, so that one
Python process can follow 50 viewers without measuring itself.

Trade-offs.  Only what the benchmark asks for is implemented: no authentication, Tight with
the fill, copy and palette filters but no gradient and no JPEG, and errors are
`RuntimeError`s, because a server that surprises the benchmark is a failed run, not a case
to survive.  The tests' decoding client checks every encoding properly; this one is about
time.
"""

from __future__ import annotations

import collections
import select
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass

from PIL import Image

RAW, COPY_RECT, HEXTILE, ZLIB, TIGHT, ZRLE = 0, 1, 5, 6, 7, 16
DESKTOP_SIZE, CURSOR, COMPRESS_2 = -223, -239, -254
VIEWER_ENCODINGS = (TIGHT, COPY_RECT, DESKTOP_SIZE, CURSOR, COMPRESS_2)
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
CONTROL_L, ALT_L = 0xFFE3, 0xFFE9


@dataclass
class Update:
    """One FramebufferUpdate: when its last byte arrived, its size, whether it changed pixels,
    and how many bytes the connection had carried by its end."""

    time: float
    size: int
    changed: bool
    end: int


class Viewer:
    """An RFB 3.8 viewer (security None) that decodes Raw, CopyRect and Tight, or only parses.

    With `decode=False` it walks every encoding's framing (Raw, CopyRect, Hextile, Zlib, ZRLE,
    Tight) without touching pixels or zlib.  It asks for the next update as soon as one has
    arrived, so a request is always outstanding, as real viewers do.
    """

    def __init__(self, port: int, encodings=VIEWER_ENCODINGS, decode: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.received = self.consumed = 0
        self.arrivals: collections.deque = collections.deque()
        self.decode = decode
        self.send_lock = threading.Lock()
        self.updates: list[Update] = []
        self.seen_encodings: set[int] = set()
        self.read(12)
        self.send(b"RFB 003.008\n")
        if 1 not in self.read(self.read(1)[0]):
            raise RuntimeError("the server does not offer security None")
        self.send(b"\x01")
        if self.read(4) != b"\0\0\0\0":
            raise RuntimeError("security handshake failed")
        self.send(b"\x01")
        width, height = struct.unpack(">HH", self.read(4))
        self.read(16)
        self.read(struct.unpack(">I", self.read(4))[0])
        self.image = Image.new("RGB", (width, height))
        self.streams = [zlib.decompressobj() for _ in range(4)]
        self.send(b"\0\0\0\0" + PIXEL_FORMAT)
        self.send(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))

    @property
    def size(self):
        return self.image.size

    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(data)

    def request(self, incremental: bool = True) -> None:
        self.send(struct.pack(">BBHHHH", 3, incremental, 0, 0, *self.size))

    def key(self, keysym: int) -> None:
        self.send(struct.pack(">BBxxI", 4, 1, keysym) + struct.pack(">BBxxI", 4, 0, keysym))

    def hotkey(self, keysym: int) -> None:
        """Ctrl-Alt-keysym: press all three, release them in reverse."""
        keys = (CONTROL_L, ALT_L, keysym)
        self.send(b"".join(struct.pack(">BBxxI", 4, 1, key) for key in keys)
                  + b"".join(struct.pack(">BBxxI", 4, 0, key) for key in reversed(keys)))

    def type(self, text: str) -> None:
        for character in text:
            self.key(ord(character))

    def pointer(self, x: int, y: int) -> None:
        self.send(struct.pack(">BBHH", 5, 0, x, y))

    def close(self) -> None:
        self.sock.close()

    # Bytes in.

    def fill(self, timeout: float | None) -> bool:
        """Wait up to `timeout` for bytes; False if none came.  Note when they came."""
        if not select.select([self.sock], [], [], timeout)[0]:
            return False
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data
        self.received += len(data)
        self.arrivals.append((self.received, time.perf_counter()))
        return True

    def arrival(self) -> float:
        """When the last byte consumed so far arrived."""
        while self.arrivals[0][0] < self.consumed:
            self.arrivals.popleft()
        return self.arrivals[0][1]

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self.fill(30):
                raise TimeoutError("the server went quiet in the middle of a message")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        self.consumed += size
        return data

    def u8(self) -> int:
        return self.read(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.read(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.read(4))[0]

    # Messages.

    def next_update(self, timeout: float | None = 30) -> Update | None:
        """The next FramebufferUpdate, or None if nothing arrives within `timeout`."""
        while True:
            if not self.buffer and not self.fill(timeout):
                return None
            start = self.consumed
            kind = self.u8()
            if kind == 2:
                continue
            if kind == 3:
                self.read(3)
                self.read(self.u32())
                continue
            if kind != 0:
                raise RuntimeError(f"unexpected server message {kind}")
            self.read(1)
            changed = False
            for _ in range(self.u16()):
                changed |= self.read_rect()
            self.request()
            update = Update(self.arrival(), self.consumed - start, changed, self.consumed)
            self.updates.append(update)
            return update

    def settle(self, quiet: float = 0.3, limit: float = 30) -> None:
        """Take updates until none has come for `quiet` seconds."""
        deadline = time.monotonic() + limit
        while self.next_update(quiet) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError("the screen never settled")

    def read_rect(self) -> bool:
        """Read one rectangle; True if it changed pixels (always False without decoding)."""
        x, y, width, height, encoding = struct.unpack(">HHHHi", self.read(12))
        self.seen_encodings.add(encoding)
        box = (x, y, x + width, y + height)
        before = self.image.crop(box).tobytes() if self.decode else None
        if encoding == RAW:
            data = self.read(width * height * 4)
            self.paste(Image.frombytes("RGB", (width, height), data, "raw", "BGRX"), x, y)
        elif encoding == COPY_RECT:
            src_x, src_y = self.u16(), self.u16()
            if self.decode:
                tile = self.image.crop((src_x, src_y, src_x + width, src_y + height))
                self.image.paste(tile, (x, y))
        elif encoding == TIGHT:
            self.tight(x, y, width, height)
        elif encoding in (ZLIB, ZRLE) and not self.decode:
            self.read(self.u32())
        elif encoding == HEXTILE and not self.decode:
            self.skip_hextile(width, height)
        elif encoding == DESKTOP_SIZE:
            self.image = Image.new("RGB", (width, height))
            return True
        elif encoding == CURSOR:
            self.read(width * height * 4 + (width + 7) // 8 * height)
            return False
        else:
            raise RuntimeError(f"cannot read encoding {encoding} (decode={self.decode})")
        return self.decode and self.image.crop(box).tobytes() != before

    def paste(self, tile: Image.Image, x: int, y: int) -> None:
        if self.decode:
            self.image.paste(tile, (x, y))

    def tight(self, x: int, y: int, width: int, height: int) -> None:
        """Tight (rfbproto §Tight) with 3-byte TPIXELs: fill, copy and palette filters."""
        control = self.u8()
        for number in range(4):
            if control >> number & 1:
                self.streams[number] = zlib.decompressobj()
        method = control >> 4
        if method == 8:
            self.paste(Image.new("RGB", (width, height), tuple(self.read(3))), x, y)
            return
        if method > 8:
            raise RuntimeError(f"Tight method {method} was not asked for")
        colours = None
        if method & 4:
            filter_id = self.u8()
            if filter_id == 1:
                colours = self.read(3 * (self.u8() + 1))
            elif filter_id != 0:
                raise RuntimeError(f"Tight filter {filter_id} is not implemented here")
        if colours is None:
            size, mode, raw_mode = width * height * 3, "RGB", "RGB"
        elif len(colours) == 6:
            size, mode, raw_mode = (width + 7) // 8 * height, "P", "P;1"
        else:
            size, mode, raw_mode = width * height, "P", "P"
        if size < 12:
            data = self.read(size)
        else:
            data = self.read(self.compact_length())
            if self.decode:
                data = self.streams[method & 3].decompress(data)
        if self.decode:
            tile = Image.frombytes(mode, (width, height), data, "raw", raw_mode)
            if colours is not None:
                tile.putpalette(colours)
            self.paste(tile.convert("RGB"), x, y)

    def compact_length(self) -> int:
        """Tight's 1-3 byte length: 7 bits a byte, low first; the third byte has 8."""
        length, shift = 0, 0
        for _ in range(3):
            byte = self.u8()
            length |= (byte & 0x7F if shift < 14 else byte) << shift
            shift += 7
            if not byte & 0x80:
                break
        return length

    def skip_hextile(self, width: int, height: int) -> None:
        """Walk a Hextile rectangle's tiles without decoding them."""
        for ty in range(0, height, 16):
            for tx in range(0, width, 16):
                tile_width, tile_height = min(16, width - tx), min(16, height - ty)
                mask = self.u8()
                if mask & 1:
                    self.read(tile_width * tile_height * 4)
                    continue
                self.read(4 * (bool(mask & 2) + bool(mask & 4)))
                if mask & 8:
                    self.read(self.u8() * (6 if mask & 16 else 2))
