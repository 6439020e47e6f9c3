"""Hostile bytes from every side, and peers that vanish at the worst moment.

Fuzzing (hypothesis).  Every reader that takes bytes from someone else is fed three kinds of
input: well-formed streams built from the spec, the same streams with a few bytes flipped,
inserted, deleted or cut off, and plain random bytes.  The property is always the same: the
peer's mistakes end in `rfb.ProtocolError` (or, on a socket, a closed connection), never in any
other exception, a hang, or memory that grows with the input; and readers give the same result
however the bytes are split.  Targets, each with its own example budget:

    rfb.ClientReader            what a viewer sends after the handshake
    rfbclient.ServerReader      what a guest server sends, drawn into a DesktopDisplay
    vncproxy.Upstream           a whole guest connection, handshake first, on a real socket
    viewer handshake, open      a live server without a password: a valid handshake, then
                                mutated client messages, while another viewer keeps watching
    viewer handshake, locked    a live server with a password and VeNCrypt TLS: mutated and
                                random handshakes, while an authenticated viewer keeps watching
    the console                 Console.feed, take_frame and Renderer.apply on hostile output:
                                huge CSI parameters, thousands of parameters, OSC titles,
                                lines of wide characters, modes and resets

Coverage-guided fuzzing (atheris, libFuzzer for Python, where it installs: the Makefile tries).
tests/atheris_targets.py runs the viewer reader, the guest reader and the console under
libFuzzer's byte mutations, which steer towards branches not yet reached; each target runs in
a subprocess for a fixed number of inputs, and a crash or a hang fails the test.

`FUZZ_SCALE=N` multiplies every budget and the number of comings and goings (`make fuzz` runs
with a large N and no time limit).

Faults.  A viewer that disconnects half-way through an update (plain and TLS), a guest that
disconnects half-way through a rectangle, a hundred guest desktops and a hundred viewers coming
and going (threads and file descriptors counted before and after, and every key or button a
departing viewer held released on the guest), a viewer flooding keys and pointer while another
one works, and the per-viewer output cap: updates stop with one frame queued, the connection is
dropped once several frames' worth pile up.

"""

import collections
import contextlib
import logging
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import auth
import console
import encoders
import render
import rfb
import rfbclient
import terminal
import updates
import vncproxy
from harness import Harness, Proxy, follow, open_fds, server_image, server_tls, settle
from peers import ARTIFACTS, require, wait_until
from rawviewer import RAW, Client, SecureClient, client_tls

SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
CYCLES = 100 * SCALE
PASSWORD = b"fuzzpass"


def budget(examples):
    return settings(max_examples=examples * SCALE, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- Watching for our own bugs and for memory ---------------------------------------------------


class InternalErrors(logging.Handler):
    """Collects the log records that mean "our bug": those with a traceback."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        if record.exc_info:
            self.records.append(self.format(record))


@pytest.fixture(scope="module")
def internal_errors():
    handler = InternalErrors()
    logger = logging.getLogger("vncterm")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


@pytest.fixture(autouse=True)
def no_internal_errors(internal_errors):
    internal_errors.clear()
    yield
    assert internal_errors == [], "\n".join(internal_errors)


@pytest.fixture(scope="module", autouse=True)
def memory_report():
    """Write the process's peak resident size after these tests to artifacts/fuzz-memory.txt."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "fuzz-memory.txt").write_text(
        f"peak RSS before the fuzz tests: {before / 1024:.1f} MiB\n"
        f"peak RSS after the fuzz tests: {after / 1024:.1f} MiB\n")


