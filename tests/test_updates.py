"""updates.py without sockets: what a viewer is sent, band by band, and where flow control stops.

The display here is a picture with a damage log (damage.py), as both real displays are, so a
test can change it between requests and know exactly what changed.  The bytes are read back
with tests/rfbdecode.py, written from the protocol description rather than from our encoders:
the FramebufferUpdate header's rectangle count, every rectangle and the LastRect must agree.
Flow control goes through the session's own `flush` with a socket whose `send` takes nothing,
so "the socket is full" is a fact of the test, not a guess about TCP's buffers.
"""

import socket
import struct
import types

import pytest
from PIL import Image

import damage
import encoders
import rfb
import updates
import viewer
from rfbdecode import BytesReader, Decoder, expected_pixels, u8, u16

RAW, TIGHT, LAST_RECT, DESKTOP_SIZE = 0, 7, -224, -223
BIG = (4096, 4096)


class Picture:
    """A display made of one picture and its damage log (the interface vncterm.py lists)."""

    def __init__(self, width, height, colour=(0, 0, 0)):
        self.size = (width, height)
        self.image = Image.new("RGB", self.size, colour)
        self.damage = damage.DamageLog(self.size)
        self.plans = encoders.SharedPlans()
        self.listeners = set()
        self.bells = 0
        self.cut_text = (0, "")
        self.cursor = None
        self.extended_keys = False
        self.led_state = None
        self.absolute_pointer = True

    def changes(self, token, copy_rect=True):
        return self.damage.changes(token, self.image, copy_rect)

    def paint(self, box, colour):
        """Fill box = (x, y, w, h) with colour and record it as one generation of damage."""
        x, y, width, height = box
        self.image.paste(colour, (x, y, x + width, y + height))
        self.damage.record(0, [box])


def viewer_of(display, *encodings):
    """Updates for a viewer at the display's size that listed `encodings`."""
    encoder = encoders.ViewerEncoder()
    encoder.set_encodings(encodings)
    return updates.Updates(display, encoder, display.size)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FullSocket(socket.socket):
    """A socket whose send buffer is full for good: `send` takes nothing."""

    def send(self, data, flags=0):
        return 0


def take_everything(outbox, update):
    """Drain the outbox as a fast viewer would; return the bytes and the most ever queued."""
    data, peak = bytearray(), 0
    outbox.fill(update)
    while outbox:
        peak = max(peak, len(outbox))
        data += outbox.head(len(outbox))
        outbox.sent(len(outbox))
        outbox.fill(update)
    return bytes(data), peak


def read_update(read, decoder):
    """Decode one FramebufferUpdate from read(n); return its rectangles' encodings in order."""
    assert u8(read) == 0
    read(1)
    count = u16(read)
    encodings = []
    while len(encodings) < count:
        header = read(12)
        encoding = struct.unpack(">i", header[8:])[0]
        encodings.append(encoding)
        if encoding == LAST_RECT:
            assert header[:8] == bytes(8) and count == 0xFFFF
            break
        pending = [header]
        decoder.read_rect(lambda size, pending=pending: pending.pop() if pending else read(size))
    return encodings


def test_updates_stop_at_one_frame_queued():
    """A viewer that asks and never reads: once the socket takes nothing, one frame waits, no
    more is encoded however often it asks and the picture changes, and it goes at the stall."""
    display = Picture(640, 400)
    clock = Clock()
    sock = FullSocket()
    try:
        session = types.SimpleNamespace(sock=sock, outbox=updates.Outbox(clock),
                                        updates=viewer_of(display, RAW))
        session.updates.request(incremental=False)
        viewer.ViewerSession.flush(session)
        queued, sent = len(session.outbox), dict(session.updates.encoder.sent)
        assert queued == 4 + 12 + 640 * 400 * 4 and sent == {"raw": 1}
        for n in range(10):
            display.paint((0, 10 * n, 640, 10), (n, 100, 200))
            session.updates.request(incremental=True)
            clock.now += 1
            viewer.ViewerSession.flush(session)
        assert (len(session.outbox), dict(session.updates.encoder.sent)) == (queued, sent)
        clock.now += updates.WRITE_STALL_TIMEOUT
        with pytest.raises(updates.ViewerGone, match="not reading"):
            viewer.ViewerSession.flush(session)
    finally:
        sock.close()


