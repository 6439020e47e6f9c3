"""Every encoder, every pixel format: encode with encoders.py, decode with rfbdecode.py, compare.

The decoder in rfbdecode.py was written from the protocol description, independently of the
encoders, and checks every field strictly, so a round trip that comes back pixel-exact means
two readings of the spec agree.  The expected pixels come from rfbdecode's own per-pixel
conversion, not from `PixelConverter`, so the converter is checked too.

Each (encoding, pixel format) pair sends a sequence of images of awkward sizes (1x1, tile
boundaries, partial tiles on the right and bottom edges) and contents (solid, two-colour text,
a console screen, many colours, a photograph) through one encoder and one decoder, so the zlib
streams carry on from rectangle to rectangle exactly as they do on a real connection.
Hypothesis then tries random images in random valid pixel formats.
"""

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw, ImageStat

import encoders
import pixels
import rfbdecode
import tight
from rfb import Encoding, PixelFormat

LOSSLESS = [Encoding.RAW, Encoding.HEXTILE, Encoding.ZLIB, Encoding.TIGHT, Encoding.ZRLE]

FORMATS = {
    "32le-rgb": PixelFormat(32, 24, False, True, 255, 255, 255, 16, 8, 0),
    "32le-bgr": PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16),
    "32be-rgb": PixelFormat(32, 24, True, True, 255, 255, 255, 16, 8, 0),
    "32be-high": PixelFormat(32, 24, True, True, 255, 255, 255, 24, 16, 8),
    "32le-high": PixelFormat(32, 24, False, True, 255, 255, 255, 8, 16, 24),
    "32le-depth32": PixelFormat(32, 32, False, True, 255, 255, 255, 16, 8, 0),
    "32le-odd-shifts": PixelFormat(32, 24, False, True, 255, 255, 255, 17, 9, 1),
    "32be-565": PixelFormat(32, 16, True, True, 31, 63, 31, 11, 5, 0),
    "16le-565": PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0),
    "16be-565": PixelFormat(16, 16, True, True, 31, 63, 31, 11, 5, 0),
    "16le-555": PixelFormat(16, 15, False, True, 31, 31, 31, 10, 5, 0),
    "16be-555": PixelFormat(16, 15, True, True, 31, 31, 31, 10, 5, 0),
    "8-332": PixelFormat(8, 8, False, True, 7, 7, 3, 5, 2, 0),
    "8-233": PixelFormat(8, 8, False, True, 7, 7, 3, 0, 3, 6),
    "8-222": PixelFormat(8, 6, False, True, 3, 3, 3, 4, 2, 0),
    "8-111": PixelFormat(8, 3, False, True, 1, 1, 1, 2, 1, 0),
    "8-111-high": PixelFormat(8, 3, False, True, 1, 1, 1, 7, 6, 5),
}
CONSOLE_COLOURS = [(0, 0, 0), (170, 0, 0), (0, 170, 0), (170, 85, 0), (0, 0, 170),
                   (170, 0, 170), (0, 170, 170), (170, 170, 170), (255, 255, 85)]


def text_image(width, height, fg=(170, 170, 170), bg=(0, 0, 0)):
    """Two colours: unsmoothed text on a background."""
    image = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    for row in range(0, height, 12):
        draw.text((1, row), "Hello, world! ls -l /usr/bin 0123456789" * 3, fill=fg)
    return image