@contextlib.contextmanager
def peak_allocation():
    """Yield a dict; on exit its "peak" is the most Python memory allocated in the block."""
    result = {}
    tracemalloc.start()
    try:
        yield result
    finally:
        result["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# --- Strategies -----------------------------------------------------------------------------------

u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
s32 = st.integers(-(2**31), 2**31 - 1)


@st.composite
def mutated(draw, streams):
    """A stream from `streams` with up to four bytes flipped, set, inserted or deleted, or cut."""
    data = bytearray(draw(streams))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        if kind in ("flip", "set") and position < len(data):
            data[position] = (data[position] ^ 1 << draw(st.integers(0, 7)) if kind == "flip"
                              else draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF])))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[position:position + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[position:]
    return bytes(data)


def hostile(streams, random_size=300):
    return st.one_of(streams, mutated(streams), st.binary(max_size=random_size))


SANE_FORMATS = [rfb.DEFAULT_PIXEL_FORMAT.to_bytes(),
                struct.pack(">BBBBHHHBBB3x", 16, 16, 1, 1, 31, 63, 31, 11, 5, 0),
                struct.pack(">BBBBHHHBBB3x", 8, 8, 0, 1, 7, 7, 3, 5, 2, 0)]
pixel_formats = st.one_of(st.sampled_from(SANE_FORMATS), st.binary(min_size=16, max_size=16))
screens = st.tuples(u32, u16, u16, u16, u16, u32).map(lambda s: struct.pack(">IHHHHI", *s))


@st.composite
def extended_clipboard(draw, kind):
    """An Extended Clipboard message of type `kind`: caps, request, peek, notify or provide."""
    action = draw(st.sampled_from([1 << 24, 1 << 25, 1 << 26, 1 << 27, 1 << 28, 0]))
    formats = draw(st.sampled_from([1, 0, 3, 0x1F, 0xFFFF]))
    if action == 1 << 24:
        data = b"".join(struct.pack(">I", draw(u32)) for _ in range(bin(formats).count("1")))
    elif action == 1 << 28:
        text = draw(st.text(max_size=40)).encode("utf-8", "surrogatepass") + b"\0"
        data = zlib.compress(struct.pack(">I", draw(st.sampled_from([len(text), draw(u32)])))
                             + text)
    else:
        data = b""
    body = struct.pack(">I", action | formats) + data
    return struct.pack(">B3xi", kind, -len(body)) + body


client_message = st.one_of(
    pixel_formats.map(lambda f: struct.pack(">B3x", 0) + f),
    st.lists(s32, max_size=40).map(lambda e: struct.pack(f">BxH{len(e)}i", 2, len(e), *e)),
    st.tuples(st.booleans(), u16, u16, u16, u16).map(lambda m: struct.pack(">BBHHHH", 3, *m)),
    st.tuples(st.booleans(), u32).map(lambda m: struct.pack(">BBxxI", 4, *m)),
    st.tuples(u8, u16, u16).map(lambda m: struct.pack(">BBHH", 5, *m)),
    st.binary(max_size=300).map(lambda text: struct.pack(">B3xI", 6, len(text)) + text),
    extended_clipboard(6),
    st.tuples(u16, u16, st.lists(screens, max_size=20)).map(
        lambda m: struct.pack(">BxHHBx", 251, m[0], m[1], len(m[2])) + b"".join(m[2])),
    st.tuples(st.sampled_from([0, 0, 1]), u16, u32, u32).map(
        lambda m: struct.pack(">BBHII", 255, *m)),
)
client_streams = st.lists(client_message, max_size=12).map(b"".join)


def rect(x, y, width, height, encoding, payload=b""):
    return struct.pack(">HHHHi", x, y, width, height, encoding) + payload


FB = 16  # the fuzzed guest framebuffer is FB x FB
coordinate = st.one_of(st.integers(0, FB + 2), u16)


@st.composite
def guest_rect(draw):
    x, y = draw(coordinate), draw(coordinate)
    width, height = draw(st.integers(0, FB + 2)), draw(st.integers(0, FB + 2))
    encoding = draw(st.sampled_from([0, 0, 1, -223, -308, -239, 5, 16, -1, -257, -258, -261]))
    if encoding == 0:
        payload = draw(st.binary(min_size=4 * width * height, max_size=4 * width * height))
    elif encoding == 1:
        payload = struct.pack(">HH", draw(coordinate), draw(coordinate))
    elif encoding == -308:
        count = draw(st.integers(0, 3))
        payload = struct.pack(">B3x", count) + b"".join(draw(screens) for _ in range(count))
        y = draw(st.sampled_from([0, 0, 1]))
    elif encoding == -239:
        payload = bytes(4 * width * height + (width + 7) // 8 * height)
    elif encoding == -261:
        payload = bytes([draw(u8)])
    elif encoding in (-257, -258):
        payload = b""
    else:
        payload = draw(st.binary(max_size=16))
    return rect(x, y, width, height, encoding, payload)


guest_message = st.one_of(
    st.lists(guest_rect(), max_size=4).map(
        lambda rects: struct.pack(">BxH", 0, len(rects)) + b"".join(rects)),
    st.just(b"\x02"),
    st.binary(max_size=200).map(lambda text: struct.pack(">B3xI", 3, len(text)) + text),
    extended_clipboard(3),
    u8.map(lambda kind: bytes([kind])),
)
guest_streams = st.lists(guest_message, max_size=8).map(b"".join)

cuts = st.lists(st.integers(1, 64), max_size=20)


def pieces(data, sizes):
    """`data` cut into pieces of the given sizes, the rest in one piece."""
    offset = 0
    for size in sizes:
        yield data[offset:offset + size]
        offset += size
    yield data[offset:]


# --- rfb.ClientReader --------------------------------------------------------------------------

CLIENT_MESSAGE_TYPES = (rfb.SetPixelFormat, rfb.SetEncodings, rfb.FramebufferUpdateRequest,
                        rfb.KeyEvent, rfb.PointerEvent, rfb.ClientCutText, rfb.SetDesktopSize,
                        rfb.ExtendedClipboard, rfb.QemuExtendedKeyEvent)


def read_client(data, sizes, extended_clipboard=False):
    """(messages, error) from feeding `data` to a ClientReader in pieces of `sizes`."""
    reader, messages = rfb.ClientReader(), []
    reader.extended_clipboard = extended_clipboard
    try:
        for piece in pieces(data, sizes):
            reader.feed(piece)
            while (message := reader.next_message()) is not None:
                messages.append(message)
    except rfb.ProtocolError as error:
        return messages, str(error)
    return messages, None


@budget(1500)
@given(hostile(client_streams), cuts, st.booleans())
def test_client_reader(data, sizes, extended_clipboard):
    messages, error = read_client(data, [len(data)], extended_clipboard)
    assert read_client(data, sizes, extended_clipboard) == (messages, error)
    for message in messages:
        assert isinstance(message, CLIENT_MESSAGE_TYPES)
        if isinstance(message, rfb.ClientCutText):
            assert len(message.text) <= rfb.CUT_TEXT_LIMIT
        if isinstance(message, rfb.ExtendedClipboard) and message.text is not None:
            assert len(message.text) <= rfb.CUT_TEXT_LIMIT
        if isinstance(message, rfb.SetPixelFormat):
            message.pixel_format.check()
        if isinstance(message, rfb.SetDesktopSize):
            assert 1 <= len(message.screens) <= rfb.MAX_SCREENS


def test_client_cut_text_is_capped_as_it_streams():
    reader = rfb.ClientReader()
    reader.feed(struct.pack(">B3xI", 6, 0x7FFFFFFF))
    chunk = b"x" * 65536
    with peak_allocation() as memory:
        for _ in range(128):
            reader.feed(chunk)
            assert reader.next_message() is None
    assert memory["peak"] < rfb.CUT_TEXT_LIMIT + 4 * len(chunk)


def test_set_encodings_at_its_largest():
    encodings = list(range(-32768, 32767))
    reader = rfb.ClientReader()
    reader.feed(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))
    message = reader.next_message()
    assert message == rfb.SetEncodings(tuple(encodings))
    session = encoders.ViewerEncoder()
    session.set_encodings(message.encodings)
    assert session.supports(rfb.Encoding.RAW)


# --- rfbclient.ServerReader into a DesktopDisplay ------------------------------------------------


class Sink:
    """An Upstream that only keeps what the display sends the guest (clipboard answers)."""

    def __init__(self):
        self.sent = b""

    def send(self, data):
        self.sent += data


def read_guest(data, sizes):
    """(events, error) from a ServerReader fed in pieces, each event drawn into a display."""
    reader = rfbclient.ServerReader(FB, FB)
    display = vncproxy.DesktopDisplay(FB, FB, upstream=Sink())
    events = []
    try:
        for piece in pieces(data, sizes):
            reader.feed(piece)
            while (event := reader.next_event()) is not None:
                check_guest_event(event, display.size)
                display.apply(event)
                events.append(event)
    except rfb.ProtocolError as error:
        return events, str(error)
    return events, None


def check_guest_event(event, size):
    width, height = size
    if isinstance(event, rfbclient.RawRows):
        rows = len(event.data) // (4 * event.width)
        assert event.x + event.width <= width and event.y + rows <= height
    elif isinstance(event, rfbclient.CopyRect):
        assert event.x + event.width <= width and event.y + event.height <= height
        assert event.src_x + event.width <= width and event.src_y + event.height <= height
    elif isinstance(event, rfbclient.DesktopResize):
        rfbclient.check_desktop_size(event.width, event.height)
    elif isinstance(event, rfbclient.ServerCutText):
        assert len(event.text) <= rfb.CUT_TEXT_LIMIT
    elif isinstance(event, rfb.ExtendedClipboard) and event.text is not None:
        assert len(event.text) <= rfb.CUT_TEXT_LIMIT


def raw_pixels(events):
    """What the Raw rows paint, pixel by pixel: the same however they were split."""
    painted = []
    for event in events:
        if isinstance(event, rfbclient.RawRows):
            for offset in range(0, len(event.data), 4 * event.width):
                painted.append((event.x, event.width, event.data[offset:offset + 4 * event.width]))
        else:
            painted.append(event)
    return painted


@budget(1500)
@given(hostile(guest_streams), cuts)
def test_server_reader(data, sizes):
    events, error = read_guest(data, [len(data)])
    split_events, split_error = read_guest(data, sizes)
    assert (raw_pixels(split_events), split_error) == (raw_pixels(events), error)


# --- vncproxy.Upstream on a socket ------------------------------------------------------------

VERSIONS = [b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.008\n", b"RFB 003.889\n",
            b"RFB 005.000\n"]


@st.composite
def guest_transcripts(draw):
    """A guest server's side of a whole connection: handshake, ServerInit, messages."""
    version = draw(st.sampled_from(VERSIONS))
    security = draw(st.sampled_from([1, 2]))
    minor = 3 if version < b"RFB 003.007\n" else 8
    out = [version]
    out.append(struct.pack(">I", security) if minor == 3
               else bytes([2, security, draw(st.sampled_from([1, 2, 19]))]))
    if security == 2:
        out.append(draw(st.binary(min_size=16, max_size=16)))
    if security == 2 or minor == 8:
        out.append(struct.pack(">I", draw(st.sampled_from([0, 0, 1]))))
    name = draw(st.binary(max_size=20))
    out.append(struct.pack(">HH", draw(st.sampled_from([FB, FB, FB, 1, 0, 9000])), FB)
               + draw(pixel_formats) + struct.pack(">I", len(name)) + name)
    out.append(draw(guest_streams))
    return b"".join(out)


@pytest.fixture(scope="module")
def guest_port():
    """A listening socket for fuzzed guests, and a way to hand each accepted one to Upstream."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


@budget(300)
@given(data=hostile(guest_transcripts(), 100))
def test_upstream_against_a_hostile_guest(guest_port, data):
    guest = socket.create_connection(guest_port.getsockname(), timeout=5)
    sock, address = guest_port.accept()
    upstream = vncproxy.Upstream(sock, "fuzzed guest", PASSWORD)
    ups = []
    thread = threading.Thread(target=upstream.run, args=(ups.append, lambda display: None))
    thread.start()
    with contextlib.suppress(OSError):
        guest.sendall(data)
        guest.shutdown(socket.SHUT_WR)
        while guest.recv(65536):
            pass
    guest.close()
    thread.join(10)
    assert not thread.is_alive(), "Upstream hung on a closed connection"
    hypothesis.event("the desktop came up" if ups else "refused in the handshake")


# --- The viewer handshake and session on a live server ------------------------------------------


@contextlib.contextmanager
def live_server(security):
    harness = Harness()
    harness.server.security = security
    try:
        yield harness
    finally:
        harness.close()


def lenient(security):
    """No delay, no turns to wait for, no cap: every fuzzed connection gets the whole treatment."""
    security.turns = auth.Turns(interval=0)
    security.waiting = auth.Waiting(limit=10**6, per_address=10**6)
    return security


@pytest.fixture(scope="module")
def open_server():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(auth, "FAILURE_DELAY", 0)
        with live_server(lenient(auth.Security())) as harness:
            watcher = Client(harness.port)
            watcher.set_encodings(RAW)
            yield harness, watcher
            watcher.close()


@pytest.fixture(scope="module")
def locked_server(certificates):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(auth, "FAILURE_DELAY", 0)
        security = lenient(auth.Security(PASSWORD, tls=server_tls(certificates)))
        with live_server(security) as harness:
            watcher = SecureClient(harness.port, PASSWORD)
            watcher.set_encodings(RAW)
            yield harness, watcher
            watcher.close()


def attack(port, data):
    """Send `data` as a viewer, stop sending, and wait for the server to close (or fail)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1 << 20):
            pass
    except TimeoutError:
        pytest.fail(f"the server kept a viewer open for 10 s after it stopped sending: {data!r}")
    except OSError:
        pass  # the server closed first, as it may
    finally:
        sock.close()


