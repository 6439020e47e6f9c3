"""Pixels for one viewer: its pixel format applied to Pillow images, and palettes (RFC 6143 §7.4).

The displays keep their pixels as Pillow RGB images.  A viewer asks for its own pixel format
(8, 16 or 32 bits per pixel, either byte order, any channel layout).  This module holds the
per-pixel machinery every encoder shares, and none of it loops over pixels in Python:

* `PixelConverter.convert` turns an image into the viewer's pixel bytes.  For every byte of the
  output pixel we work out, per colour channel, a 256-entry lookup table that scales the 8-bit
  channel to the viewer's maximum, shifts it into place and keeps the bits that land in that
  byte.  Pillow applies the tables (`Image.point`), adds the channel planes of a byte together
  (the channels never overlap, so addition is bitwise or) and interleaves the byte planes
  (`Image.merge`).  The common 32-bit formats come out as a plain band shuffle.  Leaving one
  byte plane out gives ZRLE's 3-byte CPIXEL (`convert_compact`).
* `PixelConverter.reduce` snaps every colour to the one the viewer will see, so that two colours
  are different in the reduced image exactly when their pixel values differ: an encoder that
  counts colours or looks for runs in the reduced image sees what the viewer will see.
* `palette` lists an image's colours with `Image.getcolors`; `indices` gives each pixel's
  index into that list.  For a console's few colours it numbers each channel's values and
  lets Pillow add up a code per pixel (`_indices_by_ranks`, a dozen C calls whatever the
  size); otherwise, and for tiny images where call overhead wins, Pillow's median-cut
  quantizer, which is exact when asked for no more colours than the image has, remapped to
  our order with `bytes.translate`.  (Quantizing to a given palette image is not exact:
  Pillow looks colours up at 6 bits per channel.)
* `PixelConverter.palette` gives a list of colours as PIXELs and remembers each colour's
  bytes: the same few palettes come back tile after tile.
* `pack` packs indices into 1, 2 or 4 bits per pixel, rows padded to a byte, most significant
  bits first, as Tight and ZRLE both want; `runs` finds runs of equal pixels with a regex.
"""

from __future__ import annotations

import re

from PIL import Image, ImageChops

from rfb import PixelFormat


def _level(value: int, maximum: int) -> int:
    """An 8-bit channel value scaled to 0..maximum, rounded to nearest."""
    return (value * maximum + 127) // 255


def _byte_lut(maximum: int, shift: int, byte_shift: int) -> list[int] | None:
    """The table mapping an 8-bit channel to its bits in one byte of the pixel, or None."""
    table = [((_level(v, maximum) << shift) >> byte_shift) & 0xFF for v in range(256)]
    return table if any(table) else None


def _reduce_lut(maximum: int) -> list[int]:
    """Map each 8-bit value to the smallest one of the same level: one value per pixel value."""
    smallest = {}
    for value in range(256):
        smallest.setdefault(_level(value, maximum), value)
    return [smallest[_level(value, maximum)] for value in range(256)]


