"""Terminal cells to pixels: console fonts, colours, and a renderer that redraws only changes.

Fonts.  A text console should look like one, so the preferred font is a Linux console font
(PSF1 or PSF2, optionally gzipped, with its Unicode table), parsed here in a few lines because
Pillow cannot read PSF.  X bitmap fonts (.pcf, .bdf, gzipped or not) go through Pillow's own
converters, which keep Latin-1 only, and TrueType fonts through `ImageFont.truetype`.
Characters the primary font lacks (CJK, symbols outside a 512-glyph console font) fall back to
DejaVu Sans Mono and then Droid Sans Fallback (CJK), scaled to the cell and loaded the first
time one is needed (2.4 MB resident); a character no font has is drawn as a hollow box.
Bold is drawn by overstriking one pixel to the right, as the VGA console did.

Colours follow pyte's names: the 16 ANSI colours in the Linux console's palette (bold turns the
8 normal ones bright), and 256-colour or truecolour cells as hex strings.

`Renderer` keeps one RGB image of the whole console and, per cell, the key (character,
colours, attributes, cursor) it last drew there.  `apply(frame)` first scrolls the image as the
terminal scrolled, then compares the new keys of the changed rows with the old ones and
redraws only the cells that really differ, returning the changed spans as rectangles.  Cell
images are cached by key, so a screen of text is a few hundred `paste` calls after warm-up.
All of this runs only when a viewer asks for an update.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import struct
import tempfile
import threading

from PIL import BdfFontFile, Image, ImageDraw, ImageFont, PcfFontFile

CONSOLE_FONTS = (
    "/usr/share/consolefonts/Uni2-Fixed16.psf.gz",
    "/usr/share/consolefonts/Lat15-Fixed16.psf.gz",
    "/usr/share/consolefonts/default8x16.psf.gz",
)
DEJAVU_MONO = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
FALLBACK_FONTS = (DEJAVU_MONO, "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf")
TRUETYPE_SIZE = 16
GLYPH_CACHE_LIMIT = 8192
NOT_A_CHARACTER = "\U0010fffd"  # no TrueType font has it: it draws the missing-glyph box

PALETTE = [
    (0x00, 0x00, 0x00), (0xAA, 0x00, 0x00), (0x00, 0xAA, 0x00), (0xAA, 0x55, 0x00),
    (0x00, 0x00, 0xAA), (0xAA, 0x00, 0xAA), (0x00, 0xAA, 0xAA), (0xAA, 0xAA, 0xAA),
    (0x55, 0x55, 0x55), (0xFF, 0x55, 0x55), (0x55, 0xFF, 0x55), (0xFF, 0xFF, 0x55),
    (0x55, 0x55, 0xFF), (0xFF, 0x55, 0xFF), (0x55, 0xFF, 0xFF), (0xFF, 0xFF, 0xFF),
]
COLOUR_NAMES = ["black", "red", "green", "brown", "blue", "magenta", "cyan", "white"]
NAMED = {name: index for index, name in enumerate(COLOUR_NAMES)}
NAMED.update({"bright" + name: index + 8 for index, name in enumerate(COLOUR_NAMES)})
NAMED["bfightmagenta"] = 13  # pyte 0.8 misspells SGR 105
NAMED["yellow"] = 3
DEFAULT_FG, DEFAULT_BG = 7, 0


class FontError(Exception):
    """The font file cannot be used."""


# --- Fonts ---------------------------------------------------------------------------------


class PsfFont:
    """A Linux console font, PSF1 or PSF2, with its Unicode table."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as file:
            data = file.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        if data[:2] == b"\x36\x04":
            self._parse_psf1(data)
        elif data[:4] == b"\x72\xb5\x4a\x86":
            self._parse_psf2(data)
        else:
            raise FontError(f"{path}: not a PSF font")

    def _parse_psf1(self, data: bytes) -> None:
        mode, height = data[2], data[3]
        count = 512 if mode & 1 else 256
        self.cell = (8, height)
        glyphs = data[4 : 4 + count * height]
        table = data[4 + count * height :] if mode & 6 else b""
        entries = _psf1_entries(table) if table else None
        self._build(glyphs, count, height, entries)

    def _parse_psf2(self, data: bytes) -> None:
        _, header_size, flags, count, size, height, width = struct.unpack("<7I", data[4:32])
        self.cell = (width, height)
        glyphs = data[header_size : header_size + count * size]
        table = data[header_size + count * size :] if flags & 1 else b""
        entries = _psf2_entries(table) if table else None
        self._build(glyphs, count, height, entries)

    def _build(self, glyphs: bytes, count: int, height: int, entries) -> None:
        width = self.cell[0]
        size = (width + 7) // 8 * height
        if len(glyphs) < count * size:
            raise FontError("PSF font is truncated")
        self._bitmaps = [glyphs[i * size : (i + 1) * size] for i in range(count)]
        if entries is None:
            entries = [[chr(i)] for i in range(count)]
        self._index = {}
        for index, characters in enumerate(entries[:count]):
            for character in characters:
                self._index.setdefault(character, index)

    def glyph(self, character: str, cells: int) -> Image.Image | None:
        index = self._index.get(character)
        if index is None:
            return None
        mask = Image.frombytes("1", self.cell, self._bitmaps[index]).convert("L")
        if cells == 1:
            return mask
        wide = Image.new("L", (self.cell[0] * cells, self.cell[1]))
        wide.paste(mask.resize(wide.size), (0, 0))
        return wide