def still_watching(watcher):
    watcher.request(incremental=False)
    assert watcher.read_update()


HANDSHAKE_PREFIXES = [b"RFB 003.003\n\x01", b"RFB 003.007\n\x01\x01", b"RFB 003.008\n\x01\x01"]


@budget(200)
@given(st.sampled_from(HANDSHAKE_PREFIXES), hostile(client_streams))
def test_viewer_session_on_an_open_server(open_server, prefix, messages):
    harness, watcher = open_server
    attack(harness.port, prefix + messages)
    still_watching(watcher)


@st.composite
def viewer_transcripts(draw):
    """A viewer's side of a handshake with a locked server, as far as a stranger gets."""
    version = draw(st.sampled_from(VERSIONS[:3] + [b"RFB 003.005\n", b"RFB 004.000\n"]))
    choice = draw(st.sampled_from([2, 19, 1, 0]))
    out = [version, bytes([choice])]
    if choice == 2:
        out.append(draw(st.binary(min_size=16, max_size=16)))
    if choice == 19:
        out.append(draw(st.sampled_from([b"\x00\x02", b"\x00\x01", b"\x02\x00"])))
        out.append(struct.pack(">I", draw(st.sampled_from([261, 260, 256, 2, 0]))))
        out.append(draw(st.sampled_from([b"", b"\x16\x03\x01\x00\x04abcd", b"\x16\x03\x03"])))
    out.append(draw(client_streams))
    return b"".join(out)


