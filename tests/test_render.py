"""render.py: console fonts, colours, and the incremental renderer.

The fonts are built by the tests from bitmaps written here, so the expected pixels come from
the test, not from the parser.  The incremental renderer is checked against a renderer that
draws every frame from scratch: after any sequence of terminal output, both pictures must be
identical pixel for pixel.
"""

import gzip
import os
import struct
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

import console
import peers
import render

# An 8x4 glyph: a frame with a dot, and its mirror, so a swapped glyph would show.
GLYPH_A = bytes([0b11111111, 0b10000001, 0b10010001, 0b11111111])
GLYPH_B = bytes([0b11111111, 0b10000001, 0b10001001, 0b11111111])


def psf2(glyphs, table=None):
    flags = 1 if table else 0
    header = b"\x72\xb5\x4a\x86" + struct.pack("<7I", 0, 32, flags, len(glyphs), 4, 4, 8)
    data = header + b"".join(glyphs)
    if table:
        data += b"".join("".join(chars).encode() + b"\xff" for chars in table)
    return data


def psf1(glyphs, table):
    count = 256
    padded = list(glyphs) + [bytes(4)] * (count - len(glyphs))
    data = b"\x36\x04\x02\x04" + b"".join(padded)
    for index in range(count):
        chars = table[index] if index < len(table) else []
        data += b"".join(struct.pack("<H", ord(c)) for c in chars) + b"\xff\xff"
    return data


def bits(image):
    """The glyph as the rows of 0/1 a PSF file stores."""
    width, height = image.size
    rows = []
    for y in range(height):
        value = 0
        for x in range(width):
            value = value << 1 | (image.getpixel((x, y)) > 127)
        rows.append(value)
    return bytes(rows)


def test_psf2_with_unicode_table(tmp_path):
    path = tmp_path / "font.psf.gz"
    path.write_bytes(gzip.compress(psf2([GLYPH_A, GLYPH_B], [["A", "Ä"], ["B"]])))
    font = render.PsfFont(str(path))
    assert font.cell == (8, 4)
    assert bits(font.glyph("A", 1)) == GLYPH_A
    assert bits(font.glyph("Ä", 1)) == GLYPH_A
    assert bits(font.glyph("B", 1)) == GLYPH_B
    assert font.glyph("C", 1) is None


def test_psf2_without_table_maps_code_points(tmp_path):
    path = tmp_path / "font.psf"
    path.write_bytes(psf2([bytes(4)] * 66 + [GLYPH_B]))
    assert bits(render.PsfFont(str(path)).glyph("B", 1)) == GLYPH_B


def test_psf1_with_unicode_table(tmp_path):
    path = tmp_path / "font.psf"
    path.write_bytes(psf1([GLYPH_A, GLYPH_B], [["x"], ["y", "ÿ"]]))
    font = render.PsfFont(str(path))
    assert font.cell == (8, 4)
    assert bits(font.glyph("ÿ", 1)) == GLYPH_B


def test_load_font_refuses_garbage(tmp_path):
    path = tmp_path / "bad.psf"
    path.write_bytes(b"not a font at all")
    try:
        render.load_font(str(path))
    except render.FontError as error:
        assert "not a PSF font" in str(error)
    else:
        raise AssertionError("garbage accepted as a font")


def test_cells_are_drawn_in_their_colours(tmp_path):
    path = tmp_path / "font.psf"
    path.write_bytes(psf2([GLYPH_A], [["A"]]))
    glyphs = render.Glyphs(render.PsfFont(str(path)))
    renderer = render.Renderer(glyphs, 2, 1)
    term = console.Console(FakeSource(), 2, 1)
    term.set_status("")
    term.feed(b"\x1b[?25l\x1b[31;44mA\x1b[0m")
    renderer.apply(term.take_frame())
    cell = renderer.image.crop((0, 0, 8, 4))
    red, blue = render.PALETTE[1], render.PALETTE[4]
    for y, row in enumerate(GLYPH_A):
        for x in range(8):
            expected = red if row >> (7 - x) & 1 else blue
            assert cell.getpixel((x, y)) == expected


def test_colour_names():
    assert render.colour("default", render.DEFAULT_FG) == render.PALETTE[7]
    assert render.colour("default", render.DEFAULT_FG, bold=True) == render.PALETTE[15]
    assert render.colour("red", 7) == (0xAA, 0, 0)
    assert render.colour("red", 7, bold=True) == (0xFF, 0x55, 0x55)
    assert render.colour("brightblue", 7) == (0x55, 0x55, 0xFF)
    assert render.colour("5fafff", 7) == (0x5F, 0xAF, 0xFF)
    assert render.colour("nonsense", 7) == render.PALETTE[7]


class FakeSource:
    name = "fake"
    restarts = True

    def write(self, data):
        return len(data)


PIECES = st.sampled_from([
    "text ", "\r\n", "\x1b[41m  \x1b[0m", "\x1b[1;32mbold\x1b[0m", "\x1b[7mrev\x1b[27m",
    "\x1b[4mund\x1b[24m", "中", "\x1b[2J", "\x1b[H", "\x1b[2;5H", "\x1b[K", "\x1b[?25l",
    "\x1b[?25h", "\x1b[2;3r", "\x1b[r", "\x1bM", "\x1b[38;5;208mx\x1b[0m", "\x08", "y" * 13,
])


