"""Pixels to bytes: each viewer's best encoding, with its compression state (RFC 6143 §7.7).

A viewer lists the encodings it can decode, most preferred first.  `ViewerEncoder` holds one
viewer's pixel format (a `pixels.PixelConverter`), the encoding we use for it (the first one
in the viewer's list that we implement, as TigerVNC's server chooses; Raw is always allowed),
the compression and JPEG quality levels it asked for with pseudo-encodings, its encoders and
a count of the rectangles sent per encoding (the log shows it when the viewer leaves, and
tests read it to prove which encoding was used).

Encoding happens in two steps.  `plan(x, y, image, converter, quality)` is pure: it looks at
the pixels, picks sub-encodings and produces every byte that does not go through zlib, plus
the data that does.  `finish(plan, levels)` runs that data through the viewer's own zlib
streams.  Viewers with the same encoding and pixel format (and, for Tight, JPEG quality) that
ask for the same rectangle of the same generation of a display get the same plan, so the
display's `SharedPlans` computes it once for all of them: fifty viewers of a flood cost a few
analyses and fifty deflates, not fifty analyses.  The first viewer to ask computes; the
others wait for its result (single flight).  Raw and Hextile have no zlib state, so their plan
is already the finished rectangle.

An encoder object is made the first time a viewer's preference picks its encoding and kept
for the whole connection, across SetPixelFormat and SetEncodings, because the zlib streams of
Zlib, ZRLE and Tight must match the viewer's inflaters byte for byte until the viewer leaves
(docs/protocol.md, "Compression state").  Adding an encoding means adding a class and a
line in `ENCODERS`.

* Raw (0, §7.7.1): the pixels in the viewer's format.
* Hextile (5, §7.7.4): 16x16 tiles, each solid, background plus subrectangles of one
  foreground colour (console text), coloured subrectangles, or raw, whichever is shortest.
  Background and foreground carry over from tile to tile, except after a raw tile (both) and
  after a tile with coloured subrectangles (the foreground): decoders disagree about those
  (docs/protocol.md), so we send them again.  A tile with more than `HEXTILE_RUN_LIMIT` runs
  of one colour (a photograph, dithering) goes raw: subrectangles would seldom be smaller,
  and finding them all costs a hundred times the raw copy.  Runs are counted in C for tiles
  of many colours; for two-colour tiles (text) the search for subrectangles gives up there.
* Zlib (6, rfbproto §zlib): Raw pixels through one deflate stream per viewer.
* Tight (7): in tight.py.
* ZRLE (16, §7.7.6): 64x64 tiles through one deflate stream per viewer; each tile is solid, a
  packed palette, palette runs, plain runs or raw CPIXELs, whichever is shortest.

Hextile, ZRLE and Tight first reduce the image to the colours the viewer can show (`reduce`),
so that colour counts and runs are those of the viewer's pixels.  Hextile and ZRLE find the
blank tiles of a screen a band at a time (`pixels.tiles_with_fill`).  The per-pixel work is
Pillow's, zlib's and bytes methods'; Python loops over tiles, rows, palettes and runs only (see
pixels.py).

Trade-offs: Python's zlib cannot change the level of a live stream, so Zlib and ZRLE take the
viewer's compression level when their stream starts (Tight can reset its streams and follows
every change); a viewer that sends no level gets zlib's default, 6.  Choices between
sub-encodings compare exact sizes before zlib, which is cheap and what TigerVNC estimates
too; we never compress twice to pick the smaller.
"""

from __future__ import annotations

import copy
import re
import struct
import threading
import zlib
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass

from PIL import Image

import pixels
import rfb
import tight
from pixels import PixelConverter
from rfb import Encoding, PixelFormat

JPEG_QUALITY_LEVELS = range(-32, -22)
COMPRESSION_LEVELS = range(-256, -246)
DEFAULT_COMPRESSION = 6
MAX_COORDINATE = 0xFFFF
HEXTILE_RUN_LIMIT = 128  # runs in a 16x16 tile past which it goes raw


@dataclass(frozen=True)
class Levels:
    """The viewer's compression level (0-9) and JPEG quality level (0-9, None: no JPEG)."""

    compression: int = DEFAULT_COMPRESSION
    quality: int | None = None

    @classmethod
    def from_encodings(cls, encodings: tuple[int, ...]) -> Levels:
        """The first compression and quality pseudo-encodings in a SetEncodings list."""
        compression = next((e - COMPRESSION_LEVELS[0] for e in encodings
                            if e in COMPRESSION_LEVELS), DEFAULT_COMPRESSION)
        quality = next((e - JPEG_QUALITY_LEVELS[0] for e in encodings
                        if e in JPEG_QUALITY_LEVELS), None)
        return cls(compression, quality)


