"""In-process harnesses: vncterm's server and proxy on loopback, and a console with no guest.

The socket tests drive the real server classes in the test's own process, so a test can look
inside (the console's screen, the server's sessions) while speaking RFB to it over loopback
with rawviewer's client.  `Harness` is a server on a pty whose far end, the "guest", is in the
test's hands: the test writes guest output into the pty and reads what the viewer typed from
it.  `Proxy` adds a reverse port for scripted guest desktops (fakeguest.py).  `leak_checked`
is the body of their fixtures: it closes what the test made and checks that every thread and
file descriptor the server made is gone.

For console.py without any I/O, `FakeSource` stands in for the guest and records what is typed,
`PIECES` is the Hypothesis alphabet of terminal output, and `assert_frames_keep_a_viewer_exact`
is the oracle every change-tracking path must pass: a viewer that only ever applies frames
(scroll, then the changed rows) ends up with exactly the screen's cells.  `screen_text` and
`text_of` read what a console or a row of cells shows.
"""

import os
import select
import socket
import threading
import time
import tty

from hypothesis import strategies as st

import auth
import console
import render
import sources
import vncproxy
import vncterm
from display import ConsoleDisplay
from fakeguest import FakeGuest
from peers import wait_until as wait_for
from rawviewer import DESKTOP_SIZE, RAW, Client

COLUMNS, LINES = 80, 25


# --- A console with no guest ---------------------------------------------------------------------


PIECES = st.sampled_from([
    "abc", "hello world", "\r\n", "\n", "\r", "\x1b[2J", "\x1b[H", "\x1b[3;4H", "\x1b[K",
    "\x1b[1;31mred\x1b[0m", "\x1b[2;4r", "\x1b[r", "\x1bM", "\x1b[2L", "\x1b[3M", "\x1b[5P",
    "\x1b[?25l", "\x1b[?25h", "中文", "\t", "\x08", "x" * 25, "\x1b[?7l", "\x1b[?7h",
    "\x1b[10B", "\x1b[4@", "\x1bD", "\x1bE", "\x1b[S",
])


class FakeSource:
    name = "fake"
    restarts = True

    def __init__(self):
        self.written = bytearray()

    def write(self, data):
        self.written += data
        return len(data)


def assert_frames_keep_a_viewer_exact(term, pieces, every):
    """Feed the pieces, handing a viewer the frame after every `every`-th piece and at the end:
    the viewer's rows must then be the screen's, and the cursor where the terminal has it."""
    term.set_status("")
    viewer = [None] * term.lines
    for index, piece in enumerate(pieces):
        term.feed(piece.encode())
        if index % every == 0:
            apply_frame(viewer, term.take_frame())
    apply_frame(viewer, term.take_frame())
    screen = term.terminal
    assert viewer == [[screen.buffer[y][x] for x in range(term.columns)]
                      for y in range(term.lines)]
    cursor = screen.cursor
    assert term._cursor == (None if cursor.hidden
                            else (min(cursor.x, term.columns - 1), cursor.y))


def apply_frame(viewer, frame):
    if frame.scroll:
        viewer[:] = viewer[frame.scroll :] + [None] * frame.scroll
    for row, cells in frame.rows.items():
        viewer[row] = cells


def text_of(cells):
    return "".join(cell.data for cell in cells)


def screen_text(term):
    with term.lock:
        return "\n".join(term.terminal.display)


# --- The server and the proxy on loopback ------------------------------------------------------


def console_reads(fd, timeout=5.0):
    """Up to 100 bytes the viewer typed into the console pty `fd`, b"" if none came."""
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 100) if ready else b""


def open_fds():
    return set(os.listdir("/proc/self/fd"))