@settings(max_examples=60, deadline=None)
@given(st.lists(PIECES, max_size=30), st.integers(min_value=1, max_value=4))
@example(["text "] * 3 + ["\r\n"] * 3, 1)  # a scroll under a cursor that stays put
def test_incremental_rendering_matches_a_fresh_rendering(pieces, every):
    glyphs = render.Glyphs(render.load_font(None)[0])
    term = console.Console(FakeSource(), 12, 4)
    term.set_status("")
    renderer = render.Renderer(glyphs, 12, 4)
    for index, piece in enumerate(pieces):
        term.feed(piece.encode())
        if index % every == 0:
            renderer.apply(term.take_frame())
    renderer.apply(term.take_frame())
    term._full = True
    fresh = render.Renderer(glyphs, 12, 4)
    fresh.apply(term.take_frame())
    assert renderer.image.tobytes() == fresh.image.tobytes()


def test_only_changed_cells_are_reported():
    glyphs = render.Glyphs(render.load_font(None)[0])
    term = console.Console(FakeSource(), 20, 3)
    term.set_status("")
    renderer = render.Renderer(glyphs, 20, 3)
    term.feed(b"hello")
    renderer.apply(term.take_frame())
    term.feed(b"!")
    scroll, rects = renderer.apply(term.take_frame())
    width, height = glyphs.cell
    assert scroll == 0
    assert rects == [(5 * width, 0, 2 * width, height)]


def test_wide_character_spans_two_cells():
    glyphs = render.Glyphs(render.load_font(None)[0])
    term = console.Console(FakeSource(), 4, 1)
    term.set_status("")
    term.feed("\x1b[?25l中".encode())
    renderer = render.Renderer(glyphs, 4, 1)
    renderer.apply(term.take_frame())
    width, height = glyphs.cell
    right_half = renderer.image.crop((width, 0, 2 * width, height))
    assert right_half.getextrema() != ((0, 0), (0, 0), (0, 0)), "second cell left blank"
    assert isinstance(renderer.image, Image.Image)


BDF = """STARTFONT 2.1
FONT -test-fixed-medium-r-normal--4-40-75-75-c-80-iso8859-1
SIZE 4 75 75
FONTBOUNDINGBOX 8 4 0 0
STARTPROPERTIES 2
FONT_ASCENT 4
FONT_DESCENT 0
ENDPROPERTIES
CHARS 2
STARTCHAR M
ENCODING 77
SWIDTH 500 0
DWIDTH 8 0
BBX 8 4 0 0
BITMAP
FF
81
91
FF
ENDCHAR
STARTCHAR A
ENCODING 65
SWIDTH 500 0
DWIDTH 8 0
BBX 8 4 0 0
BITMAP
FF
81
89
FF
ENDCHAR
ENDFONT
"""


def test_bdf_font(tmp_path):
    path = tmp_path / "font.bdf"
    path.write_text(BDF)
    font, _ = render.load_font(str(path))
    assert font.cell == (8, 4)
    assert bits(font.glyph("A", 1)) == GLYPH_B
    assert font.glyph("中", 2) is None


X_FONT = Path("/usr/share/fonts/X11/misc/7x14-ISO8859-1.pcf.gz")  # Debian's xfonts-base
TRUETYPE = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")  # fonts-dejavu-core


def drawn(image):
    """How many pixels of a glyph mask are lit."""
    return sum(image.histogram()[128:])


def test_pcf_font_from_xfonts_base():
    peers.require("xfonts-base", installed=X_FONT.is_file())
    font, name = render.load_font(str(X_FONT))
    assert name == str(X_FONT) and font.cell == (7, 14)
    letter_a, letter_b = font.glyph("A", 1), font.glyph("B", 1)
    assert letter_a.size == (7, 14) and drawn(letter_a) > 10
    assert letter_a.tobytes() != letter_b.tobytes()
    assert drawn(font.glyph("é", 1)) > drawn(font.glyph("e", 1))
    assert font.glyph("中", 2) is None


def test_truetype_font_is_monospaced_cells():
    peers.require("fonts-dejavu-core", installed=TRUETYPE.is_file())
    font, _ = render.load_font(str(TRUETYPE))
    width, height = font.cell
    assert 0.5 < width / height < 0.7
    assert drawn(font.glyph("W", 1)) > 10 and font.glyph("W", 1).size == (width, height)
    assert font.glyph("中", 2) is None


def test_fallback_fonts_load_only_when_the_font_lacks_a_character(tmp_path, monkeypatch):
    loaded = []
    truetype = render._truetype
    monkeypatch.setattr(render, "_truetype", lambda *args, **kw: loaded.append(args) or
                        truetype(*args, **kw))
    path = tmp_path / "font.psf"
    path.write_bytes(psf2([GLYPH_A], [["A"]]))
    glyphs = render.Glyphs(render.PsfFont(str(path)))
    glyphs.cell_image(("A", (255, 255, 255), (0, 0, 0), False, False, 1))
    assert loaded == []
    glyphs.cell_image(("中", (255, 255, 255), (0, 0, 0), False, False, 2))
    glyphs.cell_image(("文", (255, 255, 255), (0, 0, 0), False, False, 2))
    assert len(loaded) == sum(map(os.path.exists, render.FALLBACK_FONTS))