class Stateless:
    """An encoder without zlib state: its plan is the finished rectangles."""

    def finish(self, plan, levels) -> list[bytes]:
        return plan


class OneStream:
    """An encoder with one deflate stream for the connection, whose plan is (header, data):
    the rectangle is the header, a U32 length and the data through the stream."""

    def __init__(self) -> None:
        self._stream = None

    def finish(self, plan, levels) -> list[bytes]:
        header, data = plan
        if self._stream is None:
            self._stream = zlib.compressobj(levels.compression)
        data = self._stream.compress(data) + self._stream.flush(zlib.Z_SYNC_FLUSH)
        return [header + struct.pack(">I", len(data)) + data]


class RawEncoder(Stateless):
    """Raw, RFC 6143 §7.7.1: every pixel in the viewer's format."""

    @staticmethod
    def plan(x, y, image, converter, quality) -> list[bytes]:
        width, height = image.size
        return [rfb.rect_header(x, y, width, height, Encoding.RAW) + converter.convert(image)]


class ZlibEncoder(OneStream):
    """Zlib, rfbproto §zlib: Raw pixels through one deflate stream per viewer."""

    @staticmethod
    def plan(x, y, image, converter, quality) -> tuple[bytes, bytes]:
        width, height = image.size
        return rfb.rect_header(x, y, width, height, Encoding.ZLIB), converter.convert(image)


class HextileEncoder(Stateless):
    """Hextile, RFC 6143 §7.7.4: 16x16 tiles of background, foreground and subrectangles."""

    RAW, BACKGROUND, FOREGROUND, ANY_SUBRECTS, SUBRECTS_COLOURED = 1, 2, 4, 8, 16

    @classmethod
    def plan(cls, x, y, image, converter, quality) -> list[bytes]:
        image = converter.reduce(image)
        width, height = image.size
        parts = [rfb.rect_header(x, y, width, height, Encoding.HEXTILE)]
        background = foreground = None
        for box, fill in pixels.tiles_with_fill(image, 16, 16):
            if fill is None:
                data, background, foreground = cls._tile(
                    image.crop(box), converter, background, foreground)
            else:
                data, background = cls._solid(fill, converter, background)
            parts.append(data)
        return [b"".join(parts)]

    @classmethod
    def _solid(cls, colour, converter, background):
        """A one-colour tile's bytes, and the background the next tile inherits."""
        if colour == background:
            return b"\0", background
        return bytes([cls.BACKGROUND]) + converter.palette([colour]), colour

    @classmethod
    def _tile(cls, tile, converter, background, foreground):
        """One tile's bytes, and the background and foreground the next tile inherits."""
        colours = pixels.palette(tile, 256)
        if len(colours) == 1:
            return *cls._solid(colours[0], converter, background), foreground
        busy = len(colours) > 2 and pixels.run_count(tile.tobytes(), 3) > HEXTILE_RUN_LIMIT
        subrects = None if busy else _subrects(tile, colours)
        if subrects is None:
            return bytes([cls.RAW]) + converter.convert(tile), None, None
        size = converter.bytes_per_pixel
        palette = converter.palette(colours)
        mask, body = cls.ANY_SUBRECTS, []
        if colours[0] != background:
            mask |= cls.BACKGROUND
            body.append(palette[:size])
        if len(colours) == 2:
            if colours[1] != foreground:
                mask |= cls.FOREGROUND
                body.append(palette[size : 2 * size])
            body.append(bytes([len(subrects)]))
            body += [_hextile_subrect(*rect[:4]) for rect in subrects]
            next_foreground = colours[1]
        else:
            mask |= cls.SUBRECTS_COLOURED
            body.append(bytes([len(subrects)]))
            body += [palette[index * size : (index + 1) * size] + _hextile_subrect(x, y, w, h)
                     for x, y, w, h, index in subrects]
            next_foreground = None
        data = b"".join(body)
        if len(subrects) > 255 or len(data) >= tile.width * tile.height * size:
            return bytes([cls.RAW]) + converter.convert(tile), None, None
        return bytes([mask]) + data, colours[0], next_foreground


def _hextile_subrect(x: int, y: int, width: int, height: int) -> bytes:
    return bytes([x << 4 | y, (width - 1) << 4 | (height - 1)])


