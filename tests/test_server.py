"""vncterm.py on real loopback sockets: handshakes, updates, input, hostile and stalled viewers.

The server runs in-process on port 0 with a real console reader on a pty the test controls,
so the test writes "guest output" into the pty and reads what the viewer typed from it.  Each
test ends with `shutdown()` and `server_close()`, and the fixture checks that every thread
and file descriptor the server made is gone.
"""

import os
import socket
import struct
import threading

import pytest

import console
import render
import sources
import updates
import vncterm
from display import ConsoleDisplay
from harness import COLUMNS, LINES, server_image, settle
from peers import wait_until as wait_for
from rawviewer import COPY_RECT, DESKTOP_SIZE, EXTENDED_DESKTOP_SIZE, RAW, Client


@pytest.mark.parametrize("version", [
    b"RFB 003.003\n", b"RFB 003.005\n", b"RFB 003.007\n", b"RFB 003.008\n", b"RFB 003.014\n",
])
def test_handshake_versions(harness, version):
    h = harness()
    client = h.connect(version=version)
    assert client.server_version == b"RFB 003.008\n"
    assert client.name == "test console"
    assert (client.width, client.height) == h.display.size
    assert client.pixel_format == struct.pack(
        ">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    client.request(incremental=False)
    assert client.read_update()[0][4] == RAW


def test_coloured_cells_reach_the_viewer(harness):
    h = harness()
    h.guest_writes(b"\x1b[2J\x1b[H\x1b[41m   \x1b[0m\x1b[5;10H\x1b[44m  \x1b[0mok", "ok")
    client = h.connect()
    client.set_encodings(RAW, COPY_RECT)
    client.request(incremental=False)
    client.read_update()
    width, height = h.cell_width(), h.cell_height()

    def centre(column, row):
        return client.image.getpixel((column * width + width // 2, row * height + height // 2))

    assert wait_for(lambda: settle(client, server_image(h), 1) or centre(1, 0)[0] > 150, 5)
    red, blue = centre(1, 0), centre(10, 4)
    assert red[0] > 150 and red[1] < 80 and red[2] < 80
    assert blue[2] > 150 and blue[0] < 80 and blue[1] < 80


def test_scrolling_is_sent_as_copy_rect(harness):
    h = harness()
    client = h.connect()
    client.set_encodings(COPY_RECT, RAW)
    h.guest_writes(b"\r\n".join(b"line %d" % i for i in range(40)))
    client.request(incremental=False)
    client.read_update()
    assert settle(client, server_image(h))
    client.rects.clear()
    h.guest_writes(b"\r\nnew line one\r\nnew line two")
    assert settle(client, server_image(h))
    encodings = [rect[4] for rect in client.rects]
    assert COPY_RECT in encodings
    raw_area = sum(w * h_ for _, _, w, h_, e in client.rects if e == RAW)
    assert raw_area < client.width * client.height / 4


def test_no_copy_rect_for_a_viewer_that_did_not_ask(harness):
    h = harness()
    client = h.connect()
    client.set_encodings(RAW)
    client.request(incremental=False)
    client.read_update()
    h.guest_writes(b"\r\n".join(b"line %d" % i for i in range(40)))
    assert settle(client, server_image(h))
    assert all(rect[4] == RAW for rect in client.rects)


def test_keys_reach_the_guest(harness):
    h = harness()
    client = h.connect()
    client.type("ls")
    client.key(0xFF0D)
    client.key(0xFFE3)
    client.key(ord("c"))
    assert h.guest_reads(4) == b"ls\r\x03"


def test_extended_desktop_size_announced_and_resizes_refused(harness):
    h = harness()
    client = h.connect()
    client.set_encodings(RAW, EXTENDED_DESKTOP_SIZE, DESKTOP_SIZE)
    client.request(incremental=False)
    first = client.read_update()
    assert [rect[4] for rect in first] == [EXTENDED_DESKTOP_SIZE]
    assert client.read_update()[0][4] == RAW, "pixels follow without another request"
    screen = struct.pack(">IHHHHI", 0, 0, 0, 1024, 768, 0)
    client.send(struct.pack(">BxHHBx", 251, 1024, 768, 1) + screen)
    client.request(incremental=True)
    reply = client.read_update()
    assert reply == [(1, 1, client.width, client.height, EXTENDED_DESKTOP_SIZE)]


def test_bell_is_forwarded(harness):
    h = harness()
    client = h.connect()
    client.request(incremental=False)
    client.read_update()
    h.guest_writes(b"\x07x", "x")
    client.request(incremental=True)
    client.read_update()
    assert client.bells == 1


def test_exclusive_viewer_disconnects_the_others(harness):
    h = harness()
    first = h.connect()
    h.connect(shared=False)
    first.sock.settimeout(5)
    with pytest.raises((ConnectionError, OSError)):
        while True:
            first.request()
            first.read_update()


def test_viewer_cap(harness):
    h = harness(max_viewers=1)
    h.connect()
    with pytest.raises(ConnectionRefusedError, match="too many viewers"):
        h.connect()
    with pytest.raises(ConnectionRefusedError, match="too many viewers"):
        h.connect(version=b"RFB 003.003\n")


def test_silent_connection_is_closed_after_the_handshake_timeout(harness):
    h = harness(handshake_timeout=0.5)
    sock = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    assert sock.recv(12) == b"RFB 003.008\n"
    assert sock.recv(100) == b""
    sock.close()


HOSTILE = [
    pytest.param(b"RFB 003.008\n\x01\x01\x00\x00\x00\x00" + struct.pack(
        ">BBBBHHHBBB3x", 24, 24, 0, 1, 255, 255, 255, 16, 8, 0), id="bad-pixel-format"),
    pytest.param(b"RFB 003.008\n\x01\x01\x09", id="unknown-message"),
    pytest.param(b"RFB 003.008\n\x02", id="unoffered-security-type"),
    pytest.param(b"RFB 009.000\n", id="bad-version"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="http"),
    pytest.param(b"RFB 003.008\n\x01\x01\x06\x00\x00\x00\x80\x00\x00\x00", id="negative-cut"),
]


@pytest.mark.parametrize("attack", HOSTILE)
def test_hostile_viewer_is_closed_and_others_carry_on(harness, attack):
    h = harness()
    good = h.connect()
    good.request(incremental=False)
    good.read_update()
    bad = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    bad.recv(12)
    bad.sendall(attack)
    received = b""
    while chunk := bad.recv(4096):
        received += chunk
    bad.close()
    h.guest_writes(b"still here")
    assert settle(good, server_image(h))


@pytest.mark.parametrize("cut", [1, 5, 11, 13])
def test_truncated_message_then_hangup(harness, cut):
    h = harness()
    bad = h.connect()
    message = struct.pack(">BxH3i", 2, 3, 0, 1, -223)
    bad.send(message[:cut])
    bad.close()
    good = h.connect()
    good.request(incremental=False)
    assert good.read_update()


def test_huge_cut_text_is_streamed_and_capped(harness):
    h = harness()
    client = h.connect()
    size = 4 * 1024 * 1024
    client.send(struct.pack(">B3xI", 6, size))
    chunk = b"y" * 65536
    for _ in range(size // len(chunk)):
        client.send(chunk)
    client.request(incremental=False)
    assert client.read_update()
    paste_with_ctrl_alt_v(client)
    pasted = h.guest_reads(300 * 1024, timeout=5)
    assert 0 < len(pasted) <= 256 * 1024


def paste_with_ctrl_alt_v(client):
    for keysym in (0xFFE3, 0xFFE9, ord("v")):
        client.key(keysym, True)
    for keysym in (ord("v"), 0xFFE9, 0xFFE3):
        client.key(keysym, False)


def test_a_viewer_that_never_reads_is_dropped_and_harms_nobody(harness, monkeypatch):
    monkeypatch.setattr(updates, "WRITE_STALL_TIMEOUT", 1.0)
    h = harness()
    stalled = socket.create_connection(("127.0.0.1", h.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.recv(12)
    stalled.sendall(b"RFB 003.008\n")
    stalled.recv(2)
    stalled.sendall(b"\x01")
    stalled.recv(4)
    stalled.sendall(b"\x01")
    good = h.connect()
    try:
        for round_ in range(40):
            h.guest_writes(b"".join(b"\x1b[%dm flood %d %d\r\n" % (31 + i % 7, round_, i)
                                    for i in range(60)), "flood %d 59" % round_)
            ask_without_reading(stalled)
            good.request(incremental=True)
            good.read_update()
        assert settle(good, server_image(h))
        assert wait_for(lambda: len(h.server.sessions) == 1, timeout=15)
    finally:
        stalled.close()


def ask_without_reading(sock):
    """Ask for a full update and read nothing; once the server dropped us, asking fails."""
    try:
        sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, 640, 480))
    except OSError:
        pass


def test_console_hangup_keeps_viewers_and_shows_status(harness):
    h = harness()
    client = h.connect()
    client.request(incremental=False)
    client.read_update()
    os.close(h.slave)
    os.close(h.master)
    assert wait_for(lambda: h.console.status != "")
    assert settle(client, server_image(h))
    bottom = client.image.crop((0, client.height - h.cell_height(), client.width, client.height))
    assert bottom.getextrema() != ((0, 0), (0, 0), (0, 0))
    h.master, h.slave = os.openpty()


def test_server_exits_once_the_command_is_gone_and_the_last_viewer_left():
    source = sources.CommandSource("sh -c 'sleep 0.5'", COLUMNS, LINES)
    term = console.Console(source, COLUMNS, LINES)
    display = ConsoleDisplay(term, render.Glyphs(render.load_font(None)[0]))
    server = vncterm.Server(vncterm.listen("127.0.0.1", 0), display, "cmd")
    term.on_closed = server.console_closed
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    term.start()
    client = Client(server.server_address[1])
    assert wait_for(lambda: "console closed" in term.status)
    assert thread.is_alive()
    client.close()
    thread.join(10)
    assert not thread.is_alive()
    server.server_close()
    term.stop()