def console_image(width, height, seed=1):
    """A console screen: coloured blocks and text of several colours on black."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    for _ in range(8):
        x, y = rng.randrange(width), rng.randrange(height)
        draw.rectangle((x, y, x + rng.randrange(40), y + rng.randrange(20)),
                       fill=rng.choice(CONSOLE_COLOURS))
    for row in range(0, height, 16):
        draw.text((rng.randrange(8), row), "drwxr-xr-x 2 root root 4096 bin",
                  fill=rng.choice(CONSOLE_COLOURS[1:]))
    return image


def many_colours(width, height, count=120, seed=2):
    """Blocks of `count` different colours: more than a ZRLE palette, less than a photo."""
    rng = random.Random(seed)
    colours = [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(count)]
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(0, height, 3):
        for x in range(0, width, 5):
            draw.rectangle((x, y, x + 4, y + 2), fill=rng.choice(colours))
    return image


def photo(width, height, seed=4):
    """A photograph stand-in: smooth gradients plus a little noise, thousands of colours."""
    rng = random.Random(seed)
    noise = Image.frombytes("L", (width, height), rng.randbytes(width * height)).point(
        lambda v: v // 12)
    across = Image.linear_gradient("L").rotate(90).resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    return Image.merge("RGB", (ImageChops.add(across, noise), radial,
                               ImageChops.add(radial, noise)))


def random_pixels(width, height, seed=3):
    rng = random.Random(seed)
    return Image.frombytes("RGB", (width, height), rng.randbytes(3 * width * height))


# (x, y, image) sent in sequence to one 200x140 framebuffer.
SEQUENCE = [
    (0, 0, Image.new("RGB", (1, 1), (170, 0, 0))),
    (3, 5, text_image(65, 17)),
    (0, 0, Image.new("RGB", (200, 140), (0, 0, 170))),
    (16, 16, text_image(16, 16, (255, 255, 255), (0, 0, 170))),
    (0, 20, console_image(130, 70)),
    (135, 71, text_image(65, 69, (0, 170, 0))),
    (10, 100, many_colours(65, 33)),
    (0, 70, many_colours(130, 64, count=300)),
    (80, 0, photo(64, 64)),
    (150, 100, random_pixels(17, 17)),
    (0, 20, console_image(130, 70)),
    (199, 139, Image.new("RGB", (1, 1), (255, 255, 255))),
]


def viewer(encoding, pf, extra=()):
    """A ViewerEncoder set up as a viewer listing `encoding` first, and a matching decoder."""
    viewer_encoder = encoders.ViewerEncoder()
    viewer_encoder.set_pixel_format(pf)
    viewer_encoder.set_encodings((encoding, *extra, Encoding.RAW))
    jpeg = any(e in encoders.JPEG_QUALITY_LEVELS for e in extra)
    return viewer_encoder, rfbdecode.Decoder(200, 140, pf, jpeg_allowed=jpeg)


def send(viewer_encoder, decoder, x, y, image):
    """Encode and decode one image; return the decoded pixels of its area and the bytes sent."""
    rects = viewer_encoder.encode(x, y, image)
    decoder.decode(b"".join(rects))
    return decoder.crop(x, y, *image.size), sum(map(len, rects))


def mean_error(decoded, image):
    """The largest per-channel mean difference between two images."""
    return max(ImageStat.Stat(ImageChops.difference(decoded, image)).mean)


@pytest.mark.parametrize("name", FORMATS)
def test_formats_are_valid(name):
    FORMATS[name].check()


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("encoding", LOSSLESS, ids=lambda e: e.name.lower())
def test_round_trip_sequence(encoding, name):
    pf = FORMATS[name]
    viewer_encoder, decoder = viewer(encoding, pf)
    for x, y, image in SEQUENCE:
        decoded, _ = send(viewer_encoder, decoder, x, y, image)
        assert decoded == rfbdecode.expected_pixels(image, pf), (x, y, image.size)
    assert viewer_encoder.sent[encoding.name.lower()] >= len(SEQUENCE)
    assert set(viewer_encoder.sent) == {encoding.name.lower()}


def test_converter_matches_the_reference_in_every_format():
    image = random_pixels(40, 30)
    for pf in FORMATS.values():
        decoder = rfbdecode.Decoder(40, 30, pf)
        data = pixels.PixelConverter(pf).convert(image)
        assert decoder.pixels_of(data) == rfbdecode.expected_pixels(image, pf)


def test_reduce_keeps_pixel_values_and_merges_only_equal_ones():
    image = random_pixels(64, 64)
    for pf in FORMATS.values():
        converter = pixels.PixelConverter(pf)
        reduced = converter.reduce(image)
        assert converter.convert(reduced) == converter.convert(image)
        values = set(rfbdecode.expected_pixels(reduced, pf))
        assert len(reduced.getcolors(4096)) == len(values)


@pytest.mark.parametrize("size", [(33, 17), (64, 40)])
@pytest.mark.parametrize("count", [1, 2, 3, 6, 17, 127, 255, 256])
def test_indices_are_exact_even_for_near_colours(count, size):
    """Both ways to find indices (channel ranks from 1024 pixels on, else the quantizer)."""
    rng = random.Random(count)
    colours = {(100, 100, 100)}
    while len(colours) < count:
        colours.add(tuple(100 + rng.randrange(-3, 4) for _ in range(3))
                    if rng.random() < 0.7 else tuple(rng.randbytes(3)))
    colours = sorted(colours)
    data = [rng.choice(colours) for _ in range(size[0] * size[1])]
    image = Image.new("RGB", size)
    image.putdata(data)
    found = pixels.palette(image, 256)
    assert sorted(found) == sorted(set(data))
    assert [found[i] for i in pixels.indices(image, found)] == data


@given(st.integers(1, 4).flatmap(lambda size: st.tuples(
    st.just(size), st.lists(st.sampled_from([b"\0" * size, b"\1" * size, bytes(range(size))]),
                            max_size=40))))
def test_run_count_agrees_with_the_runs_listed(case):
    size, values = case
    data = b"".join(values)
    assert pixels.run_count(data, size) == len(list(pixels.runs(data, size)))


@pytest.mark.parametrize("encoding", LOSSLESS)
def test_a_dithered_screen_round_trips(encoding):
    """A 1-pixel checkerboard (X's root weave): runs of one everywhere."""
    pf = FORMATS["32le-rgb"]
    image = Image.new("1", (130, 70))
    image.putdata([(x + y) % 2 for y in range(70) for x in range(130)])
    image = image.convert("RGB")
    viewer_encoder, decoder = viewer(encoding, pf)
    decoded, _ = send(viewer_encoder, decoder, 3, 5, image)
    assert decoded == rfbdecode.expected_pixels(image, pf)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("width", [1, 7, 8, 9, 17])
def test_pack_pads_rows_and_puts_the_first_pixel_high(bits, width):
    rng = random.Random(width * bits)
    data = bytes(rng.randrange(1 << bits) for _ in range(width * 3))
    packed = pixels.pack(data, width, 3, bits)
    row_bytes = (width * bits + 7) // 8
    assert len(packed) == row_bytes * 3
    for row in range(3):
        for col in range(width):
            bit = col * bits
            value = packed[row * row_bytes + bit // 8] >> (8 - bits - bit % 8) & ((1 << bits) - 1)
            assert value == data[row * width + col]


@pytest.mark.parametrize("length, wire", [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (10000, b"\x90\x4e"),
    (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"), (4194303, b"\xff\xff\xff")])
def test_tight_compact_length(length, wire):
    assert tight.compact_length(length) == wire
    assert rfbdecode.Decoder.compact_length(rfbdecode.BytesReader(wire)) == length


def test_tight_compact_length_refuses_what_does_not_fit():
    with pytest.raises(ValueError):
        tight.compact_length(4194304)


def test_each_encoding_uses_its_sub_encodings():
    seen = {}
    for encoding in (Encoding.HEXTILE, Encoding.TIGHT, Encoding.ZRLE):
        viewer_encoder, decoder = viewer(encoding, FORMATS["32le-rgb"])
        for x, y, image in SEQUENCE:
            send(viewer_encoder, decoder, x, y, image)
        seen[encoding] = set(decoder.seen)
    assert {"hextile raw", "hextile solid", "hextile mono", "hextile coloured"} <= seen[5]
    assert {"tight fill", "tight mono", "tight indexed", "tight copy"} <= seen[7]
    assert {"zrle raw", "zrle solid", "zrle packed", "zrle palette rle",
            "zrle plain rle"} <= seen[16]


def test_tight_splits_wide_and_large_rectangles():
    viewer_encoder, _ = viewer(Encoding.TIGHT, FORMATS["32le-rgb"])
    decoder = rfbdecode.Decoder(2100, 64, FORMATS["32le-rgb"])
    image = text_image(2100, 64)
    rects = viewer_encoder.encode(0, 0, image)
    widths = [int.from_bytes(rect[4:6], "big") for rect in rects]
    assert len(rects) > 2 and max(widths) == 2048
    decoder.decode(b"".join(rects))
    assert decoder.crop(0, 0, 2100, 64) == rfbdecode.expected_pixels(image, FORMATS["32le-rgb"])


def test_tight_sends_a_line_of_two_text_colours_as_two_mono_rectangles():
    image = Image.new("RGB", (160, 16))
    image.paste(text_image(96, 16), (0, 0))
    image.paste(text_image(64, 16, fg=(0, 170, 0)), (96, 0))
    viewer_encoder, decoder = viewer(Encoding.TIGHT, FORMATS["32le-rgb"])
    decoded, _ = send(viewer_encoder, decoder, 0, 0, image)
    assert decoded == rfbdecode.expected_pixels(image, FORMATS["32le-rgb"])
    assert decoder.seen["tight mono"] == 2 and "tight indexed" not in decoder.seen


def test_tight_sends_small_data_without_length_or_zlib():
    viewer_encoder, decoder = viewer(Encoding.TIGHT, FORMATS["32le-rgb"])
    image = text_image(8, 2)
    image.putpixel((0, 0), (255, 255, 255))
    (rect,) = viewer_encoder.encode(0, 0, image)
    # control, filter, palette size, 2 TPIXELs, then 2 rows of 1 byte: no length, no zlib.
    assert len(rect) == 12 + 1 + 1 + 1 + 6 + 2
    send(viewer_encoder, decoder, 0, 0, image)


def test_tight_uses_jpeg_only_for_photographs_and_only_when_allowed():
    pf = FORMATS["32le-rgb"]
    quality = encoders.JPEG_QUALITY_LEVELS[9]
    viewer_encoder, decoder = viewer(Encoding.TIGHT, pf, (quality,))
    image = photo(120, 90)
    decoded, jpeg_bytes = send(viewer_encoder, decoder, 0, 0, image)
    assert decoder.seen["tight jpeg"] == 1
    assert mean_error(decoder.image().crop((0, 0, 120, 90)), image) < 6
    for lossless in (text_image(130, 70), console_image(130, 70), many_colours(130, 70, 300)):
        decoded, _ = send(viewer_encoder, decoder, 0, 0, lossless)
        assert decoded == rfbdecode.expected_pixels(lossless, pf)
    assert decoder.seen["tight jpeg"] == 1

    no_quality, strict = viewer(Encoding.TIGHT, pf)
    decoded, copy_bytes = send(no_quality, strict, 0, 0, image)
    assert decoded == rfbdecode.expected_pixels(image, pf) and "tight jpeg" not in strict.seen
    assert jpeg_bytes < copy_bytes


def test_tight_sends_dense_colours_as_full_colour_and_few_as_a_palette():
    """A photograph-like piece is never quantized: full colour (or JPEG), its columns uncut."""
    pf = FORMATS["32le-rgb"]
    viewer_encoder, decoder = viewer(Encoding.TIGHT, pf)
    image = many_colours(128, 32, count=200)
    decoded, _ = send(viewer_encoder, decoder, 0, 0, image)
    assert decoded == rfbdecode.expected_pixels(image, pf)
    assert decoder.seen == {"tight": 1, "tight copy": 1}
    decoded, _ = send(viewer_encoder, decoder, 0, 40, console_image(128, 32))
    assert "tight indexed" in decoder.seen or "tight mono" in decoder.seen


@pytest.mark.parametrize("level, limit", [(0, 14), (5, 12), (9, 6)])
def test_tight_jpeg_quality_levels_and_16_bit(level, limit):
    pf = FORMATS["16be-565"]
    viewer_encoder, decoder = viewer(Encoding.TIGHT, pf, (encoders.JPEG_QUALITY_LEVELS[level],))
    image = photo(100, 80)
    send(viewer_encoder, decoder, 0, 0, image)
    assert decoder.seen["tight jpeg"] == 1
    assert mean_error(decoder.image().crop((0, 0, 100, 80)), image) < limit


def test_tight_never_sends_jpeg_at_8_bits_per_pixel():
    pf = FORMATS["8-332"]
    viewer_encoder, decoder = viewer(Encoding.TIGHT, pf, (encoders.JPEG_QUALITY_LEVELS[5],))
    image = photo(100, 80)
    decoded, _ = send(viewer_encoder, decoder, 0, 0, image)
    assert decoded == rfbdecode.expected_pixels(image, pf) and "tight jpeg" not in decoder.seen


def test_tight_follows_compression_level_changes_with_stream_resets():
    pf = FORMATS["32le-rgb"]
    viewer_encoder, decoder = viewer(Encoding.TIGHT, pf, (encoders.COMPRESSION_LEVELS[1],))
    image = console_image(130, 70)
    send(viewer_encoder, decoder, 0, 0, image)
    assert "tight reset" not in decoder.seen
    viewer_encoder.set_encodings((Encoding.TIGHT, encoders.COMPRESSION_LEVELS[9]))
    assert viewer_encoder.levels.compression == 9
    decoded, _ = send(viewer_encoder, decoder, 0, 0, text_image(130, 70))
    assert decoder.seen["tight reset"] >= 1
    assert decoded == rfbdecode.expected_pixels(text_image(130, 70), pf)


@pytest.mark.parametrize("encoding", [Encoding.ZLIB, Encoding.TIGHT, Encoding.ZRLE],
                         ids=lambda e: e.name.lower())
def test_the_zlib_stream_carries_on_between_rectangles(encoding):
    viewer_encoder, decoder = viewer(encoding, FORMATS["32le-rgb"])
    image = random_pixels(30, 30)
    _, first = send(viewer_encoder, decoder, 0, 0, image)
    decoded, second = send(viewer_encoder, decoder, 50, 60, image)
    assert second < first / 4
    assert decoded == rfbdecode.expected_pixels(image, FORMATS["32le-rgb"])


def test_encoders_and_streams_survive_format_and_encoding_changes():
    viewer_encoder, decoder = viewer(Encoding.ZRLE, FORMATS["32le-rgb"])
    send(viewer_encoder, decoder, 0, 0, console_image(130, 70))
    zrle = viewer_encoder._encoders[Encoding.ZRLE]
    viewer_encoder.set_encodings((Encoding.HEXTILE,))
    send(viewer_encoder, decoder, 0, 0, text_image(40, 40))
    viewer_encoder.set_pixel_format(FORMATS["16be-565"])
    viewer_encoder.set_encodings((Encoding.ZRLE, Encoding.HEXTILE))
    assert viewer_encoder._encoders[Encoding.ZRLE] is zrle
    decoder.pf, decoder.size = FORMATS["16be-565"], 2
    image = console_image(130, 70, seed=5)
    decoded, _ = send(viewer_encoder, decoder, 10, 10, image)
    assert decoded == rfbdecode.expected_pixels(image, FORMATS["16be-565"])
    assert viewer_encoder.sent == {"zrle": 2, "hextile": 1}


def test_the_viewer_order_of_preference_decides():
    viewer_encoder = encoders.ViewerEncoder()
    viewer_encoder.set_encodings((-239, Encoding.COPY_RECT, 21, Encoding.ZRLE, Encoding.TIGHT))
    assert viewer_encoder.encoding == Encoding.ZRLE
    viewer_encoder.set_encodings((Encoding.HEXTILE, Encoding.TIGHT, -250, -30, -255, -24))
    assert viewer_encoder.encoding == Encoding.HEXTILE
    assert viewer_encoder.levels == encoders.Levels(compression=6, quality=2)
    viewer_encoder.set_encodings((Encoding.COPY_RECT, 99))
    assert viewer_encoder.encoding == Encoding.RAW
    assert viewer_encoder.levels == encoders.Levels(compression=encoders.DEFAULT_COMPRESSION)
    assert viewer_encoder.supports(Encoding.COPY_RECT) and not viewer_encoder.supports(99 + 1)


def test_encode_refuses_what_is_not_a_framebuffer_rectangle():
    viewer_encoder = encoders.ViewerEncoder()
    with pytest.raises(ValueError):
        viewer_encoder.encode(0, 0, Image.new("L", (4, 4)))
    with pytest.raises(ValueError):
        viewer_encoder.encode(0, 0, Image.new("RGB", (0, 4)))
    with pytest.raises(ValueError):
        viewer_encoder.encode(65530, 0, Image.new("RGB", (10, 4)))


@st.composite
def pixel_formats(draw):
    """Any true-colour format that rfb.PixelFormat.check accepts."""
    bpp = draw(st.sampled_from([8, 16, 32]))
    bits = [draw(st.integers(1, 8)) for _ in range(3)]
    while sum(bits) > bpp:
        bits[bits.index(max(bits))] -= 1
    order = draw(st.permutations([0, 1, 2]))
    spare = bpp - sum(bits)
    gaps = sorted(draw(st.lists(st.integers(0, spare), min_size=3, max_size=3)))
    shifts = [0, 0, 0]
    for place, channel in enumerate(order):
        shifts[channel] = gaps[place] + sum(bits[c] for c in order[:place])
    depth = draw(st.integers(sum(bits), bpp))
    pf = PixelFormat(bpp, depth, draw(st.booleans()), True, *[(1 << b) - 1 for b in bits], *shifts)
    pf.check()
    return pf


@st.composite
def images(draw):
    width, height = draw(st.integers(1, 70)), draw(st.integers(1, 40))
    count = draw(st.sampled_from([1, 2, 3, 5, 16, 17, 130, 300]))
    seed = draw(st.integers(0, 2**16))
    rng = random.Random(seed)
    colours = [tuple(rng.randbytes(3)) for _ in range(count)]
    run = draw(st.integers(1, 9))
    data = []
    while len(data) < width * height:
        data += [rng.choice(colours)] * rng.randrange(1, run + 1)
    image = Image.new("RGB", (width, height))
    image.putdata(data[: width * height])
    return image


@settings(max_examples=150, deadline=None)
@given(pf=pixel_formats(), image=images(),
       encoding=st.sampled_from(LOSSLESS), x=st.integers(0, 130), y=st.integers(0, 100))
def test_random_images_in_random_formats(pf, image, encoding, x, y):
    viewer_encoder, decoder = viewer(encoding, pf)
    x, y = min(x, 200 - image.width), min(y, 140 - image.height)
    for _ in range(2):
        decoded, _ = send(viewer_encoder, decoder, x, y, image)
        assert decoded == rfbdecode.expected_pixels(image, pf)


def test_viewers_share_plans_but_keep_their_own_streams(monkeypatch):
    """Viewers of one display plan each rectangle once per encoding and pixel format, and each
    still decodes exactly, including one that joins late with fresh zlib streams."""
    planned = []
    for encoder in (encoders.ZrleEncoder, tight.TightEncoder, encoders.ZlibEncoder):
        monkeypatch.setattr(encoder, "plan", counting(encoder.plan, encoder, planned))
    plans = encoders.SharedPlans()
    kinds = [(Encoding.ZRLE, "32le-rgb"), (Encoding.ZRLE, "32le-rgb"), (Encoding.ZRLE, "16le-565"),
             (Encoding.TIGHT, "32le-rgb"), (Encoding.TIGHT, "32le-rgb"), (Encoding.ZLIB, "8-332")]
    viewers = [(viewer(encoding, FORMATS[name]), name) for encoding, name in kinds]
    late = viewer(Encoding.ZRLE, FORMATS["32le-rgb"])
    for generation, image in enumerate([console_image(120, 60, seed) for seed in range(1, 5)]):
        if generation == 2:
            viewers.append((late, "32le-rgb"))
        for (viewer_encoder, decoder), name in viewers:
            rects = viewer_encoder.encode(5, 7, image, (plans, generation))
            decoder.decode(b"".join(rects))
            assert decoder.crop(5, 7, 120, 60) == rfbdecode.expected_pixels(image, FORMATS[name])
    # Per generation: ZRLE in two formats, Tight, Zlib; the late viewer shares ZRLE's plan.
    assert len(planned) == 4 * 4


def counting(plan, owner, planned):
    """plan, noting each call in `planned`."""
    def counted(*args):
        planned.append(owner.__name__)
        return plan(*args)
    return staticmethod(counted)


def test_shared_plans_compute_once_across_threads_and_not_for_old_generations():
    plans, calls = encoders.SharedPlans(), []
    start = threading.Barrier(8)

    def ask():
        start.wait()
        return plans.get(3, ("key",), lambda: calls.append(3) or "plan")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: ask(), range(8)))
    assert results == ["plan"] * 8 and calls == [3]
    assert plans.get(2, ("key",), lambda: "old") == "old"
    assert plans.get(3, ("key",), lambda: "again") == "plan"
    assert plans.get(4, ("key",), lambda: "new") == "new"


def test_a_failed_plan_fails_each_viewer_that_asks_for_it():
    plans = encoders.SharedPlans()

    def broken():
        raise RuntimeError("our bug")

    for _ in range(2):
        with pytest.raises(RuntimeError, match="our bug"):
            plans.get(1, ("key",), broken)