_IDENTITY = list(range(256))
KNOWN_COLOURS_LIMIT = 4096
RANKS_MIN_PIXELS = 1024
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class PixelConverter:
    """Converts RGB images to a viewer's pixel format with Pillow doing the per-pixel work."""

    def __init__(self, pixel_format: PixelFormat) -> None:
        self.pixel_format = pixel_format
        size = pixel_format.bytes_per_pixel
        self._planes = []
        for index in range(size):
            significance = size - 1 - index if pixel_format.big_endian else index
            plane = []
            for band, (maximum, shift) in enumerate(pixel_format.channels):
                table = _byte_lut(maximum, shift, 8 * significance)
                if table is not None:
                    plane.append((band, None if table == _IDENTITY else table))
            self._planes.append(plane)
        self._compact_planes = self._planes
        unused = self._unused_byte()
        if unused is not None:
            self._compact_planes = self._planes[:unused] + self._planes[unused + 1 :]
        self.compact_size = len(self._compact_planes)
        self._pixels: dict = {}
        self._compact_pixels: dict = {}
        reduce_table = [t for maximum, _ in pixel_format.channels for t in _reduce_lut(maximum)]
        self._reduce_table = None if reduce_table == _IDENTITY * 3 else reduce_table

    @property
    def bytes_per_pixel(self) -> int:
        return self.pixel_format.bytes_per_pixel

    @property
    def is_888(self) -> bool:
        """Tight sends such formats' colours as 3 bytes R, G, B (TigerVNC's PixelFormat::is888)."""
        pf = self.pixel_format
        return (pf.bits_per_pixel == 32 and pf.depth == 24
                and all(m == 255 and s % 8 == 0 for m, s in pf.channels))

    def _unused_byte(self) -> int | None:
        """Which byte (in wire order) a ZRLE CPIXEL leaves out, or None if it is a whole PIXEL.

        RFC 6143 §7.7.6 allows 3-byte CPIXELs at 32 bpp, depth ≤ 24, when the colour bits fit
        in the 3 least or 3 most significant bytes.  When both fit, TigerVNC and libvncserver
        drop the byte that comes last on the wire, so we do too.
        """
        pf = self.pixel_format
        if pf.bits_per_pixel != 32 or pf.depth > 24:
            return None
        used = 0
        for maximum, shift in pf.channels:
            used |= maximum << shift
        low_fits, high_fits = used < 1 << 24, used & 0xFF == 0
        if (low_fits and not pf.big_endian) or (high_fits and pf.big_endian):
            return 3
        if low_fits or high_fits:
            return 0
        return None

    def reduce(self, image: Image.Image) -> Image.Image:
        """The image with each colour replaced by one that looks the same to this viewer."""
        return image if self._reduce_table is None else image.point(self._reduce_table)

    def convert(self, image: Image.Image) -> bytes:
        """The image's pixels, row by row, as this viewer's PIXELs."""
        return self._convert(image, self._planes)

    def convert_compact(self, image: Image.Image) -> bytes:
        """The image's pixels as ZRLE CPIXELs (3 bytes when the format allows, else PIXELs)."""
        return self._convert(image, self._compact_planes)

    def palette(self, colours) -> bytes:
        """The colours as PIXELs, one after another."""
        return self._palette(colours, self._pixels, self._planes)

    def palette_compact(self, colours) -> bytes:
        """The colours as ZRLE CPIXELs, one after another."""
        return self._palette(colours, self._compact_pixels, self._compact_planes)

    def _palette(self, colours, known: dict, byte_planes) -> bytes:
        """Palettes repeat tile after tile, so each colour's bytes are remembered."""
        if len(known) > KNOWN_COLOURS_LIMIT:
            known.clear()
        missing = [colour for colour in dict.fromkeys(colours) if colour not in known]
        if missing:
            size = len(byte_planes)
            data = self._convert(_strip(missing), byte_planes)
            for number, colour in enumerate(missing):
                known[colour] = data[number * size : (number + 1) * size]
        return b"".join(known[colour] for colour in colours)

    def _convert(self, image: Image.Image, byte_planes) -> bytes:
        bands = image.split()
        planes = [self._plane(bands, plane, image.size) for plane in byte_planes]
        if len(planes) == 1:
            return planes[0].tobytes()
        return Image.merge(_MODES[len(planes)], planes).tobytes()

    @staticmethod
    def _plane(bands, contributions, size) -> Image.Image:
        result = None
        for band, table in contributions:
            part = bands[band] if table is None else bands[band].point(table)
            result = part if result is None else ImageChops.add(result, part)
        return result if result is not None else Image.new("L", size, 0)


def _strip(colours: list[tuple[int, int, int]]) -> Image.Image:
    """A 1-pixel-high image of the given colours, to convert a palette in one go."""
    image = Image.new("RGB", (len(colours), 1))
    image.putdata(colours)
    return image


def palette(image: Image.Image, limit: int) -> list[tuple[int, int, int]] | None:
    """The image's colours, most frequent first, or None if it has more than `limit`."""
    counts = image.getcolors(limit)
    if counts is None:
        return None
    counts.sort(reverse=True)
    return [colour for _, colour in counts]