def _subrects(tile: Image.Image, colours) -> list[list[int]] | None:
    """Rectangles [x, y, w, h, colour index] covering every pixel not of colours[0], or None
    once the tile has shown more than HEXTILE_RUN_LIMIT runs: a busy tile goes raw.

    Runs of one colour in the tile's RGB bytes, cut at the end of each row, become
    rectangles; a run exactly below one of the same colour and span on the row above makes
    that rectangle one row taller.
    """
    index = {bytes(colour): number for number, colour in enumerate(colours)}
    background = bytes(colours[0])
    width = tile.width
    rects, above, here = [], {}, {}
    x = y = 0
    for number, (value, count) in enumerate(pixels.runs(tile.tobytes(), 3)):
        if number == HEXTILE_RUN_LIMIT:
            return None
        while count:
            span = min(count, width - x)
            if value != background:
                key = (x, span, value)
                rect = above.get(key)
                if rect is None:
                    rect = [x, y, span, 0, index[value]]
                    rects.append(rect)
                rect[3] += 1
                here[key] = rect
            x, count = x + span, count - span
            if x == width:
                x, y, above, here = 0, y + 1, here, {}
    return rects


class ZrleEncoder(OneStream):
    """ZRLE, RFC 6143 §7.7.6: 64x64 tiles, run-length and palette coded, through one zlib stream."""

    RAW, SOLID, PLAIN_RLE = 0, 1, 128

    @classmethod
    def plan(cls, x, y, image, converter, quality) -> tuple[bytes, bytes]:
        image = converter.reduce(image)
        width, height = image.size
        tiles = b"".join(
            cls._tile(image.crop(box), converter) if fill is None
            else bytes([cls.SOLID]) + converter.palette_compact([fill])
            for box, fill in pixels.tiles_with_fill(image, 64, 64))
        return rfb.rect_header(x, y, width, height, Encoding.ZRLE), tiles

    @classmethod
    def _tile(cls, tile, converter) -> bytes:
        colours = pixels.palette(tile, 127)
        if colours is None:
            return cls._unpaletted(tile, converter)
        palette = converter.palette_compact(colours)
        if len(colours) == 1:
            return bytes([cls.SOLID]) + palette
        data = pixels.indices(tile, colours)
        raw_size = 1 + tile.width * tile.height * converter.compact_size
        options = []
        if len(colours) <= 16:
            bits = 1 if len(colours) == 2 else 2 if len(colours) <= 4 else 4
            options.append(bytes([len(colours)]) + palette
                           + pixels.pack(data, tile.width, tile.height, bits))
        # Palette RLE costs at least a byte a run: list the runs only when that could win.
        if pixels.run_count(data, 1) < min(map(len, options), default=raw_size):
            # Subencoding 128 + palette size; a run of one stays the bare index.
            options.append(bytes([cls.PLAIN_RLE + len(colours)]) + palette
                           + LONGER_RUNS.sub(_palette_run, data))
        best = min(options, key=len, default=None)
        if best is None or len(best) > raw_size:
            return bytes([cls.RAW]) + converter.convert_compact(tile)
        return best

    @classmethod
    def _unpaletted(cls, tile, converter) -> bytes:
        """Plain RLE or raw CPIXELs, whichever is shorter, for a tile of many colours."""
        raw = converter.convert_compact(tile)
        if 2 * pixels.run_count(raw, converter.compact_size) > tile.width * tile.height:
            return bytes([cls.RAW]) + raw
        rle = bytes([cls.PLAIN_RLE]) + b"".join(
            value + _run_length(count) for value, count in pixels.runs(raw, converter.compact_size))
        return min(bytes([cls.RAW]) + raw, rle, key=len)


LONGER_RUNS = re.compile(rb"(.)\1+", re.DOTALL)


def _palette_run(match: re.Match) -> bytes:
    """A run of two or more of one palette index: the index with its top bit set, the length."""
    return bytes([match[1][0] | 128]) + _run_length(len(match[0]))