@budget(200)
@given(hostile(viewer_transcripts()))
def test_viewer_handshake_on_a_locked_server(locked_server, data):
    harness, watcher = locked_server
    attack(harness.port, data)
    still_watching(watcher)


# --- The console on hostile guest output ---------------------------------------------------------


class ScriptedSource:
    """A console source whose output is whatever the test queues, read by the reader thread."""

    name = "fuzz"
    restarts = True

    def __init__(self):
        self.output = collections.deque()

    def open(self):
        pass

    def fileno(self):
        return None

    def read(self):
        return self.output.popleft() if self.output else None

    def write(self, data):
        return len(data)

    def close(self):
        pass


@contextlib.contextmanager
def running_console(columns, lines):
    term = console.Console(ScriptedSource(), columns, lines)
    term.start()
    try:
        yield term
    finally:
        term.stop()


GLYPHS = render.Glyphs(render.load_font(None)[0])


def csi(parameters, final):
    return b"\x1b[" + b";".join(b"%d" % p for p in parameters) + bytes([final])


console_piece = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=40).map(str.encode),
    st.builds(csi, st.lists(st.integers(0, 10**6), max_size=30),
              st.sampled_from(b"@ABCDEFGHIJKLMPSTXZ`abcdefghilmnqrsu")),
    st.integers(1, 6000).map(lambda n: b"\x1b[" + b"9" * n + b"m"),
    st.integers(1, 3000).map(lambda n: b"\x1b[" + b"1;" * n + b"m"),
    st.builds(lambda code, text, end: b"\x1b]" + code + b";" + text + end,
              st.sampled_from([b"0", b"1", b"2", b"7", b"52"]), st.binary(max_size=2000),
              st.sampled_from([b"\x07", b"\x1b\\", b""])),
    st.builds(lambda n, ending: "中".encode() * n + ending, st.integers(1, 300),
              st.sampled_from([b"", b"\r\n", b"\n"])),
    st.sampled_from([b"\x1b[?6h", b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b#8", b"\x1bc", b"\x1b[?3h",
                     b"\x1b[2;4r", b"\x1b[?7l", b"\x1b[4h", b"\x1b(0", b"\x1b%G", b"\x1b[6n",
                     b"\x1b[c", b"\x0e", b"\x0f", b"\x1bD", b"\x1bM", b"\x1b[r"]),
)
SIZES = [(80, 25), (20, 6), (2, 2), (7, 3)]


