"""Real viewers decode every compressed encoding vncterm sends: Tight, ZRLE, Hextile and Zlib.

Our own decoder (rfbdecode.py) agrees with our encoders, but only programs written by other
people prove that we read the specification as the world does.  Each test starts vncterm with
--verbose on a console that paints coloured blocks and a few lines of coloured text, points one
third-party viewer at it with the encoding under test preferred, and checks two things:

* the picture: every block shows its colour and the cells around it stay black (peers.py's
  checks).  Where the viewer gives us exact pixels (a screenshot of TigerVNC, gtk-vnc or noVNC
  at full colour), the console must also be pixel-for-pixel the picture our minimal Raw viewer
  (rfbdecode.Client) received, text included;
* the encoding: when the viewer leaves, vncterm logs the rectangles it sent it per encoding,
  and that line must name the encoding under test and nothing else (CopyRect aside), so a
  silent fall back to Raw fails.

The viewers, each the strongest witness for some encoding: vncsnapshot (a TightVNC 1.2 code base:
ZRLE, Hextile, Zlib; its Tight decoder hangs against every server), TigerVNC's vncviewer (Tight,
ZRLE and Hextile, at full colour and in its 8-bit low-colour formats), gtk-vnc's gvncviewer
(Tight) and noVNC 1.3 in headless Chromium through websockify (Tight).  TigerVNC and gtk-vnc
also see the screen change while connected, which proves the zlib streams carry on from one
update to the next.  No viewer here decodes Zlib except vncsnapshot: TigerVNC and gtk-vnc never
implemented it, and noVNC gained it only after 1.3.

A console never shows a photograph, so Tight's JPEG is tested apart: a one-viewer server in
the test (`PhotoServer`, rfb.py and encoders.py over a socket) shows one, and TigerVNC and noVNC,
which both send a JPEG quality level, must show it close to the original.
"""

import ast
import contextlib
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

import encoders
import peers
import rfb
import rfbdecode
from chromium import Chromium
from peers import Block, free_port

PATTERN = (Block("red", 2, 1), Block("green", 72, 1), Block("blue", 2, 22))
REPAINTED = (Block("red", 40, 10), Block("green", 2, 22), Block("blue", 72, 1))
TEXT = (r"\033[6;1H\033[1;33mTight \033[32mZRLE \033[36mHextile \033[35mZlib\033[0m plain text"
        r"\033[7;1H\033[34mdrwxr-xr-x\033[0m 2 root root 4096 \033[1;34mbin\033[0m 0123456789"
        r"\033[8;1H\033[7m reverse video \033[0m \033[4munderlined\033[0m ~!@#$%%^&*()_+{}|:<>?")
SENT = re.compile(r"viewer \S+ disconnected; rects sent: (\{.*\})")
NOVNC = Path("/usr/share/novnc")
RETURN = 0xFF0D
FIRST_PICTURE = 40  # seconds for a viewer to start and draw, generous for a loaded machine


def paint(blocks):
    """Shell lines that paint the blocks and the coloured text, then park the cursor."""
    return [peers.paint_command(blocks), f"printf '{TEXT}\\033[12;1H'"]


@pytest.fixture
def console(start_vncterm, artifacts):
    """vncterm --verbose showing PATTERN, then REPAINTED once a line is typed."""
    script = artifacts / "console.sh"
    script.write_text("\n".join(
        [*paint(PATTERN), "IFS= read -r line", *paint(REPAINTED), "exec cat > /dev/null"]) + "\n")
    return start_vncterm(f"sh {script}", options=["--verbose"])


def rects_sent(server):
    """One dict per viewer that has left: rectangles vncterm sent it, per encoding."""
    return [ast.literal_eval(m[1]) for m in SENT.finditer(peers.read_text(server.log_path))]


def assert_sent_only(server, encoding):
    """Wait for a viewer that was sent `encoding` to leave; it must have been sent nothing else."""
    found = peers.wait_until(
        lambda: [sent for sent in rects_sent(server) if encoding in sent], timeout=10)
    assert found, f"no viewer was sent {encoding!r}; log:\n{server.report()}"
    for sent in found:
        assert set(sent) <= {encoding, "copy_rect"}, sent


class RawViewer:
    """Our own minimal viewer, asking for Raw only: the reference picture, and a keyboard."""

    def __init__(self, server):
        self.client = rfbdecode.Client("127.0.0.1", server.port)
        self.client.set_encodings([rfbdecode.RAW])
        self.client.request(0)
        self.client.update()

    def picture(self, blocks):
        """Take updates until the picture shows the blocks; return it."""
        for _ in range(50):
            image = self.client.decoder.image()
            if not peers.framebuffer_errors(image, blocks):
                return image
            self.client.request(1)
            self.client.update()
        raise AssertionError(f"the Raw picture never showed {blocks}")

    def press_return(self):
        self.client.key(RETURN)

    def close(self):
        self.client.close()


