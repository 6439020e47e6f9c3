"""Tight encoding (7): fills, palettes, zlib and JPEG (rfbproto §Tight).

A Tight rectangle starts with a compression-control byte: its low four bits tell the viewer to
reset zlib streams 0-3 before this rectangle, its high four bits pick the method.  We use:

* fill (8): a rectangle of one colour is one TPIXEL;
* palette filter, 2 colours: 1 bit per pixel, rows padded to a byte, zlib stream 1;
* palette filter, 3-256 colours: 1 byte per pixel, zlib stream 2;
* copy filter (basic compression with no filter byte): every pixel, zlib stream 0;
* JPEG (9): only for photographic content, and only for a viewer that sent a JPEG quality
  level and takes 16 or 32 bits per pixel.  Console text is never photographic, so it stays
  lossless.

A TPIXEL is 3 bytes R, G, B for 32-bit depth-24 formats with 8-bit channels, whatever their
shifts and byte order; otherwise it is the viewer's PIXEL.  Filtered data under 12 bytes goes
as it is; longer data goes through the stream as a compact length and zlib output flushed with
Z_SYNC_FLUSH, so the viewer's inflater has all of it and the stream continues next time.

Decisions and trade-offs.  Rectangles wider than 2048 pixels are split (TigerVNC's decoder
refuses them), and so are rectangles over 65536 pixels, as TigerVNC's encoder does, which
keeps every compact length under its 4 MiB limit.  Each piece is then cut into column groups
(`_column_groups`): a line of `ls --color` has white text and a coloured name, three colours,
which as one rectangle costs a byte a pixel, but as two rectangles of two colours costs a bit
a pixel; for a screen of coloured text that halves the bytes, for 20 bytes of header a group.

A palette pays when colours are few; finding each pixel's index (pixels.indices, the one
per-pixel step here that is not a plain copy) costs several times what zlib saves once the
colours are as dense as a photograph's.  So a piece takes a palette when it has at most
`FEW_COLOURS` colours, or at most one per `PALETTE_PIXELS_PER_COLOUR` pixels (256 at most);
denser pieces go as full colour, and are not cut into column groups at all.  "Photographic",
for JPEG, is stricter: more than 256 colours and more than one per `PHOTO_PIXELS_PER_COLOUR`
pixels; a screen of coloured or anti-aliased text has at most a few thousand colours, a
photograph tens of thousands, and text stays lossless.  The gradient filter is not
implemented: console content is palette or photo, and the copy filter is the fallback.

Each stream has its own zlib level, from the viewer's compression level through
`ZLIB_LEVELS`: the table TigerVNC uses, from VirtualGL's measurements of real sessions, which
compresses palette data harder than full colour (small and cheap to squeeze, where full colour
is big and costly).  When the viewer's level changes we start new streams and set their reset
bits in the next rectangle.

`TightEncoder.plan` makes every decision above and is shared by viewers (encoders.py);
`finish` adds the control bytes and runs the data through one viewer's streams.
"""

from __future__ import annotations

import io
import zlib

import pixels
import rfb
from rfb import Encoding

MAX_WIDTH = 2048
MAX_AREA = 65536
SLICE_WIDTH = 16
FEW_COLOURS = 16
PALETTE_PIXELS_PER_COLOUR = 256
PHOTO_PIXELS_PER_COLOUR = 16
RAW_DATA_LIMIT = 12
FILL, JPEG, FILTER_FOLLOWS = 8, 9, 4
PALETTE_FILTER = 1
FULL_COLOUR_STREAM, MONO_STREAM, INDEXED_STREAM = 0, 1, 2

# zlib level of each stream (full colour, mono, indexed) for compression levels 0-9.
ZLIB_LEVELS = [(0, 0, 0), (1, 1, 1), (2, 3, 3), (2, 5, 5), (3, 7, 6),
               (4, 8, 7), (5, 8, 7), (6, 9, 8), (7, 9, 9), (9, 9, 9)]

# JPEG quality and Pillow subsampling (0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0) for quality levels
# 0-9, as TigerVNC's TightJPEGEncoder maps them.
JPEG_SETTINGS = [(15, 2), (29, 2), (41, 2), (42, 1), (62, 1), (77, 1),
                 (79, 0), (86, 0), (92, 0), (100, 0)]


def compact_length(length: int) -> bytes:
    """Tight's 1-3 byte length: 7 bits per byte, least significant first, 0x80 = more."""
    if not 0 <= length <= 0x3FFFFF:
        raise ValueError(f"length {length} does not fit Tight's compact length")
    if length < 0x80:
        return bytes([length])
    if length < 0x4000:
        return bytes([length & 0x7F | 0x80, length >> 7])
    return bytes([length & 0x7F | 0x80, (length >> 7) & 0x7F | 0x80, length >> 14])