@budget(300)
@given(st.sampled_from(SIZES), st.lists(st.lists(console_piece, max_size=8), max_size=6))
def test_console_on_hostile_output(size, bursts):
    with running_console(*size) as term:
        renderer = render.Renderer(GLYPHS, *size)
        image_size = renderer.image.size
        for burst in bursts:
            for piece in burst:
                term.feed(piece)
            frame = term.take_frame()
            assert 0 <= frame.scroll and all(0 <= row < size[1] for row in frame.rows)
            renderer.apply(frame)
            assert renderer.image.size == image_size
        assert len(term.terminal.history) <= terminal.SCROLLBACK_LINES


def shows(term, text):
    with term.lock:
        return any(text in line for line in term.terminal.display)


def test_csi_parameter_of_thousands_of_digits_leaves_the_console_alive():
    """int() refuses more than 4300 digits; raised in the reader thread, it froze the console."""
    with running_console(80, 25) as term:
        term.source.output.extend([b"\x1b[" + b"9" * 5000 + b"m", b"\r\nalive"])
        assert wait_until(lambda: shows(term, "alive"), timeout=3)


def test_origin_mode_without_margins_keeps_the_cursor_on_screen():
    with running_console(80, 25) as term:
        renderer = render.Renderer(GLYPHS, 80, 25)
        renderer.apply(term.take_frame())
        term.feed(b"\x1b[?6h\x1b[26dX")
        frame = term.take_frame()
        assert all(0 <= row < 25 for row in frame.rows)
        renderer.apply(frame)