class Harness:
    """A vncterm server on a pty whose far end (the "guest") is in the test's hands."""

    def __init__(self, **options):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.console = console.Console(
            sources.PtySource(os.ttyname(self.slave)), COLUMNS, LINES)
        glyphs = render.Glyphs(render.load_font(None)[0])
        self.display = ConsoleDisplay(self.console, glyphs)
        self.server = vncterm.Server(vncterm.listen("127.0.0.1", 0), self.display, "test console",
                                     **options)
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1::{self.port}"  # as vncdotool spells it (peers.VncdoViewer)
        self.console.on_closed = self.server.console_closed
        self.console.start()
        assert wait_for(lambda: self.console.status == "")
        self.thread = threading.Thread(target=self.server.serve_forever)
        self.thread.start()
        self.clients = []

    def guest_writes(self, data, shows=None):
        """Write guest output; wait until the terminal shows `shows` (default: the tail)."""
        os.write(self.master, data)
        text = shows or data.rsplit(b"\n", 1)[-1].decode()
        assert wait_for(lambda: text in self.screen_text())

    def screen_text(self):
        with self.console.lock:
            return "\n".join(self.console.terminal.display)

    def guest_reads(self, size, timeout=5.0):
        data = b""
        deadline = time.monotonic() + timeout
        os.set_blocking(self.master, False)
        while len(data) < size and time.monotonic() < deadline:
            try:
                data += os.read(self.master, size - len(data))
            except BlockingIOError:
                time.sleep(0.01)
        return data

    def connect(self, **options):
        client = Client(self.port, **options)
        self.clients.append(client)
        return client

    def cell_width(self):
        return self.display.size[0] // COLUMNS

    def cell_height(self):
        return self.display.size[1] // LINES

    def close(self):
        for client in self.clients:
            client.close()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
        self.console.stop()
        os.close(self.master)
        os.close(self.slave)


def leak_checked(kind):
    """A fixture's body: yield start(**options), which makes a `kind`; afterwards close every
    one made and check that no thread or file descriptor outlived them."""
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    made = []

    def start(**options):
        made.append(kind(**options))
        return made[-1]

    yield start
    for each in made:
        each.close()
    assert wait_for(lambda: set(threading.enumerate()) <= threads_before), threading.enumerate()
    assert open_fds() <= fds_before


def settle(client, server_image, rounds=50):
    """Request updates until the client's picture equals the server's (or give up)."""
    for _ in range(rounds):
        if client.image.tobytes() == server_image().tobytes():
            return True
        client.request(incremental=True)
        client.read_update()
    return client.image.tobytes() == server_image().tobytes()


def server_image(h):
    """The console's current picture (rendering whatever the guest wrote since last asked)."""
    return lambda: h.display.changes(None).tiles[0][2]


def server_tls(certificates):
    """The server's TLS context for the session's certificates (the conftest fixture)."""
    return auth.tls_context(str(certificates["cert"]), str(certificates["key"]))


class Proxy(Harness):
    """The Harness (a console on a pty) with a reverse port for guest desktops."""

    def __init__(self, password=None):
        super().__init__()
        self.desktops = vncproxy.Desktops(self.server.desktop_changed, password)
        self.reverse_port = self.desktops.accept(socket.create_server(("127.0.0.1", 0)))[1]
        self.closers = []

    def viewer(self, *encodings):
        client = Client(self.port)
        client.set_encodings(*(encodings or (RAW, DESKTOP_SIZE)))
        self.closers.append(client.close)
        return client

    def guest(self, **options):
        guest = FakeGuest(self.reverse_port, **options)
        self.closers.append(guest.close)
        assert guest.updates_requested.wait(5)
        return guest

    def close(self):
        for close in self.closers:
            close()
        self.desktops.stop()
        super().close()


def follow(client, until, rounds=60):
    """Keep asking for updates until `until(client)` holds."""
    for _ in range(rounds):
        if until(client):
            return True
        client.request(incremental=True)
        client.read_update()
    return until(client)


def shows(colour):
    def check(client):
        pixel = client.image.getpixel((client.width // 2, client.height // 2))
        return all(abs(a - b) < 8 for a, b in zip(pixel, colour, strict=True))
    return check
