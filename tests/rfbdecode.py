"""A viewer's side of RFB rectangles, for tests only: decode what the encoders send.

Written from the protocol description (RFC 6143 §7.7, rfbproto §Tight and §zlib,
docs/protocol.md), not from encoders.py, so that a test compares two independent readings of
the spec.
Everything here is plain and slow on purpose: one Python step per pixel, strict checks on
every field (a decoder that forgives a broken stream proves nothing), and statistics of the
sub-encodings seen, so tests can show which paths they exercised.

`Decoder` keeps a framebuffer of pixel values (ints in the viewer's format) and the zlib
streams of one connection.  `read_rect(read)` decodes one rectangle from `read(n)`, which
must return exactly n bytes; `decode(data)` decodes a run of rectangles held in memory.
`Client` is a minimal RFB 3.8 viewer over a socket that uses the same decoder and counts the
bytes it receives, for end-to-end tests and measurements.
"""

from __future__ import annotations

import io
import socket
import struct
import zlib
from collections import Counter, namedtuple

from PIL import Image

import peers

RAW, COPY_RECT, HEXTILE, ZLIB, TIGHT, ZRLE = 0, 1, 5, 6, 7, 16
NAMES = {RAW: "raw", COPY_RECT: "copy_rect", HEXTILE: "hextile", ZLIB: "zlib",
         TIGHT: "tight", ZRLE: "zrle"}


class DecodeError(Exception):
    """The server sent something a strict viewer must refuse."""


def check(condition, message):
    if not condition:
        raise DecodeError(message)


# --- Pixel values ----------------------------------------------------------------------------


def channel_fields(pf):
    return ((pf.red_max, pf.red_shift), (pf.green_max, pf.green_shift),
            (pf.blue_max, pf.blue_shift))