def unterminated_peak(opening, filler, chunks):
    """Peak bytes allocated while `chunks` x 16 KiB of a sequence that never ends arrive."""
    with running_console(80, 25) as term:
        term.feed(opening)
        chunk = filler * (16384 // len(filler))
        with peak_allocation() as memory:
            for _ in range(chunks):
                term.feed(chunk)
        return memory["peak"]


@pytest.mark.parametrize("opening,filler", [(b"\x1b]0;", b"A"), (b"\x1b[", b"1;")])
def test_unterminated_sequence_memory_is_bounded(opening, filler):
    """Past the parser's limit the rest is text on the screen, held by the bounded scrollback:
    four times the input must not cost four times the memory."""
    small = unterminated_peak(opening, filler, 32)
    large = unterminated_peak(opening, filler, 128)
    assert large < 1.5 * small + 256 * 1024


def flood_cost(flood, size):
    """(seconds, peak bytes allocated) to feed `size` bytes of `flood` and render the result."""
    with running_console(80, 25) as term:
        renderer = render.Renderer(GLYPHS, 80, 25)
        started = time.monotonic()
        with peak_allocation() as memory:
            for _ in range(size // len(flood)):
                term.feed(flood)
            renderer.apply(term.take_frame())
        return time.monotonic() - started, memory["peak"]


@pytest.mark.parametrize("flood", [
    pytest.param("中".encode() * 200 + b"\r\n", id="wide-lines"),
    pytest.param(b"\x1b]2;" + b"T" * 4000 + b"\x07", id="titles"),
    pytest.param(b"\x1b[" + b"9" * 4000 + b"m", id="long-parameters"),
    pytest.param(b"\x1b[" + b"7;" * 2000 + b"H", id="many-parameters"),
    pytest.param(b"\x1b[1;31;42mab\x1b[0m" * 10 + b"\r\n", id="colours"),
])
def test_floods_take_bounded_time_and_memory(flood):
    """Twice the flood costs no more memory (the scrollback is the ceiling) and keeps moving."""
    _, small = flood_cost(flood, 256 * 1024)
    elapsed, large = flood_cost(flood, 512 * 1024)
    assert large < small * 1.25 + (1 << 20)
    assert large < 64 << 20
    assert elapsed < 30, f"{elapsed:.1f} s for 512 KiB"


# --- Faults: peers that vanish ------------------------------------------------------------------


@pytest.fixture
def counted():
    """Threads and file descriptors before; after the test they must be back to that."""
    threads, fds = set(threading.enumerate()), open_fds()
    yield
    assert wait_until(lambda: set(threading.enumerate()) <= threads), threading.enumerate()
    assert wait_until(lambda: open_fds() <= fds), open_fds() - fds


def vanish(sock):
    """Close with a reset, the way a killed peer's kernel does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked reading it (FakeGuest has one)
    sock.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_viewer_vanishes_mid_update(counted, certificates, tls):
    security = auth.Security(tls=server_tls(certificates) if tls else None, tls_only=tls)
    with live_server(security) as h:
        good = SecureClient(h.port, tls=client_tls(certificates["ca"]) if tls else None)
        for round_ in range(20):
            leaving = SecureClient(h.port, tls=client_tls(certificates["ca"]) if tls else None)
            leaving.set_encodings(RAW)
            leaving.request(incremental=False)
            leaving.recv(100 + round_ * 50)
            vanish(leaving.sock)
        assert wait_until(lambda: len(h.server.sessions) == 1)
        h.guest_writes(b"after the vanishing")
        assert settle(good, server_image(h))
        good.close()


def test_guest_vanishes_mid_rectangle(counted):
    p = Proxy()
    try:
        client = p.viewer()
        client.request(incremental=False)
        client.read_update()
        console_size = (client.width, client.height)
        for _ in range(10):
            guest = p.guest()
            guest.paint()
            desktop_size = (guest.width, guest.height)
            assert follow(client, lambda c: (c.width, c.height) == desktop_size)  # noqa: B023
            half = guest.raw(0, 0, *desktop_size, (9, 9, 9))[:12 + 4 * guest.width * 3]
            guest.sock.sendall(struct.pack(">BxH", 0, 1) + half)
            vanish(guest.sock)
            assert follow(client, lambda c: (c.width, c.height) == console_size)
            assert wait_until(lambda: p.server.desktop is None)
    finally:
        p.close()


def walk_client_messages(data):
    """(kind, fields) for each message a guest received from the proxy."""
    sizes = {0: 20, 3: 10, 4: 8, 5: 6}
    offset = 0
    while offset < len(data):
        kind = data[offset]
        if kind == 2:
            length = 4 + 4 * struct.unpack_from(">H", data, offset + 2)[0]
        elif kind == 6:
            length = 8 + struct.unpack_from(">I", data, offset + 4)[0]
        else:
            length = sizes[kind]
        if kind == 4:
            yield "key", struct.unpack_from(">BxxI", data, offset + 1)
        elif kind == 5:
            yield "pointer", struct.unpack_from(">BHH", data, offset + 1)
        offset += length


def held_on(guest):
    """Keys pressed and not released, and the last button mask, as the guest saw them."""
    held, mask = set(), 0
    for kind, fields in walk_client_messages(bytes(guest.received)):
        if kind == "key":
            down, keysym = fields
            (held.add if down else held.discard)(keysym)
        else:
            mask = fields[0]
    return held, mask


def test_guests_and_viewers_come_and_go(counted):
    """CYCLES guest desktops, then CYCLES viewers holding keys and buttons as they leave."""
    p = Proxy()
    try:
        watcher = p.viewer()
        watcher.request(incremental=False)
        watcher.read_update()
        for _ in range(CYCLES):
            guest = p.guest()
            guest.paint()
            guest.close()
            assert wait_until(lambda: p.server.desktop is None)
        guest = p.guest()
        guest.paint()
        assert wait_until(lambda: p.server.desktop is not None)
        for n in range(CYCLES):
            client = Client(p.port)
            client.key(ord("a") + n % 26)
            client.key(0xFFE1)
            client.send(struct.pack(">BBHH", 5, 1 | 4, 10, 10))
            (vanish if n % 2 else socket.socket.close)(client.sock)
        assert wait_until(lambda: len(p.server.sessions) == 1)
        assert wait_until(lambda: held_on(guest) == (set(), 0), timeout=10), held_on(guest)
        assert follow(watcher, lambda c: (c.width, c.height) == (guest.width, guest.height))
        guest.close()
    finally:
        p.close()


def test_key_and_pointer_flood_does_not_starve_another_viewer(counted):
    with live_server(auth.Security()) as h:
        flooder, good = Client(h.port), Client(h.port)
        stop = threading.Event()

        def flood():
            burst = b"".join(struct.pack(">BBHH", 5, 0, x, x) + struct.pack(">BBxxI", 4, 1, 0x78)
                             + struct.pack(">BBxxI", 4, 0, 0x78) for x in range(500))
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    flooder.send(burst)

        thread = threading.Thread(target=flood)
        thread.start()
        try:
            started = time.monotonic()
            for round_ in range(10):
                h.guest_writes(b"\r\nround %d" % round_)
                assert settle(good, server_image(h))
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            flooder.close()
            thread.join()
        good.close()
    assert elapsed < 20, f"ten updates took {elapsed:.1f} s under the flood"


def stalled_viewer(port):
    """A viewer with a tiny receive buffer that finishes the handshake and never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.recv(12)
    sock.sendall(b"RFB 003.008\n\x01\x01")
    return sock


def drain(sock):
    with contextlib.suppress(OSError):
        while sock.recv(1 << 20):
            pass


def draining_viewer(port):
    """A viewer that reads (and drops) everything the server sends, in a thread of its own."""
    client = Client(port)
    thread = threading.Thread(target=drain, args=(client.sock,))
    thread.start()
    return client, thread


def test_a_viewer_that_lets_several_frames_pile_up_is_dropped(counted, monkeypatch):
    """Clipboard from the guest needs no request, so it can pile up: past the cap, goodbye."""
    monkeypatch.setattr(updates, "HARD_OUTBOX", 1 << 20)
    p = Proxy()
    try:
        guest = p.guest()
        guest.paint()
        reading, reader = draining_viewer(p.port)
        stalled = stalled_viewer(p.port)
        assert wait_until(lambda: len(p.server.sessions) == 2)
        for n in range(60):
            text = bytes([n]) * rfb.CUT_TEXT_LIMIT
            guest.sock.sendall(struct.pack(">B3xI", 3, len(text)) + text)
            time.sleep(0.02)
            if len(p.server.sessions) == 1:
                break
        assert wait_until(lambda: len(p.server.sessions) == 1), "the stalled viewer is still there"
        (session,) = p.server.sessions
        assert session.peer.endswith(":%d" % reading.sock.getsockname()[1])
        stalled.close()
        reading.sock.shutdown(socket.SHUT_RDWR)
        reader.join()
        reading.close()
    finally:
        p.close()


# --- Coverage-guided: atheris ------------------------------------------------------------------

ATHERIS = Path(__file__).parent / "atheris_targets.py"
ATHERIS_RUNS = {"client": 100_000, "guest": 100_000, "console": 5_000}


@pytest.mark.parametrize("target", ATHERIS_RUNS)
def test_coverage_guided_fuzzing_with_atheris(target, tmp_path):
    require("atheris", how="pip install atheris (the Makefile tries to)")
    runs = ATHERIS_RUNS[target] * SCALE
    result = subprocess.run(
        [sys.executable, str(ATHERIS), target, f"-runs={runs}", "-max_len=4096",
         "-timeout=20", "-rss_limit_mb=2048"],
        cwd=tmp_path, capture_output=True, text=True, timeout=None if SCALE > 1 else 300)
    tail = "\n".join(result.stderr.splitlines()[-30:])
    assert result.returncode == 0, tail
    assert f"Done {runs} runs" in result.stderr, tail