def indices(image: Image.Image, colours: list[tuple[int, int, int]]) -> bytes:
    """Each pixel's index into `colours` (all of the image's colours, at most 256), a byte each."""
    if len(colours) == 1:
        return bytes(image.width * image.height)
    if image.width * image.height >= RANKS_MIN_PIXELS:
        data = _indices_by_ranks(image, colours)
        if data is not None:
            return data
    quantized = image.quantize(len(colours), Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    found = quantized.getpalette()[: 3 * len(colours)]
    position = {colour: index for index, colour in enumerate(colours)}
    table = bytes(position[tuple(found[i : i + 3])] for i in range(0, len(found), 3))
    return quantized.tobytes().translate(table.ljust(256, b"\0"))


def _indices_by_ranks(image: Image.Image, colours) -> bytes | None:
    """`indices` by numbering each channel's values, or None if the numbers need over a byte.

    With the values of each channel numbered 0..n-1, a colour's code (r * ng + g) * nb + b is
    one per colour; Pillow computes every pixel's code with one lookup per channel and two
    additions, and `translate` turns codes into indices.  Console palettes fit a byte easily.
    """
    values = [sorted({colour[band] for colour in colours}) for band in range(3)]
    red, green, blue = (len(v) for v in values)
    if red * green * blue > 256:
        return None
    weights = (green * blue, blue, 1)
    table = [0] * 768
    codes = [{} for _ in range(3)]
    for band in range(3):
        for rank, value in enumerate(values[band]):
            codes[band][value] = table[256 * band + value] = rank * weights[band]
    bands = image.point(table).split()
    code = ImageChops.add(ImageChops.add(bands[0], bands[1]), bands[2])
    index = bytearray(256)
    for number, (r, g, b) in enumerate(colours):
        index[codes[0][r] + codes[1][g] + codes[2][b]] = number
    return code.tobytes().translate(index)


_SHIFTED = {shift: bytes((v << shift) & 0xFF for v in range(256)) for shift in range(8)}


def pack(data: bytes, width: int, height: int, bits: int) -> bytes:
    """Pack 1-byte indices into `bits` bits each, most significant first, rows padded to a byte."""
    if bits == 8:
        return data
    per_byte = 8 // bits
    row = -(-width // per_byte) * per_byte
    if row != width:
        padded = Image.new("L", (row, height))
        padded.paste(Image.frombytes("L", (width, height), data))
        data = padded.tobytes()
    packed = 0
    for position in range(per_byte):
        shift = bits * (per_byte - 1 - position)
        packed |= int.from_bytes(data[position::per_byte].translate(_SHIFTED[shift]), "big")
    return packed.to_bytes(row * height // per_byte, "big")


_RUN_PATTERNS = {size: re.compile(rb"(.{%d})\1*" % size, re.DOTALL) for size in (1, 2, 3, 4)}


def runs(data: bytes, size: int):
    """Runs of equal `size`-byte pixels in data, as (pixel, count), one at a time."""
    return ((m[1], (m.end() - m.start()) // size) for m in _RUN_PATTERNS[size].finditer(data))


def run_count(data: bytes, size: int) -> int:
    """How many runs of equal `size`-byte pixels data holds, counted by Pillow, not listed:
    each pixel is compared with the next, and the pixels equal to their neighbour counted."""
    count = len(data) // size
    if count < 2:
        return count
    mode = _MODES[size]
    before = Image.frombytes(mode, (count - 1, 1), data[:-size])
    after = Image.frombytes(mode, (count - 1, 1), data[size:])
    bands = ImageChops.difference(before, after).split()
    changed = bands[0]
    for band in bands[1:]:
        changed = ImageChops.lighter(changed, band)
    return count - changed.histogram()[0]


def tiles(width: int, height: int, tile_width: int, tile_height: int):
    """Boxes (left, top, right, bottom) covering the area row by row, smaller at the edges."""
    for top in range(0, height, tile_height):
        for left in range(0, width, tile_width):
            yield left, top, min(left + tile_width, width), min(top + tile_height, height)


def tiles_with_fill(image: Image.Image, tile_width: int, tile_height: int):
    """(box, colour) for each tile, row by row: colour when the tile is known to be of that one
    colour, None when it needs a look.

    A console leaves most of its screen blank.  For each band of tiles one difference against
    the colour of the band's last pixel finds the columns that hold anything else; the tiles
    outside them are solid and cost no analysis at all.
    """
    width, height = image.size
    for top in range(0, height, tile_height):
        bottom = min(top + tile_height, height)
        band = image.crop((0, top, width, bottom))
        fill = band.getpixel((width - 1, band.height - 1))
        content = ImageChops.difference(band, Image.new("RGB", band.size, fill)).getbbox()
        for left in range(0, width, tile_width):
            right = min(left + tile_width, width)
            solid = content is None or right <= content[0] or left >= content[2]
            yield (left, top, right, bottom), fill if solid else None