def rgb_to_pixel(rgb, pf):
    """The pixel value of an 8-bit RGB colour, each channel scaled with rounding."""
    value = 0
    for level, (maximum, shift) in zip(rgb, channel_fields(pf), strict=True):
        value |= ((level * maximum + 127) // 255) << shift
    return value


def pixel_to_rgb(value, pf):
    """An approximate 8-bit RGB colour for a pixel value."""
    return tuple((value >> shift & maximum) * 255 // maximum
                 for maximum, shift in channel_fields(pf))


def expected_pixels(image, pf):
    """What a viewer's framebuffer must hold after a lossless update of `image`."""
    data = image.convert("RGB").tobytes()
    return [rgb_to_pixel(data[i : i + 3], pf) for i in range(0, len(data), 3)]


def is_888(pf):
    return (pf.bits_per_pixel == 32 and pf.depth == 24
            and all(m == 255 and s % 8 == 0 for m, s in channel_fields(pf)))


def cpixel_layout(pf):
    """'first3' or 'last3' when a ZRLE CPIXEL is 3 of the pixel's wire bytes, else None."""
    if pf.bits_per_pixel != 32 or pf.depth > 24:
        return None
    mask = 0
    for maximum, shift in channel_fields(pf):
        mask |= maximum << shift
    low, high = mask < 1 << 24, mask & 0xFF == 0
    if (low and not pf.big_endian) or (high and pf.big_endian):
        return "first3"
    if low or high:
        return "last3"
    return None


# --- Decoding --------------------------------------------------------------------------------


class BytesReader:
    """read(n) over bytes in memory; running out is a decode error."""

    def __init__(self, data):
        self.data, self.position = data, 0

    def __call__(self, size):
        check(self.position + size <= len(self.data),
              f"needed {size} bytes at {self.position}, only {len(self.data)} there")
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk

    @property
    def left(self):
        return len(self.data) - self.position


def u8(read):
    return read(1)[0]


def u16(read):
    return struct.unpack(">H", read(2))[0]


def u32(read):
    return struct.unpack(">I", read(4))[0]


def inflate(stream, data, size):
    """Exactly `size` bytes out of a zlib stream fed with `data`, refusing any excess."""
    out = stream.decompress(data, size)
    check(len(out) == size and not stream.unconsumed_tail,
          f"inflated {len(out)} bytes (tail {len(stream.unconsumed_tail)}), expected {size}")
    return out


class Decoder:
    """One connection's framebuffer (pixel values) and decoder state."""

    def __init__(self, width, height, pf, jpeg_allowed=False):
        self.width, self.height, self.pf = width, height, pf
        self.size = pf.bits_per_pixel // 8
        self.framebuffer = [0] * (width * height)
        self.jpeg_allowed = jpeg_allowed
        self.zlib_stream = zlib.decompressobj()
        self.zrle_stream = zlib.decompressobj()
        self.tight_streams = [zlib.decompressobj() for _ in range(4)]
        self.seen = Counter()

    def decode(self, data):
        """Decode a run of whole rectangles; return how many there were."""
        read, count = BytesReader(data), 0
        while read.left:
            self.read_rect(read)
            count += 1
        return count

    def image(self):
        """The framebuffer as an RGB image (approximate colours)."""
        image = Image.new("RGB", (self.width, self.height))
        image.putdata([pixel_to_rgb(value, self.pf) for value in self.framebuffer])
        return image

    def crop(self, x, y, width, height):
        """The pixel values of a rectangle of the framebuffer, row by row."""
        return [self.framebuffer[row * self.width + col]
                for row in range(y, y + height) for col in range(x, x + width)]

    # Pixels on the wire.

    def pixel_from(self, data):
        return int.from_bytes(data, "big" if self.pf.big_endian else "little")

    def read_pixel(self, read):
        return self.pixel_from(read(self.size))

    def read_cpixel(self, read):
        layout = cpixel_layout(self.pf)
        if layout is None:
            return self.read_pixel(read)
        data = read(3)
        return self.pixel_from(data + b"\0" if layout == "first3" else b"\0" + data)

    def read_tpixel(self, read):
        if is_888(self.pf):
            return rgb_to_pixel(read(3), self.pf)
        return self.read_pixel(read)

    def put(self, x, y, width, height, values):
        check(len(values) == width * height, "wrong number of pixels")
        for row in range(height):
            start = (y + row) * self.width + x
            self.framebuffer[start : start + width] = values[row * width : (row + 1) * width]

    def fill(self, x, y, width, height, value):
        self.put(x, y, width, height, [value] * (width * height))

    # Rectangles.

    def read_rect(self, read):
        x, y, width, height, encoding = struct.unpack(">HHHHi", read(12))
        check(x + width <= self.width and y + height <= self.height,
              f"rect {width}x{height} at ({x},{y}) outside {self.width}x{self.height}")
        decoders = {RAW: self.raw, COPY_RECT: self.copy_rect, HEXTILE: self.hextile,
                    ZLIB: self.zlib, TIGHT: self.tight, ZRLE: self.zrle}
        check(encoding in decoders, f"unknown encoding {encoding}")
        self.seen[NAMES[encoding]] += 1
        decoders[encoding](read, x, y, width, height)

    def raw(self, read, x, y, width, height):
        data = read(width * height * self.size)
        self.put(x, y, width, height, self.pixels_of(data))

    def pixels_of(self, data):
        size = self.size
        return [self.pixel_from(data[i : i + size]) for i in range(0, len(data), size)]

    def copy_rect(self, read, x, y, width, height):
        src_x, src_y = u16(read), u16(read)
        check(src_x + width <= self.width and src_y + height <= self.height, "copy source outside")
        self.put(x, y, width, height, self.crop(src_x, src_y, width, height))

    def zlib(self, read, x, y, width, height):
        data = read(u32(read))
        raw = inflate(self.zlib_stream, data, width * height * self.size)
        self.put(x, y, width, height, self.pixels_of(raw))

    def hextile(self, read, x, y, width, height):
        background = foreground = None
        for ty in range(y, y + height, 16):
            for tx in range(x, x + width, 16):
                tw, th = min(16, x + width - tx), min(16, y + height - ty)
                mask = u8(read)
                check(mask < 32, f"hextile mask {mask}")
                if mask & 1:
                    self.seen["hextile raw"] += 1
                    self.put(tx, ty, tw, th, self.pixels_of(read(tw * th * self.size)))
                    background = foreground = None
                    continue
                if mask & 2:
                    background = self.read_pixel(read)
                check(background is not None, "hextile tile without a known background")
                if mask & 4:
                    check(not mask & 16, "foreground and coloured subrects together")
                    foreground = self.read_pixel(read)
                tile = [background] * (tw * th)
                count = u8(read) if mask & 8 else 0
                check(mask & 8 or count == 0, "subrects without the AnySubrects bit")
                if mask & 8 and not mask & 16:
                    check(foreground is not None, "hextile subrects without a known foreground")
                kind = "coloured" if mask & 16 else "mono" if count else "solid"
                self.seen["hextile " + kind] += 1
                for _ in range(count):
                    colour = self.read_pixel(read) if mask & 16 else foreground
                    xy, wh = u8(read), u8(read)
                    sx, sy, sw, sh = xy >> 4, xy & 15, (wh >> 4) + 1, (wh & 15) + 1
                    check(sx + sw <= tw and sy + sh <= th, "hextile subrect outside its tile")
                    for row in range(sy, sy + sh):
                        tile[row * tw + sx : row * tw + sx + sw] = [colour] * sw
                if mask & 16:
                    foreground = None
                self.put(tx, ty, tw, th, tile)

    def zrle(self, read, x, y, width, height):
        data = read(u32(read))
        out = self.zrle_stream.decompress(data)
        check(not self.zrle_stream.unconsumed_tail, "zrle: unconsumed input")
        tiles = BytesReader(out)
        for ty in range(y, y + height, 64):
            for tx in range(x, x + width, 64):
                tw, th = min(64, x + width - tx), min(64, y + height - ty)
                self.put(tx, ty, tw, th, self.zrle_tile(tiles, tw, th))
        check(tiles.left == 0, f"zrle: {tiles.left} bytes after the last tile")

    def zrle_tile(self, read, width, height):
        kind, count = u8(read), width * height
        if kind == 0:
            self.seen["zrle raw"] += 1
            return [self.read_cpixel(read) for _ in range(count)]
        if kind == 1:
            self.seen["zrle solid"] += 1
            return [self.read_cpixel(read)] * count
        if 2 <= kind <= 16:
            self.seen["zrle packed"] += 1
            palette = [self.read_cpixel(read) for _ in range(kind)]
            bits = 1 if kind == 2 else 2 if kind <= 4 else 4
            row_bytes = (width * bits + 7) // 8
            values = []
            for _ in range(height):
                row = read(row_bytes)
                for col in range(width):
                    bit = col * bits
                    index = row[bit // 8] >> (8 - bits - bit % 8) & ((1 << bits) - 1)
                    check(index < kind, "zrle packed index outside the palette")
                    values.append(palette[index])
            return values
        check(kind == 128 or kind >= 130, f"zrle subencoding {kind}")
        palette = [self.read_cpixel(read) for _ in range(kind - 128)] if kind > 128 else None
        self.seen["zrle palette rle" if palette else "zrle plain rle"] += 1
        values = []
        while len(values) < count:
            if palette is None:
                value, run = self.read_cpixel(read), self.run_length(read)
            else:
                index = u8(read)
                run = self.run_length(read) if index & 128 else 1
                check(index & 127 < len(palette), "zrle palette index outside the palette")
                value = palette[index & 127]
            check(len(values) + run <= count, "zrle run past the end of its tile")
            values += [value] * run
        return values

    @staticmethod
    def run_length(read):
        run = 1
        while True:
            byte = u8(read)
            run += byte
            if byte != 255:
                return run

    def tight(self, read, x, y, width, height):
        control = u8(read)
        for stream in range(4):
            if control >> stream & 1:
                self.tight_streams[stream] = zlib.decompressobj()
                self.seen["tight reset"] += 1
        method = control >> 4
        if method == 8:
            self.seen["tight fill"] += 1
            self.fill(x, y, width, height, self.read_tpixel(read))
            return
        if method == 9:
            check(self.jpeg_allowed and self.size > 1, "tight JPEG the viewer did not allow")
            self.seen["tight jpeg"] += 1
            data = read(self.compact_length(read))
            with Image.open(io.BytesIO(data)) as jpeg:
                check(jpeg.format == "JPEG" and jpeg.size == (width, height), "bad JPEG")
                rgb = jpeg.convert("RGB")
            self.put(x, y, width, height, expected_pixels(rgb, self.pf))
            return
        check(method < 8, f"tight method {method}")
        check(width <= 2048, "tight basic rectangle wider than 2048")
        tpixel = 3 if is_888(self.pf) else self.size
        palette = None
        if method & 4:
            filter_id = u8(read)
            check(filter_id in (0, 1), f"tight filter {filter_id}")
            if filter_id == 1:
                palette = [self.read_tpixel(read) for _ in range(u8(read) + 1)]
                check(len(palette) >= 2, "tight palette of one colour")
        if palette is None:
            size = width * height * tpixel
        elif len(palette) == 2:
            size = (width + 7) // 8 * height
        else:
            size = width * height
        if size < 12:
            data = read(size)
        else:
            data = inflate(self.tight_streams[method & 3], read(self.compact_length(read)), size)
        if palette is None:
            self.seen["tight copy"] += 1
            self.put(x, y, width, height,
                     [self.read_tpixel(BytesReader(data[i : i + tpixel]))
                      for i in range(0, len(data), tpixel)])
        elif len(palette) == 2:
            self.seen["tight mono"] += 1
            row_bytes = (width + 7) // 8
            self.put(x, y, width, height, [
                palette[data[row * row_bytes + col // 8] >> (7 - col % 8) & 1]
                for row in range(height) for col in range(width)])
        else:
            self.seen["tight indexed"] += 1
            check(max(data) < len(palette), "tight index outside the palette")
            self.put(x, y, width, height, [palette[i] for i in data])

    @staticmethod
    def compact_length(read):
        """1-3 bytes, 7 bits each, least significant first; the third byte carries 8 bits."""
        byte = u8(read)
        length = byte & 0x7F
        if byte & 0x80:
            byte = u8(read)
            length |= (byte & 0x7F) << 7
            if byte & 0x80:
                length |= u8(read) << 14
        return length


# --- A minimal viewer over a socket ----------------------------------------------------------


ServerFormat = namedtuple("ServerFormat", "bits_per_pixel depth big_endian true_colour red_max "
                          "green_max blue_max red_shift green_shift blue_shift")


class Client:
    """An RFB 3.8 viewer with security None that decodes with `Decoder` and counts bytes."""

    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.received = 0
        check(self.read(12).startswith(b"RFB 003."), "not an RFB server")
        self.sock.sendall(b"RFB 003.008\n")
        types = self.read(self.read(1)[0])
        check(1 in types, f"security None not offered: {list(types)}")
        self.sock.sendall(b"\x01")
        check(u32(self.read) == 0, "security failed")
        self.sock.sendall(b"\x01")
        width, height = u16(self.read), u16(self.read)
        self.pf = ServerFormat(*struct.unpack(">BBBBHHHBBB3x", self.read(16)))
        self.name = self.read(u32(self.read))
        self.width, self.height = width, height
        self.decoder = None

    def read(self, size):
        try:
            data = peers.recv_exactly(self.sock, size, "server")
        except ConnectionError as error:
            raise DecodeError(str(error)) from None
        self.received += size
        return data

    def set_pixel_format(self, pf):
        self.sock.sendall(b"\0\0\0\0" + pf.to_bytes())
        self.pf = pf

    def set_encodings(self, encodings):
        self.sock.sendall(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))
        jpeg = any(-32 <= e <= -23 for e in encodings)
        self.decoder = Decoder(self.width, self.height, self.pf, jpeg_allowed=jpeg)

    def request(self, incremental):
        self.sock.sendall(struct.pack(">BBHHHH", 3, incremental, 0, 0, self.width, self.height))

    def key(self, keysym):
        for down in (1, 0):
            self.sock.sendall(struct.pack(">BBxxI", 4, down, keysym))

    def update(self):
        """Read messages until a FramebufferUpdate has been decoded; return its size in bytes."""
        while True:
            start = self.received
            kind = u8(self.read)
            if kind == 2:
                continue
            if kind == 3:
                self.read(3)
                self.read(u32(self.read))
                continue
            check(kind == 0, f"unexpected server message {kind}")
            self.read(1)
            for _ in range(u16(self.read)):
                self.decoder.read_rect(self.read)
            return self.received - start

    def close(self):
        self.sock.close()