def _psf1_entries(table: bytes) -> list[list[str]]:
    entries, current = [], []
    for (value,) in struct.iter_unpack("<H", table[: len(table) // 2 * 2]):
        if value == 0xFFFF:
            entries.append(current)
            current = []
        elif value != 0xFFFE:
            current.append(chr(value))
    return entries


def _psf2_entries(table: bytes) -> list[list[str]]:
    entries = []
    for chunk in table.split(b"\xff")[:-1]:
        single = chunk.split(b"\xfe")[0]
        entries.append(list(single.decode("utf-8", "replace")))
    return entries


class PillowFont:
    """A TrueType font, or an X bitmap font converted by Pillow, drawn with ImageDraw."""

    def __init__(self, font, cell: tuple[int, int] | None = None) -> None:
        self.font = font
        if cell is None:
            left, top, right, bottom = font.getbbox("M")
            ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (bottom, 0)
            cell = (max(1, right), max(1, ascent + descent))
        self.cell = cell
        self._latin1 = not isinstance(font, ImageFont.FreeTypeFont)
        missing = " " if self._latin1 else NOT_A_CHARACTER
        self._missing = {cells: self._draw(missing, cells).tobytes() for cells in (1, 2)}

    def glyph(self, character: str, cells: int) -> Image.Image | None:
        """The character's mask, or None where the font has no glyph for it."""
        if self._latin1 and ord(character[0]) > 0xFF:
            return None
        mask = self._draw(character, cells)
        return None if mask.tobytes() == self._missing[cells] else mask

    def _draw(self, character: str, cells: int) -> Image.Image:
        mask = Image.new("L", (self.cell[0] * cells, self.cell[1]))
        ImageDraw.Draw(mask).text((0, 0), character, font=self.font, fill=255)
        return mask


def _truetype(path: str, height: int | None = None) -> PillowFont:
    size = TRUETYPE_SIZE
    font = ImageFont.truetype(path, size)
    if height is not None:
        ascent, descent = font.getmetrics()
        size = max(4, round(size * height / (ascent + descent)))
        font = ImageFont.truetype(path, size)
    result = PillowFont(font)
    result.path = path
    return result


def _x_bitmap(path: str) -> PillowFont:
    reader = PcfFontFile.PcfFontFile if ".pcf" in path else BdfFontFile.BdfFontFile
    with open(path, "rb") as file:
        data = file.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    converted = reader(io.BytesIO(data))
    with tempfile.TemporaryDirectory() as directory:
        base = os.path.join(directory, "font")
        converted.save(base)
        return PillowFont(ImageFont.load(base + ".pil"))


def load_font(path: str | None) -> tuple[object, str]:
    """The font at `path` (or the system default) and a name to log."""
    if path is None:
        path = next((p for p in CONSOLE_FONTS if os.path.exists(p)), None)
    if path is None:
        if os.path.exists(DEJAVU_MONO):
            return _truetype(DEJAVU_MONO), DEJAVU_MONO
        return PillowFont(ImageFont.load_default()), "Pillow's built-in font"
    try:
        if ".psf" in os.path.basename(path):
            return PsfFont(path), path
        if path.endswith((".pcf", ".pcf.gz", ".bdf", ".bdf.gz")):
            return _x_bitmap(path), path
        return _truetype(path), path
    except (OSError, ValueError, struct.error, SyntaxError) as error:
        raise FontError(f"{path}: {error}") from error


@functools.cache
def glyphs_for(font) -> Glyphs:
    """The one Glyphs of a font, shared by every console of the process that draws with it."""
    return Glyphs(font)


class Glyphs:
    """Cell images by key, from a primary font with fallbacks for missing characters.

    One Glyphs serves every console of the process (their displays draw from their own
    threads, so drawing takes a lock), and the fallback fonts, 2.4 MB once used, are loaded
    only when the primary font first lacks a character.
    """

    def __init__(self, font) -> None:
        self.font = font
        self.cell = font.cell
        self._fallbacks: list | None = None
        self._cache: dict = {}
        self._lock = threading.Lock()

    def cell_image(self, key) -> Image.Image:
        image = self._cache.get(key)
        if image is None:
            with self._lock:
                if len(self._cache) >= GLYPH_CACHE_LIMIT:
                    self._cache.clear()
                image = self._cache[key] = self._draw(*key)
        return image

    def _draw(self, character, fg, bg, bold, underline, cells) -> Image.Image:
        width, height = self.cell[0] * cells, self.cell[1]
        image = Image.new("RGB", (width, height), bg)
        if character.strip():
            mask = self._mask(character, cells)
            image.paste(fg, (0, 0), mask)
            if bold:
                image.paste(fg, (1, 0), mask)
        if underline:
            image.paste(fg, (0, height - 1, width, height))
        return image

    def _mask(self, character: str, cells: int) -> Image.Image:
        for font in self._fonts():
            mask = font.glyph(character, cells)
            if mask is not None:
                return mask.crop((0, 0, self.cell[0] * cells, self.cell[1]))
        return self._box(cells)

    def _fonts(self):
        """The primary font, then the fallbacks, loaded the first time they are reached."""
        yield self.font
        if self._fallbacks is None:
            self._fallbacks = [
                _truetype(path, height=self.cell[1])
                for path in FALLBACK_FONTS
                if os.path.exists(path) and getattr(self.font, "path", None) != path
            ]
        yield from self._fallbacks

    def _box(self, cells: int) -> Image.Image:
        width, height = self.cell[0] * cells, self.cell[1]
        mask = Image.new("L", (width, height))
        ImageDraw.Draw(mask).rectangle((1, 1, width - 2, height - 2), outline=255)
        return mask


# --- Colours and the renderer -------------------------------------------------------------


def colour(name: str, default: int, bold: bool = False) -> tuple[int, int, int]:
    """The RGB of a pyte colour name or hex string."""
    if name == "default":
        return PALETTE[default + 8 if bold and default < 8 else default]
    index = NAMED.get(name)
    if index is not None:
        return PALETTE[index + 8 if bold and index < 8 else index]
    try:
        return int(name[0:2], 16), int(name[2:4], 16), int(name[4:6], 16)
    except ValueError:
        return PALETTE[default]


def cell_key(cells: list, x: int, cursor: bool):
    """What a cell looks like: (character, fg, bg, bold, underline, width in cells)."""
    char = cells[x]
    fg = colour(char.fg, DEFAULT_FG, char.bold)
    bg = colour(char.bg, DEFAULT_BG)
    if char.reverse != cursor:
        fg, bg = bg, fg
    wide = x + 1 < len(cells) and cells[x + 1].data == "" and char.data != ""
    return (char.data, fg, bg, char.bold, char.underscore, 2 if wide else 1)


class Renderer:
    """The console's picture, redrawn cell by cell from terminal frames."""

    def __init__(self, glyphs: Glyphs, columns: int, lines: int) -> None:
        self.glyphs = glyphs
        self.columns, self.lines = columns, lines
        cell_width, cell_height = glyphs.cell
        self.size = (columns * cell_width, lines * cell_height)
        self.image = Image.new("RGB", self.size)
        self._keys = [[None] * columns for _ in range(lines)]

    def apply(self, frame) -> tuple[int, list[tuple[int, int, int, int]]]:
        """Draw a frame; return the scroll in pixels and the changed rectangles."""
        cell_width, cell_height = self.glyphs.cell
        if frame.scroll:
            self._scroll(frame.scroll * cell_height)
            self._keys = self._keys[frame.scroll :] + [
                [None] * self.columns for _ in range(frame.scroll)
            ]
        rects = []
        for row, cells in sorted(frame.rows.items()):
            span = self._draw_row(row, cells, frame.cursor)
            if span:
                start, end = span
                rects.append((start * cell_width, row * cell_height,
                              (end - start) * cell_width, cell_height))
        return frame.scroll * cell_height, rects

    def _scroll(self, pixels: int) -> None:
        width, height = self.size
        self.image.paste(self.image.crop((0, pixels, width, height)), (0, 0))

    def _draw_row(self, row: int, cells: list, cursor) -> tuple[int, int] | None:
        keys = self._keys[row]
        cell_width, cell_height = self.glyphs.cell
        start = end = None
        x = 0
        while x < self.columns:
            key = cell_key(cells, x, cursor == (x, row))
            width = key[5]
            if key != keys[x]:
                keys[x] = key
                for covered in range(x + 1, min(x + width, self.columns)):
                    keys[covered] = None
                image = self.glyphs.cell_image(key)
                self.image.paste(image, (x * cell_width, row * cell_height))
                start = x if start is None else start
                end = min(x + width, self.columns)
            x += width
        return (start, end) if start is not None else None
