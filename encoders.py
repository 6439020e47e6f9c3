"""Pixels to bytes: each viewer's pixel format and its best encoding (RFC 6143 §7.4, §7.7).

The displays keep their pixels as Pillow RGB images.  A viewer asks for its own pixel format
(8, 16 or 32 bits per pixel, either byte order, any channel layout) and lists the encodings it
can decode.  `ViewerEncoder` holds that per-viewer state, the per-viewer compression state of
the encodings that have one, and a count of the rectangles it sent per encoding (the log
shows it when the viewer leaves, and tests read it to prove which encoding was used).

Pixel format conversion never loops over pixels in Python.  For every byte of the output
pixel we work out, per colour channel, a 256-entry lookup table that scales the 8-bit channel
to the viewer's maximum, shifts it into place and keeps the bits that land in that byte.
Pillow applies the tables (`Image.point`), adds the channel planes of a byte together (the
channels never overlap, so addition is bitwise or) and interleaves the byte planes
(`Image.merge`).  The common 32-bit formats come out as a plain band shuffle.

An encoder is a class with `encode(x, y, image, converter) -> list[bytes]` (the rectangles,
header included), instantiated per viewer, so it can keep state such as zlib streams for as
long as the viewer stays connected.  Adding an encoding means adding a class and a line in `ENCODERS`.
"""

from __future__ import annotations

from collections import Counter

from PIL import Image, ImageChops

import rfb
from rfb import Encoding, PixelFormat


def _byte_lut(maximum: int, shift: int, byte_shift: int) -> list[int] | None:
    """The table mapping an 8-bit channel to its bits in one byte of the pixel, or None."""
    table = [(((v * maximum + 127) // 255) << shift >> byte_shift) & 0xFF for v in range(256)]
    return table if any(table) else None


_IDENTITY = list(range(256))


class PixelConverter:
    """Converts RGB images to a viewer's pixel format with Pillow doing the per-pixel work."""

    _MODES = {1: "L", 2: "LA", 4: "RGBA"}

    def __init__(self, pixel_format: PixelFormat) -> None:
        self.pixel_format = pixel_format
        size = pixel_format.bytes_per_pixel
        self._mode = self._MODES[size]
        self._planes = []
        for index in range(size):
            significance = size - 1 - index if pixel_format.big_endian else index
            plane = []
            for band, (maximum, shift) in enumerate(pixel_format.channels):
                table = _byte_lut(maximum, shift, 8 * significance)
                if table is not None:
                    plane.append((band, None if table == _IDENTITY else table))
            self._planes.append(plane)

    def convert(self, image: Image.Image) -> bytes:
        """The image's pixels, row by row, in the viewer's format."""
        bands = image.split()
        planes = [self._plane(bands, plane, image.size) for plane in self._planes]
        if len(planes) == 1:
            return planes[0].tobytes()
        return Image.merge(self._mode, planes).tobytes()

    @staticmethod
    def _plane(bands, contributions, size) -> Image.Image:
        result = None
        for band, table in contributions:
            part = bands[band] if table is None else bands[band].point(table)
            result = part if result is None else ImageChops.add(result, part)
        return result if result is not None else Image.new("L", size, 0)


class RawEncoder:
    """Raw, RFC 6143 §7.7.1: every pixel in the viewer's format."""

    encoding = Encoding.RAW

    def encode(self, x: int, y: int, image: Image.Image, converter: PixelConverter) -> list[bytes]:
        width, height = image.size
        return [rfb.rect_header(x, y, width, height, Encoding.RAW) + converter.convert(image)]


# Encoders we implement.  The viewer's order of preference decides among them.
ENCODERS = {
    Encoding.RAW: RawEncoder,
}


class ViewerEncoder:
    """One viewer's pixel format, accepted encodings and encoder state.

    An encoder is created the first time the viewer's preference picks it and then kept for
    the whole connection: a viewer's inflater state must survive SetPixelFormat and
    SetEncodings, so our deflater state must too.
    """

    def __init__(self) -> None:
        self.encodings: frozenset[int] = frozenset()
        self.sent: Counter[str] = Counter()
        self.converter = PixelConverter(rfb.DEFAULT_PIXEL_FORMAT)
        self.encoding = Encoding.RAW
        self._encoders = {}

    @property
    def pixel_format(self) -> PixelFormat:
        return self.converter.pixel_format

    def set_pixel_format(self, pixel_format: PixelFormat) -> None:
        self.converter = PixelConverter(pixel_format)

    def set_encodings(self, encodings: tuple[int, ...]) -> None:
        """Remember what the viewer accepts; use its first listed encoding that we implement."""
        self.encodings = frozenset(encodings)
        self.encoding = next((Encoding(e) for e in encodings if e in ENCODERS), Encoding.RAW)

    def supports(self, encoding: int) -> bool:
        return encoding in self.encodings

    def encode(self, x: int, y: int, image: Image.Image) -> list[bytes]:
        encoder = self._encoders.get(self.encoding)
        if encoder is None:
            encoder = self._encoders[self.encoding] = ENCODERS[self.encoding]()
        rects = encoder.encode(x, y, image, self.converter)
        self.sent[self.encoding.name.lower()] += len(rects)
        return rects

    def copy_rect(self, x: int, y: int, width: int, height: int, src_x: int, src_y: int) -> bytes:
        self.sent["copy_rect"] += 1
        return rfb.copy_rect(x, y, width, height, src_x, src_y)