def test_a_16m_pixel_raw_frame_is_queued_a_band_at_a_time():
    """4096x4096 in Raw is 64 MiB: a viewer that reads holds one band queued, never the frame."""
    display = Picture(*BIG)
    display.paint((0, 0, 4096, 4096), (200, 100, 50))
    display.paint((4064, 4064, 32, 32), (10, 20, 30))
    update = viewer_of(display, RAW)
    update.request(incremental=False)
    data, peak = take_everything(updates.Outbox(), update)
    band = updates.BAND_PIXELS * 4
    assert peak <= updates.SOFT_OUTBOX + band + 16
    kind, count = struct.unpack_from(">BxH", data)
    assert (kind, count) == (0, 4096 * 4096 // updates.BAND_PIXELS)
    offset, top = 4, 0
    pixel = {(200, 100, 50): bytes([50, 100, 200, 0]), (10, 20, 30): bytes([30, 20, 10, 0])}
    for _ in range(count):
        x, y, width, height, encoding = struct.unpack_from(">HHHHi", data, offset)
        assert (x, y, width, encoding) == (0, top, 4096, RAW)
        offset += 12
        rows = data[offset : offset + width * height * 4]
        offset += width * height * 4
        assert rows[:4] == pixel[200, 100, 50] and rows[-4:] == pixel[
            (10, 20, 30) if top + height == 4096 else (200, 100, 50)]
        top += height
    assert (top, offset) == (4096, len(data))


def test_a_viewer_that_stops_reading_mid_frame_holds_only_a_band():
    """The frame pauses where the queue is full and goes on where it drained."""
    display = Picture(*BIG)
    sock = FullSocket()
    try:
        session = types.SimpleNamespace(sock=sock, outbox=updates.Outbox(),
                                        updates=viewer_of(display, RAW))
        session.updates.request(incremental=False)
        viewer.ViewerSession.flush(session)
        assert updates.SOFT_OUTBOX < len(session.outbox) <= (
            updates.SOFT_OUTBOX + updates.BAND_PIXELS * 4 + 16)
        assert session.outbox.frame is not None
    finally:
        sock.close()


def decoded(display, update, encoding_names):
    """Every update the viewer is owed, decoded; the decoder and each update's encodings."""
    width, height = display.size
    decoder = Decoder(width, height, rfb.DEFAULT_PIXEL_FORMAT)
    data, _ = take_everything(updates.Outbox(), update)
    read, frames = BytesReader(data), []
    while read.left:
        frames.append(read_update(read, decoder))
    assert set(update.encoder.sent) <= encoding_names
    return decoder, frames


def stripes(width, height):
    """A picture of coloured stripes and a photograph-like corner, for Tight to split."""
    display = Picture(width, height)
    for n in range(0, height, 7):
        display.paint((0, n, width, 3), (n % 256, 255 - n % 256, 80))
    noise = Image.effect_noise((64, 64), 80).convert("RGB")
    display.image.paste(noise, (width - 64, height - 64))
    display.damage.record(0, [(width - 64, height - 64, 64, 64)])
    return display


@pytest.mark.parametrize("last_rect", [True, False])
def test_tight_frames_in_bands_count_their_rectangles(monkeypatch, last_rect):
    """Tight makes as many rectangles as a band needs: with LastRect the header says 0xFFFF
    and a LastRect ends the update; without it the count is exact."""
    monkeypatch.setattr(updates, "BAND_PIXELS", 16 * 200)
    display = stripes(200, 300)
    listed = (TIGHT, LAST_RECT) if last_rect else (TIGHT,)
    update = viewer_of(display, *listed)
    update.request(incremental=False)
    decoder, (frame,) = decoded(display, update, {"tight"})
    assert (frame[-1] == LAST_RECT) == last_rect
    assert frame.count(TIGHT) > 300 // 16
    assert decoder.crop(0, 0, 200, 300) == expected_pixels(display.image, rfb.DEFAULT_PIXEL_FORMAT)


def test_a_frame_in_progress_is_finished_before_a_switch_shows():
    """A VT switch mid-frame: the rest of the old frame's bands, then the resize, then the new
    display, all in order and all decodable."""
    big, small = Picture(2048, 1024, (0, 0, 255)), Picture(640, 400, (255, 0, 0))
    big.paint((0, 0, 2048, 1024), (0, 0, 255))
    update = viewer_of(big, RAW, DESKTOP_SIZE)
    update.request(incremental=False)
    outbox = updates.Outbox()
    outbox.fill(update)
    assert outbox.frame is not None
    update = update.switched(small)
    update.request(incremental=True)
    data, _ = take_everything(outbox, update)
    read = BytesReader(data)
    frames = [read_update(read, Decoder(2048, 1024, rfb.DEFAULT_PIXEL_FORMAT))]
    assert struct.unpack(">BxHHHHHi", read(16)) == (0, 1, 0, 0, 640, 400, DESKTOP_SIZE)
    decoder = Decoder(640, 400, rfb.DEFAULT_PIXEL_FORMAT)
    frames.append(read_update(read, decoder))
    assert not read.left
    assert frames == [[RAW] * 8, [RAW]]
    assert decoder.crop(0, 0, 640, 400) == expected_pixels(small.image, rfb.DEFAULT_PIXEL_FORMAT)


def test_a_bell_during_a_frame_waits_for_its_end():
    """Messages that need no request never land between a frame's rectangles."""
    display = Picture(2048, 1024)
    update = viewer_of(display, RAW)
    update.request(incremental=False)
    outbox = updates.Outbox()
    outbox.fill(update)
    display.bells += 1
    outbox.add(update.notifications())
    data, _ = take_everything(outbox, update)
    read = BytesReader(data)
    assert read_update(read, Decoder(2048, 1024, rfb.DEFAULT_PIXEL_FORMAT)) == [RAW] * 8
    assert read(read.left) == rfb.bell()


@pytest.mark.parametrize("encoding", [RAW, 5, 6, 16], ids=["raw", "hextile", "zlib", "zrle"])
def test_banded_frames_state_their_rectangle_count_up_front(monkeypatch, encoding):
    """One rectangle per band: the header's count is exact, and the bands decode to the picture
    (a 200-pixel-wide picture of 300 rows is 18 bands of 16 rows and one of 12)."""
    monkeypatch.setattr(updates, "BAND_PIXELS", 16 * 200)
    display = stripes(200, 300)
    update = viewer_of(display, encoding)
    update.request(incremental=False)
    names = {RAW: "raw", 5: "hextile", 6: "zlib", 16: "zrle"}
    decoder, (frame,) = decoded(display, update, {names[encoding]})
    assert frame == [encoding] * 19
    assert decoder.crop(0, 0, 200, 300) == expected_pixels(display.image, rfb.DEFAULT_PIXEL_FORMAT)


def test_a_tight_frame_of_one_band_counts_its_rectangles():
    """A frame that fits in one band goes as it always did: an exact count, no LastRect."""
    display = stripes(200, 100)
    update = viewer_of(display, TIGHT, LAST_RECT)
    update.request(incremental=False)
    _, (frame,) = decoded(display, update, {"tight"})
    assert frame and set(frame) == {TIGHT}


def test_messages_piling_up_behind_a_stalled_frame_count_towards_the_cap(monkeypatch):
    """A viewer stalled mid-frame while the guest sends clipboard after clipboard: the bytes
    waiting for the frame's end count, so it is dropped at HARD_OUTBOX like any non-reader."""
    monkeypatch.setattr(updates, "HARD_OUTBOX", 4 * 1024 * 1024)
    display = Picture(*BIG)
    update = viewer_of(display, RAW)
    update.request(incremental=False)
    outbox = updates.Outbox()
    outbox.fill(update)
    text = "x" * rfb.CUT_TEXT_LIMIT
    with pytest.raises(updates.ViewerGone, match="queued and not read"):
        for serial in range(1, 100):
            display.cut_text = (serial, text)
            outbox.add(update.notifications())
            outbox.fill(update)
            outbox.check()


def test_set_encodings_and_pixel_format_mid_frame_apply_from_the_next_frame():
    """TigerVNC changes encoding and pixel format on the fly: a banded frame keeps the ones
    it started with, so its count and its pixels stay right, and the next frame follows."""
    display = Picture(2048, 1024, (10, 200, 30))
    update = viewer_of(display, RAW)
    update.request(incremental=False)
    outbox = updates.Outbox()
    outbox.fill(update)
    update.encoder.set_encodings((TIGHT, LAST_RECT))
    update.encoder.set_pixel_format(rfb.PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0))
    display.paint((0, 0, 2048, 1024), (200, 10, 30))
    update.request(incremental=True)
    data, _ = take_everything(outbox, update)
    read = BytesReader(data)
    assert read_update(read, Decoder(2048, 1024, rfb.DEFAULT_PIXEL_FORMAT)) == [RAW] * 8
    frame = read_update(read, Decoder(2048, 1024, update.encoder.pixel_format))
    assert set(frame) == {TIGHT, LAST_RECT} and not read.left