def _run_length(count: int) -> bytes:
    """A ZRLE run length: count - 1 in bytes of 255 and a final byte below 255."""
    return b"\xff" * ((count - 1) // 255) + bytes([(count - 1) % 255])


# Encoders we implement.  The viewer's order of preference decides among them.
ENCODERS = {
    Encoding.RAW: RawEncoder,
    Encoding.HEXTILE: HextileEncoder,
    Encoding.ZLIB: ZlibEncoder,
    Encoding.TIGHT: tight.TightEncoder,
    Encoding.ZRLE: ZrleEncoder,
}


class ViewerEncoder:
    """One viewer's pixel format, accepted encodings, levels and encoder state.

    An encoder is created the first time the viewer's preference picks it and then kept for
    the whole connection: a viewer's inflater state must survive SetPixelFormat and
    SetEncodings, so our deflater state must too.
    """

    def __init__(self) -> None:
        self.encodings: frozenset[int] = frozenset()
        self.sent: Counter[str] = Counter()
        self.converter = PixelConverter(rfb.DEFAULT_PIXEL_FORMAT)
        self.encoding = Encoding.RAW
        self.levels = Levels()
        self._encoders = {}

    @property
    def pixel_format(self) -> PixelFormat:
        return self.converter.pixel_format

    def set_pixel_format(self, pixel_format: PixelFormat) -> None:
        pixel_format.check()
        self.converter = PixelConverter(pixel_format)

    def set_encodings(self, encodings: tuple[int, ...]) -> None:
        """Remember what the viewer accepts; use its first listed encoding that we implement."""
        self.encodings = frozenset(encodings)
        self.encoding = next((Encoding(e) for e in encodings if e in ENCODERS), Encoding.RAW)
        self.levels = Levels.from_encodings(encodings)

    def supports(self, encoding: int) -> bool:
        return encoding in self.encodings

    def pinned(self) -> ViewerEncoder:
        """This encoder as it is now, for the rest of one update: SetPixelFormat and
        SetEncodings that come meanwhile apply from the next update, while the zlib streams
        and the counts stay the connection's."""
        return copy.copy(self)

    @property
    def one_rect_per_image(self) -> bool:
        """Whether `encode` makes exactly one rectangle of an image (Tight makes as many as
        the image's content needs)."""
        return self.encoding != Encoding.TIGHT

    def encode(self, x: int, y: int, image: Image.Image, shared=None) -> list[bytes]:
        """The rectangles that paint `image` at (x, y) in the viewer's chosen encoding.

        `shared` is (SharedPlans, generation) when the image is that generation of a display
        that other viewers see too; None plans for this viewer alone.
        """
        width, height = image.size
        if image.mode != "RGB" or width < 1 or height < 1:
            raise ValueError(f"cannot encode a {width}x{height} {image.mode} image")
        if x < 0 or y < 0 or x + width > MAX_COORDINATE or y + height > MAX_COORDINATE:
            raise ValueError(f"a {width}x{height} rectangle at ({x}, {y}) is off the 16-bit grid")
        encoder = self._encoders.get(self.encoding)
        if encoder is None:
            encoder = self._encoders[self.encoding] = ENCODERS[self.encoding]()
        # Of the levels, only Tight's JPEG quality changes a plan.
        quality = self.levels.quality if self.encoding == Encoding.TIGHT else None

        def compute():
            return encoder.plan(x, y, image, self.converter, quality)

        if shared is None:
            plan = compute()
        else:
            plans, generation = shared
            key = (x, y, width, height, self.encoding, self.pixel_format, quality)
            plan = plans.get(generation, key, compute)
        rects = encoder.finish(plan, self.levels)
        self.sent[self.encoding.name.lower()] += len(rects)
        return rects

    def copy_rect(self, x: int, y: int, width: int, height: int, src_x: int, src_y: int) -> bytes:
        self.sent["copy_rect"] += 1
        return rfb.copy_rect(x, y, width, height, src_x, src_y)


class SharedPlans:
    """Plans for one display's newest generation, each computed once for every viewer.

    A viewer asking for a plan that another viewer is computing waits for that one's result.
    Plans of an older generation are dropped when a newer one is asked for; a viewer still on
    an older generation computes its own.  Viewer threads call `get` concurrently.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = -1
        self._plans: dict[tuple, Future] = {}

    def get(self, generation: int, key: tuple, compute):
        """compute()'s plan for key at generation, computed once however many viewers ask."""
        future, owner = self._claim(generation, key)
        if future is None:
            return compute()
        if owner:
            try:
                future.set_result(compute())
            except BaseException as error:
                future.set_exception(error)
        return future.result()

    def _claim(self, generation: int, key: tuple):
        """(future, whether the caller computes it), or (None, True) for an older generation."""
        with self._lock:
            if generation > self._generation:
                self._generation, self._plans = generation, {}
            if generation < self._generation:
                return None, True
            if key in self._plans:
                return self._plans[key], False
            future = self._plans[key] = Future()
            return future, True