def exact_errors(shot, blocks, reference):
    """Pattern errors in a screenshot, then any pixel where its console differs from reference."""
    errors = peers.screenshot_errors(shot, blocks)
    if errors:
        return errors
    marker = next(block for block in blocks if block.colour == "red")
    box = tuple(round(edge) for edge in peers.find_console(shot, marker))
    console = shot.crop(box)
    if console.size != reference.size:
        return [f"the console is {console.size}, the framebuffer {reference.size}"]
    differ = ImageChops.difference(console, reference).getbbox()
    return [f"pixels differ from the Raw picture within {differ}"] if differ else []


def watch_updates(xvfb, console, viewer, name):
    """The viewer shows both pictures exactly as Raw does, across an update, then leaves."""
    # gvncviewer asks for exclusive access, which drops the viewers already there: so our Raw
    # viewer connects only once the viewer under test shows the console.
    assert peers.until_no_errors(lambda: peers.screenshot_errors(
        xvfb.screenshot(f"{name}-first"), PATTERN), timeout=FIRST_PICTURE) == []
    raw = RawViewer(console)
    try:
        first = raw.picture(PATTERN)
        assert peers.until_no_errors(
            lambda: exact_errors(xvfb.screenshot(f"{name}-first"), PATTERN, first)) == []
        raw.press_return()
        second = raw.picture(REPAINTED)
        assert peers.until_no_errors(
            lambda: exact_errors(xvfb.screenshot(f"{name}-repainted"), REPAINTED, second)) == []
    finally:
        raw.close()
    viewer.terminate()
    viewer.wait(10)


@pytest.mark.parametrize("encoding", ["zrle", "hextile", "zlib"])
def test_vncsnapshot_decodes(console, artifacts, encoding):
    peers.require("vncsnapshot")
    path = artifacts / f"vncsnapshot-{encoding}.jpg"

    def capture():
        peers.run(["vncsnapshot", "-quiet", "-encodings", encoding, console.address, str(path)])
        return peers.framebuffer_errors(peers.load_rgb(path), PATTERN)

    assert peers.until_no_errors(capture) == []
    assert_sent_only(console, encoding)


@pytest.mark.parametrize("encoding", ["Tight", "ZRLE", "Hextile"])
def test_tigervnc_decodes_at_full_colour(console, xvfb, encoding):
    peers.require("vncviewer")
    viewer = xvfb.start(["vncviewer", f"PreferredEncoding={encoding}", "AutoSelect=0", "Shared=1",
                         console.address], "vncviewer")
    watch_updates(xvfb, console, viewer, "vncviewer")
    assert_sent_only(console, encoding.lower())


@pytest.mark.parametrize("encoding, level", [("Tight", 0), ("ZRLE", 1), ("Hextile", 2),
                                             ("Tight", 2)])
def test_tigervnc_decodes_in_8_bit_colour(console, xvfb, encoding, level):
    """LowColorLevel 0, 1, 2 are 8-bit formats with 1, 2 and 3/3/2 bits per channel."""
    peers.require("vncviewer")
    viewer = xvfb.start(["vncviewer", f"PreferredEncoding={encoding}", "AutoSelect=0", "Shared=1",
                         "FullColor=0", f"LowColorLevel={level}", console.address], "vncviewer")
    assert peers.until_no_errors(lambda: peers.screenshot_errors(
        xvfb.screenshot("vncviewer"), PATTERN), timeout=FIRST_PICTURE) == []
    viewer.terminate()
    viewer.wait(10)
    assert_sent_only(console, encoding.lower())


def test_gvncviewer_decodes_tight(console, xvfb):
    peers.require("gvncviewer")
    # gvncviewer only takes host:display, that is port 5900 + display.
    assert console.port > 5900
    viewer = xvfb.start(["gvncviewer", f"127.0.0.1:{console.port - 5900}"], "gvncviewer")
    watch_updates(xvfb, console, viewer, "gvncviewer")
    assert_sent_only(console, "tight")