def pieces(width: int, height: int):
    """Boxes covering the rectangle, none wider than MAX_WIDTH or larger than MAX_AREA."""
    piece_width = min(width, MAX_WIDTH)
    piece_height = max(1, MAX_AREA // piece_width)
    return pixels.tiles(width, height, piece_width, piece_height)


class TightEncoder:
    """Tight, rfbproto §Tight: one viewer's four zlib streams and the rectangles that use them.

    `plan` does the analysis and is pure, so viewers with the same pixel format and JPEG
    quality share it (encoders.SharedPlans); `finish` runs the plan through this viewer's
    streams.  A planned rectangle is (header, method, tail, stream, data): the rectangle
    header, the compression method, the bytes that follow the control byte, and the data for
    zlib stream `stream` (None: no data).
    """

    def __init__(self) -> None:
        self._streams = [None] * 4
        self._level = None
        self._resets = 0

    @staticmethod
    def plan(x, y, image, converter, quality) -> list[tuple]:
        if converter.bytes_per_pixel == 1:
            quality = None
        image = converter.reduce(image)
        planned = []
        for left, top, right, bottom in pieces(*image.size):
            piece = image.crop((left, top, right, bottom))
            dense = _dense(piece)
            plan_part = _plan_dense if dense else _plan_piece
            for start, end in [(0, piece.width)] if dense else _column_groups(piece):
                part = piece.crop((start, 0, end, piece.height))
                header = rfb.rect_header(
                    x + left + start, y + top, end - start, bottom - top, Encoding.TIGHT)
                planned.append((header, *plan_part(part, converter, quality)))
        return planned

    def finish(self, planned, levels) -> list[bytes]:
        self._set_level(levels.compression)
        return [header + self._control(method) + tail + self._compress(stream, data)
                for header, method, tail, stream, data in planned]

    def _set_level(self, level: int) -> None:
        """Follow the viewer's compression level: new streams, and reset bits to announce them."""
        if level != self._level:
            for number, stream in enumerate(self._streams):
                if stream is not None:
                    self._resets |= 1 << number
            self._streams = [None] * 4
            self._level = level

    def _control(self, method: int) -> bytes:
        """The compression-control byte, carrying any pending stream resets."""
        control = method << 4 | self._resets
        self._resets = 0
        return bytes([control])

    def _compress(self, stream_id: int | None, data: bytes) -> bytes:
        """Data under 12 bytes as it is, longer data as a compact length and zlib output."""
        if stream_id is None or len(data) < RAW_DATA_LIMIT:
            return data
        stream = self._streams[stream_id]
        if stream is None:
            stream = zlib.compressobj(ZLIB_LEVELS[self._level][stream_id])
            self._streams[stream_id] = stream
        compressed = stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)
        return compact_length(len(compressed)) + compressed


def _plan_piece(piece, converter, quality) -> tuple:
    """(method, tail, stream, data) for one rectangle: fill, JPEG, palette or full colour."""
    colours = pixels.palette(piece, _palette_limit(piece))
    if colours is None:
        return _plan_dense(piece, converter, quality)
    palette = _tpalette(colours, converter)
    if len(colours) == 1:
        return FILL, palette, None, b""
    data = pixels.indices(piece, colours)
    # A palette filter: the filter-id byte follows the control byte.
    tail = bytes([PALETTE_FILTER, len(colours) - 1]) + palette
    if len(colours) == 2:
        return MONO_STREAM | FILTER_FOLLOWS, tail, MONO_STREAM, pixels.pack(
            data, *piece.size, 1)
    return INDEXED_STREAM | FILTER_FOLLOWS, tail, INDEXED_STREAM, data


def _plan_dense(piece, converter, quality) -> tuple:
    """(method, tail, stream, data) for a piece with too many colours for a palette."""
    if quality is not None and _photographic(piece):
        return JPEG, _jpeg(piece, quality), None, b""
    return FULL_COLOUR_STREAM, b"", FULL_COLOUR_STREAM, _tpixels(piece, converter)


def _jpeg(piece, quality: int) -> bytes:
    """The piece as a JPEG file, after its compact length."""
    jpeg_quality, subsampling = JPEG_SETTINGS[quality]
    buffer = io.BytesIO()
    piece.save(buffer, "JPEG", quality=jpeg_quality, subsampling=subsampling)
    data = buffer.getvalue()
    return compact_length(len(data)) + data


def _column_groups(piece):
    """Column ranges of the piece to send as one rectangle each, so that text gets 1 bit a pixel.

    Slices SLICE_WIDTH columns wide join the group on their left while they are alike: one or
    two colours with a group of at most two colours in all, a few colours with a group of a
    few (at most 256 in all), many colours with many.
    """
    groups = []
    for left, _, right, _ in pixels.tiles(piece.width, piece.height, SLICE_WIDTH, piece.height):
        counts = piece.crop((left, 0, right, piece.height)).getcolors(256)
        colours = None if counts is None else {colour for _, colour in counts}
        if groups and _alike(groups[-1][2], colours):
            groups[-1][1:] = [right, colours and groups[-1][2] | colours]
        else:
            groups.append([left, right, colours])
    return [(left, right) for left, right, _ in groups]


def _alike(group, colours) -> bool:
    """May a slice of these colours join a group of those (None: more than 256)?"""
    if group is None or colours is None:
        return group is None and colours is None
    if len(group) <= 2:
        return len(group | colours) <= 2
    return len(colours) > 2 and len(group | colours) <= 256


def _palette_limit(image) -> int:
    """The most colours for which the image is worth a palette."""
    return min(256, max(FEW_COLOURS, image.width * image.height // PALETTE_PIXELS_PER_COLOUR))


def _dense(image) -> bool:
    """Too many colours for a palette: full colour or JPEG, whatever its columns hold."""
    return image.getcolors(_palette_limit(image)) is None


def _photographic(image) -> bool:
    """More than 256 colours and one per PHOTO_PIXELS_PER_COLOUR pixels: a photo, not text."""
    area = image.width * image.height
    return image.getcolors(max(256, area // PHOTO_PIXELS_PER_COLOUR)) is None


def _tpalette(colours, converter) -> bytes:
    """The colours as TPIXELs."""
    if converter.is_888:
        return b"".join(map(bytes, colours))
    return converter.palette(colours)


def _tpixels(image, converter) -> bytes:
    """The image's pixels as TPIXELs: R, G, B for 888 formats, otherwise the viewer's PIXELs."""
    return image.tobytes() if converter.is_888 else converter.convert(image)