@contextlib.contextmanager
def novnc(artifacts, tmp_path, target_port):
    """noVNC in headless Chromium, through websockify, connected to target_port.

    Yields a function that saves the page as a PNG under artifacts and returns it as an image;
    the caller polls it until the picture it expects shows (noVNC draws when its data arrives).
    """
    for peer in ("chromium", "websockify"):
        peers.require(peer)
    peers.require("novnc", NOVNC.is_dir())
    port = free_port()
    with open(artifacts / "websockify.log", "ab") as log:
        proxy = subprocess.Popen(
            ["websockify", "--web", str(NOVNC), f"127.0.0.1:{port}", f"127.0.0.1:{target_port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    browser = None
    try:
        assert peers.wait_until(lambda: peers.accepts(port), 20), "websockify never listened"
        browser = Chromium(artifacts, tmp_path / "chromium-profile")
        browser.open(f"http://127.0.0.1:{port}/vnc.html?autoconnect=1&host=127.0.0.1&port={port}")
        yield lambda name: browser.screenshot(artifacts / name)
    finally:
        if browser is not None:
            browser.close()
        peers.stop_process(proxy, group=True)





def test_novnc_decodes_tight(console, artifacts, tmp_path):
    """noVNC lists Tight first whatever it is told; it has no Zlib or ZRLE decoder in 1.3."""
    raw = RawViewer(console)
    reference = raw.picture(PATTERN)
    raw.close()
    with novnc(artifacts, tmp_path, console.port) as screenshot:
        assert peers.until_no_errors(lambda: exact_errors(
            screenshot("novnc.png"), PATTERN, reference), timeout=FIRST_PICTURE) == []
    assert_sent_only(console, "tight")


def photograph(width=320, height=200):
    """Gradients and noise, thousands of colours, with a pure red landmark near its top left."""
    noise = Image.effect_noise((width, height), 12)
    across = Image.linear_gradient("L").rotate(90).resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    image = Image.merge(
        "RGB", (ImageChops.add(across, noise), radial, ImageChops.add(radial, noise)))
    image.paste((255, 0, 0), PHOTO_MARKER)
    return image


PHOTO_MARKER = (20, 20, 60, 40)


class PhotoServer:
    """An RFB server for one viewer at a time, in a thread, showing a photograph encoded by
    encoders.py; `error` is the last viewer's."""

    def __init__(self, image):
        self.image = image
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.jpeg_rects = 0
        self.error = None
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.error = None
            try:
                with connection:
                    self.handshake(connection)
                    self.answer(connection)
            except Exception as error:  # reported by the test, which owns the assertion
                self.error = error

    def handshake(self, connection):
        connection.sendall(rfb.SERVER_VERSION)
        version = rfb.parse_client_version(peers.recv_exactly(connection, 12, "viewer"))
        connection.sendall(rfb.security_offer(version, [rfb.SecurityType.NONE]))
        if version != rfb.VERSION_3_3:
            rfb.parse_security_choice(peers.recv_exactly(connection, 1, "viewer"),
                                      [rfb.SecurityType.NONE])
        if rfb.needs_security_result(version, rfb.SecurityType.NONE):
            connection.sendall(rfb.security_result(version, True))
        peers.recv_exactly(connection, 1, "viewer")
        width, height = self.image.size
        connection.sendall(rfb.server_init(width, height, rfb.DEFAULT_PIXEL_FORMAT, "photo"))

    def answer(self, connection):
        """Serve the photograph for each full update request until the viewer leaves."""
        reader, viewer = rfb.ClientReader(), encoders.ViewerEncoder()
        while data := connection.recv(65536):
            reader.feed(data)
            while (message := reader.next_message()) is not None:
                if isinstance(message, rfb.SetPixelFormat):
                    viewer.set_pixel_format(message.pixel_format)
                elif isinstance(message, rfb.SetEncodings):
                    viewer.set_encodings(message.encodings)
                elif isinstance(message, rfb.FramebufferUpdateRequest) and not message.incremental:
                    rects = viewer.encode(0, 0, self.image)
                    self.jpeg_rects += sum(rect[12] >> 4 == 9 for rect in rects)
                    connection.sendall(rfb.framebuffer_update(rects))

    def close(self):
        self.listener.close()
        self.thread.join(10)


def photo_errors(shot, photo):
    """Find the photograph in a screenshot by its red landmark; it must be close to the original."""
    red, green, blue = shot.split()
    mask = ImageChops.multiply(red.point(lambda v: 255 if v > 200 else 0),
                               ImageChops.invert(ImageChops.lighter(green, blue)).point(
                                   lambda v: 255 if v > 200 else 0))
    box = mask.getbbox()
    if box is None:
        return ["the photograph's red landmark is not on the screen"]
    left, top = box[0] - PHOTO_MARKER[0], box[1] - PHOTO_MARKER[1]
    shown = shot.crop((left, top, left + photo.width, top + photo.height))
    error = max(ImageStat.Stat(ImageChops.difference(shown, photo)).mean)
    return [] if error < 12 else [f"the photograph is shown with a mean error of {error:.1f}"]


@pytest.fixture
def photo_server():
    server = PhotoServer(photograph())
    yield server
    server.close()


def test_tigervnc_decodes_tight_jpeg(photo_server, xvfb):
    peers.require("vncviewer")
    viewer = xvfb.start(["vncviewer", "PreferredEncoding=Tight", "AutoSelect=0", "QualityLevel=6",
                         f"127.0.0.1::{photo_server.port}"], "vncviewer")
    errors = peers.until_no_errors(lambda: photo_errors(
        xvfb.screenshot("vncviewer-photo"), photo_server.image), timeout=FIRST_PICTURE)
    viewer.terminate()
    viewer.wait(10)
    assert errors == [] and photo_server.error is None
    assert photo_server.jpeg_rects > 0


def test_novnc_decodes_tight_jpeg(photo_server, artifacts, tmp_path):
    with novnc(artifacts, tmp_path, photo_server.port) as screenshot:
        assert peers.until_no_errors(lambda: photo_errors(
            screenshot("novnc-photo.png"), photo_server.image), timeout=FIRST_PICTURE) == []
    assert photo_server.jpeg_rects > 0 and photo_server.error is None
